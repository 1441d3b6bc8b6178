//! The HTTP surface of messaging: sends (through the one send path, [`crate::relay`]), the waiting
//! envelopes for clients without a socket, acknowledgements, and sealed-sender certificates.
//!
//! Never: parses, logs or indexes envelope content.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, put};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{AuthedDevice, Caller};
use crate::delivery::proto::Envelope;
use crate::domain::{AccessKey, Aci, decode_b64, encode_b64, now_millis};
use crate::error::ApiError;
use crate::http::ClientIp;
use crate::http::extract::{Json, Path, Query, binary_body};
use crate::relay::{self, Options, Outgoing};
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/messages/{aci}", put(send))
        .route("/v1/messages/multi_recipient", put(send_multi))
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

async fn send(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    sender: Caller,
    Path(target): Path<String>,
    Json(req): Json<SendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    for message in req.messages {
        messages.push(Outgoing {
            device: u32::try_from(message.destination_device_id)
                .map_err(|_| ApiError::InvalidBody("destinationDeviceId is out of range".into()))?,
            registration_id: message.destination_registration_id,
            kind: message.kind,
            content: decode_b64("content", &message.content)?,
        });
    }
    let options = Options {
        timestamp: req.timestamp,
        online: req.online,
        urgent: req.urgent.unwrap_or(true),
        ttl_seconds: req.ttl_seconds,
    };
    let sent = relay::send(&app, &sender, ip, Aci::parse(&target), messages, options).await?;
    Ok(axum::Json(SendResponse { needs_sync: sent.needs_sync }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MultiQuery {
    ts: u64,
    #[serde(default)]
    online: bool,
    #[serde(default)]
    urgent: Option<bool>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Serialize)]
struct NotQueuedView {
    uuid: String,
    reason: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MultiResponse {
    /// Signal's field; always empty here, since an unknown recipient makes the combined key wrong (401).
    uuids404: Vec<String>,
    not_queued: Vec<NotQueuedView>,
}

/// The content type libsignal's clients upload multi-recipient messages with.
const MULTI_RECIPIENT_TYPE: &str = "application/vnd.signal-messenger.mrm";

async fn send_multi(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    Query(query): Query<MultiQuery>,
    request: axum::extract::Request,
) -> Result<impl IntoResponse, ApiError> {
    let access_key = request
        .headers()
        .get("unidentified-access-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| AccessKey::from_b64("Unidentified-Access-Key", v).ok());
    let deadline = std::time::Duration::from_secs(app.config.body_read_timeout_seconds);
    let body = binary_body(request, MULTI_RECIPIENT_TYPE, app.config.max_multi_recipient_bytes, deadline).await?;
    let options = relay::multi::Options {
        timestamp: query.ts,
        online: query.online,
        urgent: query.urgent.unwrap_or(true),
        ttl_seconds: query.ttl_seconds,
    };
    let sent = relay::multi::send(&app, ip, access_key, &body, options).await?;
    let not_queued = sent
        .not_queued
        .into_iter()
        .map(|(aci, why)| NotQueuedView {
            uuid: aci.to_string(),
            reason: match why {
                relay::multi::NotQueued::QueueFull => "queue_full",
                relay::multi::NotQueued::DevicesChanged => "devices_changed",
            },
        })
        .collect();
    Ok(axum::Json(MultiResponse { uuids404: Vec::new(), not_queued }))
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
