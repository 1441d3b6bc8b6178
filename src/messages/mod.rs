//! Message relay: accepts opaque envelopes for every device of a recipient, queues them with a TTL (or
//! hands them only to connected sockets), and issues sealed-sender certificates.
//!
//! Invariants: nothing is queued for any device unless the request addresses exactly the recipient's
//! current devices with their current registration ids; a sealed-sender envelope carries no source, and
//! the server never learns one; an expired envelope is never delivered.
//! Never: parses, logs or indexes envelope content; stores who sent a sealed-sender envelope.

pub mod certificates;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, put};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::proto::{Envelope, envelope_type};
use crate::domain::{Aci, DeviceId, decode_b64, encode_b64, now_millis};
use crate::error::ApiError;
use crate::http::auth::{AuthedDevice, DeviceOrAccessKey};
use crate::http::extract::{Json, Path};
use crate::http::{App, ClientIp};
use crate::storage::{BusEvent, NewEnvelope, PushOutcome, Recipient};

/// Rate-limit bucket of sends per sender and recipient.
const RATE_BUCKET: &str = "messages_sender_recipient";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/messages/{aci}", put(send))
        .route("/v1/messages", get(pending))
        .route("/v1/messages/uuid/{guid}", delete(acknowledge))
        .route("/v1/certificate/delivery", get(delivery_certificate))
        .route("/v1/certificate/trust-root", get(trust_root))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutgoingMessage {
    #[serde(rename = "type")]
    kind: i32,
    destination_device_id: i64,
    destination_registration_id: i64,
    content: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendRequest {
    messages: Vec<OutgoingMessage>,
    timestamp: u64,
    #[serde(default)]
    online: bool,
    #[serde(default)]
    urgent: Option<bool>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendResponse {
    needs_sync: bool,
}

/// One checked message of a send.
struct Validated {
    device: u32,
    registration_id: i64,
    kind: i32,
    content: Vec<u8>,
}

async fn send(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    sender: DeviceOrAccessKey,
    Path(target): Path<String>,
    Json(req): Json<SendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let sealed = matches!(sender, DeviceOrAccessKey::AccessKey(_));
    let target = match Aci::parse(&target) {
        Some(aci) => aci,
        None if sealed => return Err(ApiError::Unauthorized),
        None => return Err(ApiError::InvalidPath),
    };
    let ttl_seconds = req.ttl_seconds.unwrap_or(app.config.max_message_ttl_seconds);
    if ttl_seconds == 0 || ttl_seconds > app.config.max_message_ttl_seconds {
        return Err(ApiError::InvalidTtl);
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for message in &req.messages {
        if !envelope_type::is_known(message.kind) || (sealed && message.kind != envelope_type::UNIDENTIFIED_SENDER) {
            return Err(ApiError::InvalidMessageType);
        }
        let content = decode_b64("content", &message.content)?;
        if content.len() > app.config.max_message_bytes {
            return Err(ApiError::MessageTooLarge);
        }
        let device = u32::try_from(message.destination_device_id)
            .map_err(|_| ApiError::InvalidBody("destinationDeviceId is out of range".into()))?;
        messages.push(Validated {
            device,
            registration_id: message.destination_registration_id,
            kind: message.kind,
            content,
        });
    }

    let sender_key = match &sender {
        DeviceOrAccessKey::Device(d) => format!("{}.{}>{target}", d.aci, d.device),
        DeviceOrAccessKey::AccessKey(_) => format!("ip:{ip}>{target}"),
    };
    // An identified sender's token is taken by the queue write itself (one storage round trip per send).
    // Sealed senders pay before any lookup, so guessing access keys costs tokens; so do online-only sends,
    // which write nothing.
    let limit = &app.config.limit_messages_per_sender_recipient;
    let token_in_push = matches!(sender, DeviceOrAccessKey::Device(_)) && !req.online;
    if !token_in_push {
        app.limiter.check(RATE_BUCKET, sender_key.as_bytes(), limit).await?;
    }

    let entry = app.directory.get(target).await?;
    let account = entry.account.as_ref();
    match &sender {
        DeviceOrAccessKey::AccessKey(presented) => {
            if !DeviceOrAccessKey::access_allowed(presented, account) {
                return Err(ApiError::Unauthorized);
            }
        }
        DeviceOrAccessKey::Device(_) => {
            if !account.is_some_and(|a| a.approved) {
                return Err(ApiError::NotFound);
            }
        }
    }

    let own_device = match &sender {
        DeviceOrAccessKey::Device(d) if d.aci == target => Some(d.device),
        _ => None,
    };
    let devices: Vec<_> = entry.ready.iter().copied().filter(|(id, _)| Some(*id) != own_device).collect();
    let addressed: Vec<(u32, i64)> = messages.iter().map(|m| (m.device, m.registration_id)).collect();
    check_devices(&devices, &addressed)?;

    let now = now_millis();
    let urgent = req.urgent.unwrap_or(true);
    let (source, source_device) = match &sender {
        DeviceOrAccessKey::Device(d) => (Some(d.aci.0.as_bytes().to_vec()), Some(d.device.0)),
        DeviceOrAccessKey::AccessKey(_) => (None, None),
    };
    let items: Vec<(Recipient, NewEnvelope)> = messages
        .into_iter()
        .map(|message| {
            let guid = *Uuid::new_v4().as_bytes();
            let envelope = Envelope {
                r#type: Some(message.kind),
                client_timestamp: Some(req.timestamp),
                source_device,
                content: Some(message.content),
                server_timestamp: Some(now as u64),
                urgent: Some(urgent),
                source_service_id: source.clone(),
                destination_service_id: Some(target.0.as_bytes().to_vec()),
                server_guid: Some(guid.to_vec()),
            };
            let expires_at = now + (ttl_seconds as i64).saturating_mul(1000);
            let device = DeviceId(message.device);
            // A device the view lists as ready but not as a device cannot be queued for: the legacy
            // incarnation never matches a live device's, so the push answers `Gone` and the view is renewed.
            let incarnation = entry.incarnation(device).unwrap_or(crate::domain::Incarnation::LEGACY);
            (Recipient { device, incarnation }, NewEnvelope { guid, expires_at, envelope: envelope.encode_to_vec() })
        })
        .collect();

    if req.online {
        // Only for sockets open right now; nothing is stored.
        for (recipient, item) in items {
            app.storage.bus.publish(target, recipient.device, BusEvent::Ephemeral(item.envelope)).await?;
        }
    } else {
        let bucket = token_in_push.then(|| app.limiter.bucket(RATE_BUCKET, sender_key.as_bytes(), limit));
        let outcome = app.storage.queue.push(target, &items, app.config.max_queue_len, bucket.as_ref()).await?;
        match outcome {
            PushOutcome::Queued => {}
            PushOutcome::Full(_) => return Err(ApiError::QueueFull),
            PushOutcome::Limited(wait) => return Err(crate::limits::Limiter::refused(RATE_BUCKET, wait)),
            PushOutcome::Gone(device) => {
                // A device was removed while this send was on its way: answer from a fresh view, as if the
                // send had come a moment later.
                app.directory.invalidate(target).await?;
                let entry = app.directory.get(target).await?;
                let devices: Vec<_> = entry.ready.iter().copied().filter(|(id, _)| Some(*id) != own_device).collect();
                check_devices(&devices, &addressed)?;
                // Same ids and registration ids, yet the device is a new one: the sender's session is stale.
                return Err(ApiError::StaleDevices(vec![device.0]));
            }
        }
    }
    metrics::counter!("sealpost_messages_accepted_total", "sealed" => if sealed { "true" } else { "false" },
        "online" => if req.online { "true" } else { "false" })
    .increment(1);

    let needs_sync = match &sender {
        DeviceOrAccessKey::Device(d) => app.directory.get(d.aci).await?.devices.len() > 1,
        DeviceOrAccessKey::AccessKey(_) => false,
    };
    Ok(axum::Json(SendResponse { needs_sync }))
}

/// 410 for registration-id mismatches first (as Signal does), then 409 for missing or extra devices.
/// `addressed` holds each message's destination device and registration id.
fn check_devices(
    devices: &[(DeviceId, crate::domain::RegistrationId)],
    addressed: &[(u32, i64)],
) -> Result<(), ApiError> {
    let stale: BTreeSet<u32> = addressed
        .iter()
        .filter(|(device, registration)| {
            devices.iter().any(|(id, reg)| id.0 == *device && i64::from(reg.0) != *registration)
        })
        .map(|(device, _)| *device)
        .collect();
    if !stale.is_empty() {
        return Err(ApiError::StaleDevices(stale.into_iter().collect()));
    }
    let addressed: Vec<u32> = addressed.iter().map(|(device, _)| *device).collect();
    let current: BTreeSet<u32> = devices.iter().map(|(id, _)| id.0).collect();
    let missing: Vec<u32> = current.iter().copied().filter(|id| !addressed.contains(id)).collect();
    let mut extra: BTreeSet<u32> = addressed.iter().copied().filter(|id| !current.contains(id)).collect();
    // A device addressed twice is also an error of the sender's device list.
    for (i, id) in addressed.iter().enumerate() {
        if addressed[..i].contains(id) {
            extra.insert(*id);
        }
    }
    if !missing.is_empty() || !extra.is_empty() {
        return Err(ApiError::MismatchedDevices { missing, extra: extra.into_iter().collect() });
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PendingEnvelope {
    guid: String,
    #[serde(rename = "type")]
    kind: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_service_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_device: Option<u32>,
    destination_service_id: String,
    client_timestamp: u64,
    server_timestamp: u64,
    urgent: bool,
    content: String,
}

#[derive(Serialize)]
struct PendingList {
    messages: Vec<PendingEnvelope>,
    more: bool,
}

/// Envelopes `GET /v1/messages` returns at once.
const PENDING_PAGE: usize = 100;

fn uuid_string(bytes: Option<&[u8]>) -> Option<String> {
    bytes.and_then(|b| Uuid::from_slice(b).ok()).map(|u| u.hyphenated().to_string())
}

async fn pending(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let mut batch = app.storage.queue.peek(authed.aci, authed.device, 0, PENDING_PAGE + 1, now_millis()).await?;
    let more = batch.len() > PENDING_PAGE;
    batch.truncate(PENDING_PAGE);
    let mut messages = Vec::with_capacity(batch.len());
    for item in batch {
        let envelope = Envelope::decode(item.envelope.as_slice())
            .map_err(|_| ApiError::Internal("a queued envelope does not decode".into()))?;
        messages.push(PendingEnvelope {
            guid: Uuid::from_bytes(item.guid).hyphenated().to_string(),
            kind: envelope.r#type.unwrap_or(0),
            source_service_id: uuid_string(envelope.source_service_id.as_deref()),
            source_device: envelope.source_device,
            destination_service_id: uuid_string(envelope.destination_service_id.as_deref()).unwrap_or_default(),
            client_timestamp: envelope.client_timestamp.unwrap_or(0),
            server_timestamp: envelope.server_timestamp.unwrap_or(0),
            urgent: envelope.urgent.unwrap_or(true),
            content: encode_b64(envelope.content.as_deref().unwrap_or_default()),
        });
    }
    Ok(axum::Json(PendingList { messages, more }))
}

async fn acknowledge(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Path(guid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let guid = Uuid::parse_str(&guid).map_err(|_| ApiError::InvalidPath)?;
    // Idempotent: deleting an envelope that is already gone is not an error.
    app.storage.queue.ack(authed.aci, authed.device, *guid.as_bytes()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct CertificateResponse {
    certificate: String,
}

async fn delivery_certificate(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
) -> Result<impl IntoResponse, ApiError> {
    let entry = app.directory.get(authed.aci).await?;
    let account = entry.account.as_ref().ok_or(ApiError::Unauthorized)?;
    let expires = now_millis() as u64 + app.config.certificate_validity_seconds * 1000;
    let certificate = app.certifier.sender_certificate(authed.aci, authed.device, &account.identity_key, expires);
    Ok(axum::Json(CertificateResponse { certificate: encode_b64(&certificate) }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrustRootResponse {
    public_key: String,
}

async fn trust_root(State(app): State<Arc<App>>) -> impl IntoResponse {
    axum::Json(TrustRootResponse { public_key: encode_b64(&app.certifier.trust_root_public()) })
}
