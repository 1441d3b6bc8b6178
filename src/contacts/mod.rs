//! Contact tokens: the QR code a person shows so that a stranger can reach them, with no phone number,
//! name or account id in it. The code holds a random token (`sealpost://contact/<token>`); resolving it
//! gives the owner's aci and identity key, and the token authorises first contact, like an unidentified-
//! access key: fetching the owner's bundle and sealed-sender sends to the owner (`Contact-Token` header).
//!
//! Owns: contact tokens (only their keyed hashes are stored), their labels (encrypted by the owner's
//! client for itself), expiry, use counts and revocation.
//! Invariants: a token is shown once, when created; a revoked, expired or used-up token resolves exactly
//! like one that never existed; revocation takes effect at once on every instance (nothing is cached).
//! Never: logs a token or its hash, or which account a token belongs to.

mod http;
pub mod service;

pub use http::routes;
