//! Device access tokens: short-lived EdDSA JWTs naming an account and a device.
//!
//! A token alone is not enough: every authenticated request also checks that the device still exists in an
//! approved account, so unlinking a device or deleting an account takes effect on the next request, not at
//! token expiry.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::App;
use crate::domain::{AccessKey, Aci, DeviceId, Incarnation};
use crate::error::ApiError;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    dev: u32,
    /// The device's incarnation; tokens issued before incarnations existed lack it and name the legacy one.
    #[serde(default)]
    inc: i64,
    iat: u64,
    exp: u64,
}

/// Signs a token for one incarnation of a device; returns it with its lifetime in seconds.
pub fn issue(app: &App, aci: Aci, device: DeviceId, incarnation: Incarnation) -> Result<(String, u64), ApiError> {
    let now = (crate::domain::now_millis() / 1000) as u64;
    let ttl = app.config.token_ttl_seconds;
    let claims = Claims { sub: aci.to_string(), dev: device.0, inc: incarnation.0, iat: now, exp: now + ttl };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &app.keys.jwt_encoding)
        .map_err(|e| ApiError::Internal(format!("token signing failed: {e}")))?;
    Ok((token, ttl))
}

/// Tokens whose signature was already checked, by SHA-256 of the token (so a lookup compares no secret),
/// until their expiry. Verifying an Ed25519 signature costs tens of microseconds, and a device presents the
/// same token on every request for its whole lifetime.
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (TokenSubject, u64)>>,
}

/// Whom a token names: one incarnation of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub aci: Aci,
    pub device: DeviceId,
    pub incarnation: Incarnation,
}

/// How long a token can outlive its `exp` claim: the leeway [`verify`] grants for clock skew.
pub const TOKEN_LEEWAY_SECONDS: u64 = 5;

/// Above this many cached tokens, expired ones are dropped (and all, if that is not enough).
const MAX_CACHED_TOKENS: usize = 100_000;

impl TokenCache {
    fn get(&self, key: &[u8; 32], now: u64) -> Option<TokenSubject> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|(_, exp)| *exp > now).map(|(subject, _)| *subject)
    }

    fn put(&self, key: [u8; 32], subject: TokenSubject, exp: u64, now: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED_TOKENS {
            entries.retain(|_, (_, e)| *e > now);
            if entries.len() >= MAX_CACHED_TOKENS {
                entries.clear();
            }
        }
        entries.insert(key, (subject, exp));
    }
}

/// Checks a token's signature and expiry (not yet whether the device still exists).
pub fn verify(app: &App, token: &str) -> Result<TokenSubject, ApiError> {
    let now = (crate::domain::now_millis() / 1000) as u64;
    let key = crate::crypto::sha256(token.as_bytes());
    if let Some(hit) = app.tokens.get(&key, now) {
        return Ok(hit);
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = TOKEN_LEEWAY_SECONDS;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &app.keys.jwt_decoding, &validation)
        .map_err(|_| ApiError::Unauthorized)?;
    let aci = Aci::parse(&data.claims.sub).ok_or(ApiError::Unauthorized)?;
    let device = DeviceId(data.claims.dev);
    if !(1..=DeviceId::MAX).contains(&device.0) {
        return Err(ApiError::Unauthorized);
    }
    let subject = TokenSubject { aci, device, incarnation: Incarnation(data.claims.inc) };
    app.tokens.put(key, subject, data.claims.exp + TOKEN_LEEWAY_SECONDS, now);
    Ok(subject)
}

/// Checks a token and that its device is still active, in the incarnation the token names.
pub async fn authenticate(app: &App, token: &str) -> Result<AuthedDevice, ApiError> {
    let subject = verify(app, token)?;
    if !app.directory.get(subject.aci).await?.device_active(subject.device, subject.incarnation) {
        return Err(ApiError::Unauthorized);
    }
    Ok(AuthedDevice { aci: subject.aci, device: subject.device, incarnation: subject.incarnation })
}

/// The `Bearer` token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An authenticated device, extracted from `Authorization: Bearer <jwt>`.
#[derive(Debug, Clone, Copy)]
pub struct AuthedDevice {
    pub aci: Aci,
    pub device: DeviceId,
    pub incarnation: Incarnation,
}

impl FromRequestParts<Arc<App>> for AuthedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        authenticate(app, token).await
    }
}

/// A caller that is either an authenticated device or the holder of an unidentified-access key (sealed
/// sender), known only by the 16 bytes it presented.
pub enum DeviceOrAccessKey {
    Device(AuthedDevice),
    /// `None` when the header was malformed: answered like a wrong key (401) after the same lookups.
    AccessKey(Option<AccessKey>),
}

impl DeviceOrAccessKey {
    /// Whether an access key opens an account (compared in constant time). Unknown, unapproved or
    /// keyless accounts are refused exactly like a wrong key, so existence does not leak.
    pub fn access_allowed(presented: &Option<AccessKey>, account: Option<&crate::storage::Account>) -> bool {
        match (account, presented) {
            (Some(account), _) if !account.approved => false,
            (Some(account), _) if account.unrestricted_access => true,
            (Some(account), Some(presented)) => {
                account.access_key.is_some_and(|stored| crate::crypto::constant_time_eq(&stored.0, &presented.0))
            }
            _ => false,
        }
    }
}

impl FromRequestParts<Arc<App>> for DeviceOrAccessKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(token) = bearer(&parts.headers) {
            return Ok(DeviceOrAccessKey::Device(authenticate(app, token).await?));
        }
        match parts.headers.get("unidentified-access-key").and_then(|v| v.to_str().ok()) {
            Some(value) => Ok(DeviceOrAccessKey::AccessKey(AccessKey::from_b64("Unidentified-Access-Key", value).ok())),
            None => Err(ApiError::Unauthorized),
        }
    }
}
