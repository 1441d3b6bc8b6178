//! The HTTP surface of device linking: link codes, the relay to a provisioning socket, joining.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use super::link::{self, LinkRequest};
use crate::access::AuthedDevice;
use crate::domain::{DeviceSecret, RegistrationId, decode_b64};
use crate::error::ApiError;
use crate::http::ClientIp;
use crate::http::extract::{Json, Path};
use crate::keys::http::{SignedKeyJson, parse_signed_ec, parse_signed_kem};
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/devices/provisioning/code", get(link_code))
        .route("/v1/provisioning/{address}", put(relay))
        .route("/v1/devices/link", put(join))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkCode {
    verification_code: String,
    expires_at: i64,
}

async fn link_code(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let (verification_code, expires_at) = link::link_code(&app, authed).await?;
    Ok(axum::Json(LinkCode { verification_code, expires_at }))
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
    let body = decode_b64("body", &req.body)?;
    link::relay(&app, authed, &address, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JoinRequest {
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

async fn join(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    Json(req): Json<JoinRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // Form first: a malformed request does not spend the code.
    let request = LinkRequest {
        verification_code: req.verification_code,
        secret: DeviceSecret::from_b64(&req.device_secret)?,
        registration_id: RegistrationId::new(req.registration_id)?,
        name: req.name.as_deref().map(|n| decode_b64("name", n)).transpose()?,
        signed_pre_key: parse_signed_ec(&req.signed_pre_key)?,
        pq_last_resort: parse_signed_kem("pqLastResortPreKey", &req.pq_last_resort_pre_key)?,
    };
    let (aci, id) = link::link(&app, ip, request).await?;
    Ok(axum::Json(Linked { aci: aci.to_string(), device_id: id.0 }))
}
