//! Linking a new device by QR code, as Signal does.
//!
//! 1. The new device opens `GET /v1/websocket/provisioning` and receives a random address; it shows a QR
//!    code with that address and an ephemeral public key of its own (see docs/api.md for the URI).
//! 2. The primary scans it, asks for a link code (`GET /v1/devices/provisioning/code`) and relays, through
//!    `PUT /v1/provisioning/{address}`, a message it encrypted to the ephemeral key: the identity key pair,
//!    the aci and the code. The server never parses it.
//! 3. The new device calls `PUT /v1/devices/link` with the code, its own secret and its signed keys.
//!
//! Invariants: a link code works once and expires (default 10 minutes); it is spent as soon as it is
//! looked up, so a failing link attempt cannot be retried with the same code; an account never exceeds
//! `max_devices`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::crypto::{hash_secret, new_salt, random_bytes, sha256};
use crate::domain::{DeviceSecret, Incarnation, RegistrationId, decode_b64, now_millis};
use crate::error::ApiError;
use crate::http::auth::AuthedDevice;
use crate::http::extract::{Json, Path};
use crate::http::{App, ClientIp};
use crate::keys::{SignedKeyJson, parse_signed_ec, parse_signed_kem, verify_ec, verify_kem};
use crate::storage::{AddDeviceError, NewDevice};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/devices/provisioning/code", get(link_code))
        .route("/v1/provisioning/{address}", put(relay))
        .route("/v1/devices/link", put(link))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkCode {
    verification_code: String,
    expires_at: i64,
}

async fn link_code(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    if !authed.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    app.limiter.check("link_codes_account", authed.aci.0.as_bytes(), &app.config.limit_link_codes_per_account).await?;
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<15>());
    let expires_at = now_millis() + (app.config.link_code_ttl_seconds as i64).saturating_mul(1000);
    app.storage.accounts.create_link_code(sha256(code.as_bytes()), authed.aci, expires_at).await?;
    Ok(axum::Json(LinkCode { verification_code: code, expires_at }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayRequest {
    body: String,
}

async fn relay(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Path(address): Path<String>,
    Json(req): Json<RelayRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !authed.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    let body = decode_b64("body", &req.body)?;
    if body.len() > app.config.max_provisioning_message_bytes {
        return Err(ApiError::MessageTooLarge);
    }
    if address.len() > 64 {
        return Err(ApiError::NotFound);
    }
    if !app.storage.bus.publish_provisioning(&address, body).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LinkRequest {
    verification_code: String,
    device_secret: String,
    registration_id: i64,
    #[serde(default)]
    name: Option<String>,
    signed_pre_key: SignedKeyJson,
    pq_last_resort_pre_key: SignedKeyJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Linked {
    aci: String,
    device_id: u32,
}

async fn link(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LinkRequest>,
) -> Result<impl IntoResponse, ApiError> {
    app.limiter.check("link_ip", ip.to_string().as_bytes(), &app.config.limit_link_per_ip).await?;
    let secret = DeviceSecret::from_b64(&req.device_secret)?;
    let registration_id = RegistrationId::new(req.registration_id)?;
    let name = req.name.as_deref().map(|n| decode_b64("name", n)).transpose()?;
    if name.as_ref().is_some_and(|n| n.len() > app.config.max_device_name_bytes) {
        return Err(ApiError::InvalidBody("name is longer than allowed".into()));
    }
    // Form first: a malformed request does not spend the code. Signatures only after the lookup, so a
    // wrong key (a guessing attempt) does.
    let signed = parse_signed_ec(&req.signed_pre_key)?;
    let last_resort = parse_signed_kem("pqLastResortPreKey", &req.pq_last_resort_pre_key)?;

    let now = now_millis();
    let aci = match app.storage.accounts.consume_link_code(sha256(req.verification_code.trim().as_bytes())).await? {
        Some((aci, expires_at)) if crate::domain::is_live(expires_at, now) => aci,
        _ => return Err(ApiError::InvalidVerificationCode),
    };
    let account = app.storage.accounts.account(aci).await?.ok_or(ApiError::InvalidVerificationCode)?;
    verify_ec(&account.identity_key, &signed)?;
    verify_kem(&account.identity_key, "pqLastResortPreKey", &last_resort)?;

    let salt = new_salt();
    let device = NewDevice {
        registration_id,
        incarnation: Incarnation::random(),
        secret_salt: salt,
        secret_hash: hash_secret(&salt, &secret.0),
        name,
        created_at: now,
    };
    let slots = device_slots(&app.config, now);
    let id = match app.storage.accounts.add_device(aci, &device, &slots).await? {
        Ok(id) => id,
        Err(AddDeviceError::TooManyDevices) => return Err(ApiError::TooManyDevices),
        Err(AddDeviceError::NoAccount) => return Err(ApiError::InvalidVerificationCode),
    };
    app.storage.keys.put_signed(aci, id, Some(&signed), Some(&last_resort)).await?;
    app.directory.invalidate(aci).await?;
    metrics::counter!("sealpost_devices_linked_total").increment(1);
    Ok(axum::Json(Linked { aci: aci.to_string(), device_id: id.0 }))
}

/// How new devices get their ids under this configuration: an id given up less than a token's lifetime
/// ago is not handed out again yet, as a token of the device that had it could still be accepted (tokens
/// name their incarnation too, so this is a second line of defence).
pub fn device_slots(config: &crate::config::Config, now: i64) -> crate::domain::DeviceSlots {
    let token_life_ms = (config.token_ttl_seconds + crate::http::auth::TOKEN_LEEWAY_SECONDS) * 1000;
    crate::domain::DeviceSlots { max_devices: config.max_devices, reuse_after: now - token_life_ms as i64 }
}
