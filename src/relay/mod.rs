//! The one send path. Every sender goes through [`send`]: messages, call signaling, first contact through
//! a contact token. It decides whether the caller may reach the recipient, checks the device set, builds
//! the envelopes, takes the rate-limit token and queues (or, for `online` sends, hands to open sockets
//! only); the queue wakes the recipient's sockets itself, and devices without one are handed to the push
//! wakeups (which never hold the send up).
//!
//! Invariants: nothing is queued for any device unless the send addresses exactly the recipient's current
//! devices with their current registration ids; a sealed-sender envelope carries no source, and the
//! server never learns one; nothing meant for a removed device reaches a later device with its id.
//! Never: parses, logs or indexes envelope content; stores who sent a sealed-sender envelope.

mod devices;
pub mod multi;
pub mod multi_recipient;

use std::net::IpAddr;

use prost::Message as _;
use uuid::Uuid;

use crate::access::Caller;
use crate::delivery::proto::{Envelope, envelope_type};
use crate::domain::{Aci, DeviceId, Incarnation, now_millis};
use crate::error::ApiError;
use crate::limits::Limiter;
use crate::state::App;
use crate::storage::{BusEvent, NewEnvelope, PushOutcome, Recipient};
use devices::check_devices;

/// Rate-limit bucket of sends per sender and recipient.
const RATE_BUCKET: &str = "messages_sender_recipient";

/// One envelope of a send, for one device of the recipient.
pub struct Outgoing {
    pub device: u32,
    pub registration_id: i64,
    /// Envelope type: 1, 3, 6 or 8 (only 6, sealed sender, for anonymous callers).
    pub kind: i32,
    pub content: Vec<u8>,
}

/// How a send is to be delivered.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The sender's own timestamp, handed through.
    pub timestamp: u64,
    /// Only to sockets open right now; never stored.
    pub online: bool,
    /// Wake the device with priority (a call offer).
    pub urgent: bool,
    /// How long the envelopes may wait; `None`: the server's maximum.
    pub ttl_seconds: Option<u64>,
}

/// What a successful send tells the sender.
pub struct Sent {
    /// The sender has other devices that should learn of this send (Signal's sync messages).
    pub needs_sync: bool,
}

/// Sends one envelope per device of `target`. `target` is `None` when it did not parse (a device is told
/// so; an anonymous caller gets the same 401 as for a wrong key).
pub async fn send(
    app: &App,
    sender: &Caller,
    ip: IpAddr,
    target: Option<Aci>,
    messages: Vec<Outgoing>,
    options: Options,
) -> Result<Sent, ApiError> {
    let target = match target {
        Some(target) => target,
        None if sender.is_anonymous() => return Err(ApiError::Unauthorized),
        None => return Err(ApiError::InvalidPath),
    };
    let ttl_seconds = options.ttl_seconds.unwrap_or(app.config.max_message_ttl_seconds);
    if ttl_seconds == 0 || ttl_seconds > app.config.max_message_ttl_seconds {
        return Err(ApiError::InvalidTtl);
    }
    for message in &messages {
        let sealed_only = sender.is_anonymous() && message.kind != envelope_type::UNIDENTIFIED_SENDER;
        if !envelope_type::is_known(message.kind) || sealed_only {
            return Err(ApiError::InvalidMessageType);
        }
        if message.content.len() > app.config.max_message_bytes {
            return Err(ApiError::MessageTooLarge);
        }
    }

    let sender_key = format!("{}>{target}", sender.bucket_identity(ip));
    // An identified sender's token is taken by the queue write itself (one storage round trip per send).
    // Anonymous senders pay before any lookup, so guessing access keys costs tokens; so do online-only
    // sends, which write nothing.
    let limit = &app.config.limit_messages_per_sender_recipient;
    let token_in_push = !sender.is_anonymous() && !options.online;
    if !token_in_push {
        app.limiter.check(RATE_BUCKET, sender_key.as_bytes(), limit).await?;
    }

    let entry = app.directory.get(target).await?;
    sender.may_reach(entry.account.as_ref())?;
    let own_device = sender.device().filter(|d| d.aci == target).map(|d| d.device);
    let addressed: Vec<(u32, i64)> = messages.iter().map(|m| (m.device, m.registration_id)).collect();
    check_devices(&entry, own_device, &addressed)?;

    let now = now_millis();
    let source = sender.device();
    let items: Vec<(Recipient, NewEnvelope)> = messages
        .into_iter()
        .map(|message| {
            let guid = *Uuid::new_v4().as_bytes();
            let envelope = Envelope {
                r#type: Some(message.kind),
                client_timestamp: Some(options.timestamp),
                source_device: source.map(|d| d.device.0),
                content: Some(message.content),
                server_timestamp: Some(now as u64),
                urgent: Some(options.urgent),
                source_service_id: source.map(|d| d.aci.0.as_bytes().to_vec()),
                destination_service_id: Some(target.0.as_bytes().to_vec()),
                server_guid: Some(guid.to_vec()),
            };
            let expires_at = now + (ttl_seconds as i64).saturating_mul(1000);
            let device = DeviceId(message.device);
            // A device the view lists as ready but not as a device cannot be queued for: the legacy
            // incarnation never matches a live device's, so the push answers `Gone` and the view is renewed.
            let incarnation = entry.incarnation(device).unwrap_or(Incarnation::LEGACY);
            (Recipient { device, incarnation }, NewEnvelope { guid, expires_at, envelope: envelope.encode_to_vec() })
        })
        .collect();

    if options.online {
        // Only for sockets open right now; nothing is stored.
        for (recipient, item) in items {
            app.storage.bus.publish(target, recipient.device, BusEvent::Ephemeral(item.envelope)).await?;
        }
    } else {
        let bucket = token_in_push.then(|| app.limiter.bucket(RATE_BUCKET, sender_key.as_bytes(), limit));
        match app.storage.queue.push(target, &items, app.config.max_queue_len, bucket.as_ref()).await? {
            PushOutcome::Queued => {
                // Devices without a socket get a wakeup, decided and sent off this path.
                let devices = items.iter().map(|(recipient, _)| recipient.device).collect();
                app.wakeups.envelopes_queued(target, devices, options.urgent, ttl_seconds);
            }
            PushOutcome::Full(_) => return Err(ApiError::QueueFull),
            PushOutcome::Limited(wait) => return Err(Limiter::refused(RATE_BUCKET, wait)),
            PushOutcome::Gone(device) => {
                // A device was removed while this send was on its way: answer from a fresh view, as if the
                // send had come a moment later.
                app.directory.invalidate(target).await?;
                check_devices(&*app.directory.get(target).await?, own_device, &addressed)?;
                // Same ids and registration ids, yet the device is a new one: the sender's session is stale.
                return Err(ApiError::StaleDevices(vec![device.0]));
            }
        }
    }
    metrics::counter!("sealpost_messages_accepted_total",
        "sealed" => if sender.is_anonymous() { "true" } else { "false" },
        "online" => if options.online { "true" } else { "false" })
    .increment(1);

    let needs_sync = match sender.device() {
        Some(d) => app.directory.get(d.aci).await?.devices.len() > 1,
        None => false,
    };
    Ok(Sent { needs_sync })
}
