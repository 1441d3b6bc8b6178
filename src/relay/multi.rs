//! Sending one sealed-sender message to many recipients (a group) with one upload, without telling the
//! server who sends it.
//!
//! Authorisation: the combined unidentified-access key, the XOR of the access keys of every recipient
//! that does not accept anyone (`unrestrictedUnidentifiedAccess`), compared in constant time. An unknown
//! recipient, or one without a key, makes the combination wrong: the answer is the same 401 and says
//! nothing about which recipient failed. Device sets are checked for every recipient before anything is
//! queued (410 with every recipient's stale devices, then 409 with missing and extra ones); then each
//! recipient's devices get their envelopes, one recipient per storage step, concurrently.

use std::net::IpAddr;

use futures_util::future::join_all;
use prost::Message as _;
use uuid::Uuid;

use super::devices::check_devices;
use super::multi_recipient::{MultiRecipientMessage, Recipient as Addressed};
use crate::delivery::proto::{Envelope, envelope_type};
use crate::domain::{AccessKey, Aci, Incarnation, now_millis};
use crate::error::{ApiError, RecipientDevices};
use crate::state::App;
use crate::storage::{BusEvent, NewEnvelope, PushOutcome, Recipient};

/// How the envelopes are to be delivered (as for a single send).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub timestamp: u64,
    pub online: bool,
    pub urgent: bool,
    pub ttl_seconds: Option<u64>,
}

/// Why a recipient got nothing although the send as a whole was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// One of its devices' queues is full.
    QueueFull,
    /// Its devices changed between the check and the write; the sender should fetch them again.
    DevicesChanged,
}

/// What a successful multi-recipient send tells the sender.
pub struct Sent {
    pub not_queued: Vec<(Aci, NotQueued)>,
}

pub async fn send(
    app: &App,
    ip: IpAddr,
    access_key: Option<AccessKey>,
    body: &[u8],
    options: Options,
) -> Result<Sent, ApiError> {
    let config = &app.config;
    app.limiter.check("multi_recipient_ip", ip.to_string().as_bytes(), &config.limit_multi_recipient_per_ip).await?;
    let message = MultiRecipientMessage::parse(body).map_err(|e| ApiError::InvalidMultiRecipient(e.to_string()))?;
    if message.recipients.len() > config.max_multi_recipients {
        return Err(ApiError::InvalidMultiRecipient(format!("more than {} recipients", config.max_multi_recipients)));
    }
    for recipient in &message.recipients {
        let mut ids: Vec<_> = recipient.devices.iter().map(|(id, _)| *id).collect();
        ids.sort();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(ApiError::InvalidMultiRecipient("a device appears twice under one recipient".into()));
        }
    }
    let ttl_seconds = options.ttl_seconds.unwrap_or(config.max_message_ttl_seconds);
    if ttl_seconds == 0 || ttl_seconds > config.max_message_ttl_seconds {
        return Err(ApiError::InvalidTtl);
    }

    // Everyone's facts, then the one combined key.
    let mut entries = Vec::with_capacity(message.recipients.len());
    for recipient in &message.recipients {
        entries.push(app.directory.get(recipient.aci).await?);
    }
    let mut combined = [0u8; 16];
    let mut reachable = true;
    for entry in &entries {
        match entry.account.as_ref().filter(|a| a.approved) {
            Some(account) if account.unrestricted_access => {}
            Some(account) => match account.access_key {
                Some(key) => combined.iter_mut().zip(key.0).for_each(|(c, k)| *c ^= k),
                None => reachable = false,
            },
            None => reachable = false,
        }
    }
    let presented = access_key.map(|k| k.0).unwrap_or_default();
    if !(crate::crypto::constant_time_eq(&combined, &presented) & reachable & access_key.is_some()) {
        return Err(ApiError::Unauthorized);
    }

    // Every recipient's device set, before anything is queued.
    let (mut stale, mut mismatched) = (Vec::new(), Vec::new());
    for (recipient, entry) in message.recipients.iter().zip(&entries) {
        let addressed: Vec<(u32, i64)> = recipient.devices.iter().map(|(id, reg)| (id.0, i64::from(*reg))).collect();
        match check_devices(entry, None, &addressed) {
            Ok(()) => {}
            Err(ApiError::StaleDevices(devices)) => stale.push(RecipientDevices::stale(recipient.aci, devices)),
            Err(ApiError::MismatchedDevices { missing, extra }) => {
                mismatched.push(RecipientDevices::mismatched(recipient.aci, missing, extra))
            }
            Err(other) => return Err(other),
        }
    }
    if !stale.is_empty() {
        return Err(ApiError::StaleRecipients(stale));
    }
    if !mismatched.is_empty() {
        return Err(ApiError::MismatchedRecipients(mismatched));
    }

    let now = now_millis();
    let expires_at = now + (ttl_seconds as i64).saturating_mul(1000);
    let mut deliveries = Vec::with_capacity(message.recipients.len());
    for (recipient, entry) in message.recipients.iter().zip(&entries) {
        let content = message.message_for(recipient);
        if content.len() > config.max_message_bytes {
            return Err(ApiError::MessageTooLarge);
        }
        deliveries.push((recipient, envelopes(recipient, entry, content, options, now, expires_at)));
    }
    let delivered = deliveries.iter().map(|(recipient, items)| deliver(app, recipient.aci, items, options.online));
    let mut not_queued = Vec::new();
    for ((recipient, _), outcome) in deliveries.iter().zip(join_all(delivered).await) {
        match outcome? {
            PushOutcome::Queued if !options.online => {
                // Devices without a socket get a wakeup, decided and sent off this path.
                let devices = recipient.devices.iter().map(|(device, _)| *device).collect();
                app.wakeups.envelopes_queued(recipient.aci, devices, options.urgent, ttl_seconds);
            }
            PushOutcome::Queued => {}
            PushOutcome::Full(_) => not_queued.push((recipient.aci, NotQueued::QueueFull)),
            PushOutcome::Gone(_) | PushOutcome::Limited(_) => {
                app.directory.invalidate(recipient.aci).await?;
                not_queued.push((recipient.aci, NotQueued::DevicesChanged));
            }
        }
    }
    let envelopes: usize = deliveries.iter().map(|(_, items)| items.len()).sum();
    metrics::counter!("sealpost_multi_recipient_sends_total").increment(1);
    metrics::counter!("sealpost_multi_recipient_envelopes_total").increment(envelopes as u64);
    Ok(Sent { not_queued })
}

/// One envelope per device of the recipient, all carrying the recipient's message.
fn envelopes(
    recipient: &Addressed,
    entry: &crate::directory::Entry,
    content: Vec<u8>,
    options: Options,
    now: i64,
    expires_at: i64,
) -> Vec<(Recipient, NewEnvelope)> {
    recipient
        .devices
        .iter()
        .map(|(device, _)| {
            let guid = *Uuid::new_v4().as_bytes();
            let envelope = Envelope {
                r#type: Some(envelope_type::UNIDENTIFIED_SENDER),
                client_timestamp: Some(options.timestamp),
                source_device: None,
                content: Some(content.clone()),
                server_timestamp: Some(now as u64),
                urgent: Some(options.urgent),
                source_service_id: None,
                destination_service_id: Some(recipient.aci.0.as_bytes().to_vec()),
                server_guid: Some(guid.to_vec()),
            };
            let incarnation = entry.incarnation(*device).unwrap_or(Incarnation::LEGACY);
            (
                Recipient { device: *device, incarnation },
                NewEnvelope { guid, expires_at, envelope: envelope.encode_to_vec() },
            )
        })
        .collect()
}

/// Queues a recipient's envelopes (or, `online`, hands them to its open sockets only).
async fn deliver(
    app: &App,
    aci: Aci,
    items: &[(Recipient, NewEnvelope)],
    online: bool,
) -> Result<PushOutcome, ApiError> {
    if online {
        for (recipient, item) in items {
            app.storage.bus.publish(aci, recipient.device, BusEvent::Ephemeral(item.envelope.clone())).await?;
        }
        return Ok(PushOutcome::Queued);
    }
    Ok(app.storage.queue.push(aci, items, app.config.max_queue_len, None).await?)
}
