//! The callers of a request, as axum extractors: a missing or bad credential is our 401 error body.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::access::{AuthedDevice, Caller, authenticate, contact_grant};
use crate::domain::AccessKey;
use crate::error::ApiError;
use crate::state::App;

/// The `Bearer` token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `Authorization: Bearer <jwt>`.
impl FromRequestParts<Arc<App>> for AuthedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        authenticate(app, token).await
    }
}

/// A device token when there is one (anything else is then ignored), else a `Contact-Token`, else an
/// `Unidentified-Access-Key`.
impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(token) = bearer(&parts.headers) {
            return Ok(Caller::Device(authenticate(app, token).await?));
        }
        if let Some(token) = parts.headers.get("contact-token") {
            let grant = match token.to_str() {
                Ok(token) => contact_grant(app, token.trim()).await?,
                Err(_) => None,
            };
            return Ok(Caller::ContactToken(grant));
        }
        match parts.headers.get("unidentified-access-key").and_then(|v| v.to_str().ok()) {
            Some(value) => Ok(Caller::AccessKey(AccessKey::from_b64("Unidentified-Access-Key", value).ok())),
            None => Err(ApiError::Unauthorized),
        }
    }
}
