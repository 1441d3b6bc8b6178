//! The HTTP surface of contact tokens: create, list, revoke (the owner's device token), and resolve (no
//! account needed).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::service::{self, Request};
use crate::access::AuthedDevice;
use crate::domain::{decode_b64, encode_b64};
use crate::error::ApiError;
use crate::http::ClientIp;
use crate::http::extract::{Json, Path};
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/contact-tokens", post(create).get(list))
        .route("/v1/contact-tokens/{id}", delete(revoke))
        .route("/v1/contact/{token}", get(resolve))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    max_uses: Option<u32>,
    #[serde(default)]
    label: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateResponse {
    id: String,
    token: String,
    uri: String,
    expires_at: i64,
}

async fn create(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Json(req): Json<CreateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let label = req.label.as_deref().map(|l| decode_b64("label", l)).transpose()?;
    let request = Request { ttl_seconds: req.ttl_seconds, max_uses: req.max_uses, label };
    let created = service::create(&app, authed, request).await?;
    let uri = format!("sealpost://contact/{}", created.token);
    Ok((
        StatusCode::CREATED,
        axum::Json(CreateResponse {
            id: URL_SAFE_NO_PAD.encode(created.id),
            token: created.token,
            uri,
            expires_at: created.expires_at,
        }),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    created: i64,
    expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_uses: Option<u32>,
    uses: u32,
    revoked: bool,
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenView>,
}

async fn list(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let tokens = service::list(&app, authed).await?;
    Ok(axum::Json(TokenList {
        tokens: tokens
            .into_iter()
            .map(|t| TokenView {
                id: URL_SAFE_NO_PAD.encode(t.id),
                label: t.label.as_deref().map(encode_b64),
                created: t.created_at,
                expires_at: t.expires_at,
                max_uses: t.max_uses,
                uses: t.uses,
                revoked: t.revoked,
            })
            .collect(),
    }))
}

async fn revoke(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id =
        URL_SAFE_NO_PAD.decode(&id).ok().and_then(|b| <[u8; 16]>::try_from(b).ok()).ok_or(ApiError::InvalidPath)?;
    service::revoke(&app, authed, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Resolved {
    aci: String,
    identity_key: String,
}

async fn resolve(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    Path(token): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let resolved = service::resolve(&app, ip, &token).await?;
    Ok(axum::Json(Resolved { aci: resolved.aci.to_string(), identity_key: encode_b64(&resolved.identity_key.0) }))
}
