//! Push: content-free Web Push wakeups (RFC 8030, VAPID per RFC 8292; UnifiedPush endpoints are Web Push
//! too) for devices that have no socket open anywhere.
//!
//! Owns: devices' push subscriptions (`PUT`/`DELETE /v1/devices/me/push`), the VAPID public key
//! (`GET /v1/push/vapid`), the dispatcher that decides which queued envelopes wake which device
//! ([`wakeups`]) and the sender that talks to push services and guards where it may go ([`sender`]).
//! Invariants: a wakeup is a POST with no body, so the push service learns only that this subscription
//! should wake; a burst of envelopes makes one wakeup per device until it connects or the quiet period
//! passes; a subscription the push service calls gone (404/410) is deleted; endpoints must be https on a
//! public address (checked when stored and again when connecting) unless their origin is allow-listed.
//! Never: puts an account, device, sender, count or content in a push request, a log line or a metric.

pub mod http;
pub mod sender;
pub mod service;
pub mod wakeups;
