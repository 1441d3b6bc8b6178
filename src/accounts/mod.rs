//! Accounts and devices: anonymous registration, device tokens, the device list, removal.
//!
//! Owns: the account record (random `aci`, public identity key, sealed-sender access key), its devices
//! (registration id, salted hash of the device secret) and invite codes.
//! Never: accepts or stores a phone number, e-mail or name; keeps a device secret or an invite code in the
//! clear; logs an aci, device id, IP or secret.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::RegistrationPolicy;
use crate::crypto::{constant_time_eq, hash_secret, new_salt, random_bytes, sha256};
use crate::domain::{
    AccessKey, Aci, DeviceId, DeviceSecret, EcPublicKey, Incarnation, RegistrationId, now_millis, round_to_day,
};
use crate::error::ApiError;
use crate::http::auth::{self, AuthedDevice};
use crate::http::extract::{Json, Path};
use crate::http::{App, ClientIp};
use crate::storage::{CreateAccountError, NewAccount, Recipient};

pub mod linking;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .merge(linking::routes())
        .route("/v1/accounts", post(register))
        .route("/v1/accounts/me", delete(delete_account))
        .route("/v1/accounts/me/attributes", put(set_attributes))
        .route("/v1/auth/token", post(token))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", delete(delete_device))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegisterRequest {
    identity_key: String,
    registration_id: i64,
    device_secret: String,
    #[serde(default)]
    invite_code: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterResponse {
    aci: String,
    device_id: u32,
}

async fn register(
    State(app): State<Arc<App>>,
    ip: ClientIp,
    Json(req): Json<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let identity_key = EcPublicKey::from_b64("identityKey", &req.identity_key)?;
    let registration_id = RegistrationId::new(req.registration_id)?;
    let secret = DeviceSecret::from_b64(&req.device_secret)?;
    app.limiter.check("registration_ip", ip.0.to_string().as_bytes(), &app.config.limit_registration_per_ip).await?;
    let invite = match (app.config.registration_policy, req.invite_code.as_deref()) {
        (RegistrationPolicy::Invite, None) => return Err(ApiError::InviteRequired),
        (RegistrationPolicy::Invite, Some(code)) => Some(sha256(code.trim().as_bytes())),
        _ => None,
    };
    let salt = new_salt();
    let now = now_millis();
    let account = NewAccount {
        aci: Aci::random(),
        identity_key,
        registration_id,
        incarnation: Incarnation::random(),
        secret_salt: salt,
        secret_hash: hash_secret(&salt, &secret.0),
        approved: app.config.registration_policy != RegistrationPolicy::Approval,
        created_at: now,
    };
    match app.storage.accounts.create_account(&account, invite, now).await? {
        Ok(()) => {}
        Err(CreateAccountError::InvalidInvite) => return Err(ApiError::InvalidInvite),
    }
    metrics::counter!("sealpost_registrations_total").increment(1);
    Ok((
        StatusCode::CREATED,
        axum::Json(RegisterResponse { aci: account.aci.to_string(), device_id: DeviceId::PRIMARY.0 }),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    expires_in: u64,
}

/// Splits HTTP Basic `"{aci}.{deviceId}:{base64 secret}"`.
fn basic_credentials(headers: &HeaderMap) -> Option<(Aci, DeviceId, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    let (aci, device) = user.split_once('.')?;
    let secret = base64::engine::general_purpose::STANDARD.decode(password).ok()?;
    Some((Aci::parse(aci)?, DeviceId::parse(device)?, secret))
}

async fn token(State(app): State<Arc<App>>, ip: ClientIp, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    app.limiter.check("auth_ip", ip.0.to_string().as_bytes(), &app.config.limit_auth_per_ip).await?;
    let (aci, device, secret) = basic_credentials(&headers).ok_or(ApiError::Unauthorized)?;
    let credentials = app.storage.accounts.device_credentials(aci, device).await?;
    // Hash even for an unknown device so the answer takes as long as for a wrong secret.
    let (salt, expected, approved, incarnation) = match &credentials {
        Some(c) => (c.secret_salt.as_slice(), c.secret_hash.as_slice(), c.approved, c.incarnation),
        None => (&[0u8; 16][..], &[0u8; 32][..], false, Incarnation::LEGACY),
    };
    let matches = constant_time_eq(&hash_secret(salt, &secret), expected);
    if credentials.is_none() || !matches {
        return Err(ApiError::Unauthorized);
    }
    if !approved {
        return Err(ApiError::PendingApproval);
    }
    app.storage.accounts.touch_device(aci, device, round_to_day(now_millis())).await?;
    let (token, expires_in) = auth::issue(&app, aci, device, incarnation)?;
    Ok(axum::Json(TokenResponse { token, expires_in }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceView {
    id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    created: i64,
    last_seen: i64,
}

#[derive(Serialize)]
struct DeviceList {
    devices: Vec<DeviceView>,
}

async fn list_devices(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let devices = app.storage.accounts.devices(authed.aci).await?;
    Ok(axum::Json(DeviceList {
        devices: devices
            .into_iter()
            .map(|d| DeviceView {
                id: d.id.0,
                name: d.name.as_deref().map(crate::domain::encode_b64),
                created: d.created_at,
                last_seen: d.last_seen_day,
            })
            .collect(),
    }))
}

async fn delete_device(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !authed.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    let target = DeviceId::parse(&id).ok_or(ApiError::InvalidPath)?;
    if target.is_primary() {
        // The primary leaves by deleting the account; removing it alone would orphan the others.
        return Err(ApiError::PrimaryDeviceRequired);
    }
    remove_device(&app, authed.aci, target).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a device and everything it owns (durable record, keys, pools). After this returns, its tokens
/// are refused.
///
/// Order matters: the one-time keys and the queue go first, so a failure there leaves the device intact
/// and the call can simply be retried (nothing is orphaned in Redis); then the durable record, which is
/// what refuses its tokens; then every instance forgets it and its sockets are closed.
pub async fn remove_device(app: &App, aci: Aci, device: DeviceId) -> Result<(), ApiError> {
    let devices = app.storage.accounts.devices(aci).await?;
    let Some(found) = devices.iter().find(|d| d.id == device) else {
        return Err(ApiError::NotFound);
    };
    clear_device_state(app, aci, Recipient { device, incarnation: found.incarnation }).await?;
    let removed = app.storage.accounts.delete_device(aci, device, now_millis()).await?;
    app.directory.invalidate(aci).await?;
    if !removed {
        return Err(ApiError::NotFound);
    }
    app.storage.bus.publish(aci, device, crate::storage::BusEvent::Revoke).await?;
    Ok(())
}

/// Deletes a device's one-time prekeys and queued envelopes.
async fn clear_device_state(app: &App, aci: Aci, device: Recipient) -> Result<(), ApiError> {
    app.storage.pre_keys.remove_device(aci, device.device).await?;
    app.storage.queue.remove_device(aci, device).await?;
    Ok(())
}

async fn delete_account(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    if !authed.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    // Same order as for one device: ephemeral state, then the durable record, then the sockets.
    let devices = app.storage.accounts.devices(authed.aci).await?;
    for device in &devices {
        clear_device_state(&app, authed.aci, Recipient { device: device.id, incarnation: device.incarnation }).await?;
    }
    app.storage.queue.remove_account(authed.aci).await?;
    app.storage.accounts.delete_account(authed.aci).await?;
    app.directory.invalidate(authed.aci).await?;
    for device in &devices {
        app.storage.bus.publish(authed.aci, device.id, crate::storage::BusEvent::Revoke).await?;
    }
    metrics::counter!("sealpost_account_deletions_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttributesRequest {
    #[serde(default)]
    unidentified_access_key: Option<String>,
    #[serde(default)]
    unrestricted_unidentified_access: bool,
}

async fn set_attributes(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Json(req): Json<AttributesRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let key =
        req.unidentified_access_key.as_deref().map(|k| AccessKey::from_b64("unidentifiedAccessKey", k)).transpose()?;
    app.storage.accounts.set_access(authed.aci, key, req.unrestricted_unidentified_access).await?;
    app.directory.invalidate(authed.aci).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a single-use invite code valid for `ttl_seconds`; only its hash is stored.
pub async fn create_invite(app_storage: &crate::storage::Storage, ttl_seconds: u64) -> Result<String, ApiError> {
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<18>());
    let expires_at = now_millis() + (ttl_seconds as i64).saturating_mul(1000);
    app_storage.accounts.create_invite(sha256(code.as_bytes()), expires_at).await?;
    Ok(code)
}
