//! The HTTP surface of accounts: registration, tokens, the device list, unlinking, account deletion and
//! the sealed-sender attributes. Handlers parse, call [`super::service`], and shape the answer.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::service::{self, Registration};
use crate::access::AuthedDevice;
use crate::domain::{AccessKey, Aci, DeviceId, DeviceSecret, EcPublicKey, RegistrationId, encode_b64};
use crate::error::ApiError;
use crate::http::ClientIp;
use crate::http::extract::{Json, Path};
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
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
    ClientIp(ip): ClientIp,
    Json(req): Json<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let registration = Registration {
        identity_key: EcPublicKey::from_b64("identityKey", &req.identity_key)?,
        registration_id: RegistrationId::new(req.registration_id)?,
        secret: DeviceSecret::from_b64(&req.device_secret)?,
        invite_code: req.invite_code,
    };
    let aci = service::register(&app, ip, registration).await?;
    Ok((StatusCode::CREATED, axum::Json(RegisterResponse { aci: aci.to_string(), device_id: DeviceId::PRIMARY.0 })))
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

async fn token(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let (token, expires_in) = service::issue_token(&app, ip, basic_credentials(&headers)).await?;
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
    let devices = service::devices(&app, authed.aci).await?;
    Ok(axum::Json(DeviceList {
        devices: devices
            .into_iter()
            .map(|d| DeviceView {
                id: d.id.0,
                name: d.name.as_deref().map(encode_b64),
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
    let target = DeviceId::parse(&id).ok_or(ApiError::InvalidPath)?;
    service::unlink(&app, authed, target).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_account(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    service::delete_account(&app, authed).await?;
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
    service::set_access(&app, authed.aci, key, req.unrestricted_unidentified_access).await?;
    Ok(StatusCode::NO_CONTENT)
}
