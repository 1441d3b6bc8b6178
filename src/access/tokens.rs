//! Device access tokens: short-lived EdDSA JWTs naming an account, a device and the device's incarnation.
//!
//! A token alone is not enough: every request also checks that the device still exists, in that
//! incarnation, in an approved account ([`super::authenticate`]), so unlinking a device or deleting an
//! account takes effect on the next request, not at token expiry.
//! Never: logs a token, or keeps one in the clear (the cache is keyed by its hash).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{Aci, DeviceId, Incarnation};

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

/// Whom a token names: one incarnation of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub aci: Aci,
    pub device: DeviceId,
    pub incarnation: Incarnation,
}

/// How long a token can outlive its `exp` claim: the leeway [`verify`] grants for clock skew.
pub const TOKEN_LEEWAY_SECONDS: u64 = 5;

/// Signs a token for `subject`, valid `ttl` seconds.
pub fn issue(key: &EncodingKey, subject: TokenSubject, ttl: u64) -> Result<String, jsonwebtoken::errors::Error> {
    let now = (crate::domain::now_millis() / 1000) as u64;
    let claims = Claims {
        sub: subject.aci.to_string(),
        dev: subject.device.0,
        inc: subject.incarnation.0,
        iat: now,
        exp: now + ttl,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, key)
}

/// Tokens whose signature was already checked, by SHA-256 of the token (so a lookup compares no secret),
/// until their expiry. Verifying an Ed25519 signature costs tens of microseconds, and a device presents the
/// same token on every request for its whole lifetime.
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (TokenSubject, u64)>>,
}

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

/// Checks a token's signature and expiry (not yet whether its device still exists); `None` when it is not
/// a valid token of this server.
pub fn verify(key: &DecodingKey, cache: &TokenCache, token: &str) -> Option<TokenSubject> {
    let now = (crate::domain::now_millis() / 1000) as u64;
    let hash = crate::crypto::sha256(token.as_bytes());
    if let Some(hit) = cache.get(&hash, now) {
        return Some(hit);
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = TOKEN_LEEWAY_SECONDS;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, key, &validation).ok()?;
    let aci = Aci::parse(&data.claims.sub)?;
    let device = DeviceId(data.claims.dev);
    if !(1..=DeviceId::MAX).contains(&device.0) {
        return None;
    }
    let subject = TokenSubject { aci, device, incarnation: Incarnation(data.claims.inc) };
    cache.put(hash, subject, data.claims.exp + TOKEN_LEEWAY_SECONDS, now);
    Some(subject)
}
