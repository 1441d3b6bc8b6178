//! Contact tokens, the rules: a token is 32 random bytes shown once; only its keyed hash is stored; an
//! account holds at most `SEALPOST_MAX_CONTACT_TOKENS_PER_ACCOUNT` live tokens; resolving answers the four
//! failures (unknown, revoked, expired, used up) identically, after the same single lookup; one use is the
//! first bundle fetch through the token by a requester (a keyed hash of its address).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::access::{AuthedDevice, ContactGrant};
use crate::crypto::{constant_time_eq, contact_token_hash, random_bytes};
use crate::domain::{Aci, EcPublicKey, now_millis};
use crate::error::ApiError;
use crate::state::App;
use crate::storage::{ContactCap, ContactToken, NewContactToken};

/// What the owner asks for.
pub struct Request {
    pub ttl_seconds: Option<u64>,
    pub max_uses: Option<u32>,
    pub label: Option<Vec<u8>>,
}

/// A new token, shown to its owner this once.
pub struct Created {
    pub id: [u8; 16],
    pub token: String,
    pub expires_at: i64,
}

pub async fn create(app: &App, owner: AuthedDevice, request: Request) -> Result<Created, ApiError> {
    let config = &app.config;
    app.limiter
        .check("contact_tokens_account", owner.aci.0.as_bytes(), &config.limit_contact_tokens_per_account)
        .await?;
    let ttl = request.ttl_seconds.unwrap_or(config.contact_token_ttl_seconds);
    if ttl == 0 || ttl > config.max_contact_token_ttl_seconds {
        return Err(ApiError::InvalidTtl);
    }
    if request.max_uses == Some(0) {
        return Err(ApiError::InvalidBody("maxUses must be at least 1".into()));
    }
    if request.label.as_ref().is_some_and(|l| l.len() > config.max_contact_token_label_bytes) {
        return Err(ApiError::InvalidBody("label is longer than allowed".into()));
    }
    let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let now = now_millis();
    let new = NewContactToken {
        id: random_bytes(),
        owner: owner.aci,
        token_hash: contact_token_hash(&app.keys.pseudonym_key, &token),
        label: request.label,
        created_at: now,
        expires_at: now + (ttl as i64).saturating_mul(1000),
        max_uses: request.max_uses,
    };
    let cap = ContactCap { max_live: config.max_contact_tokens_per_account, now };
    if !app.storage.contacts.create(&new, &cap).await? {
        return Err(ApiError::TooManyContactTokens);
    }
    metrics::counter!("sealpost_contact_tokens_created_total").increment(1);
    Ok(Created { id: new.id, token, expires_at: new.expires_at })
}

pub async fn list(app: &App, owner: AuthedDevice) -> Result<Vec<ContactToken>, ApiError> {
    Ok(app.storage.contacts.list(owner.aci).await?)
}

/// Revokes at once, on every instance: nothing about tokens is cached.
pub async fn revoke(app: &App, owner: AuthedDevice, id: [u8; 16]) -> Result<(), ApiError> {
    if app.storage.contacts.revoke(owner.aci, id).await? { Ok(()) } else { Err(ApiError::NotFound) }
}

/// What a stranger learns from a live token: whom to contact.
pub struct Resolved {
    pub aci: Aci,
    pub identity_key: EcPublicKey,
}

/// Resolves a token for anyone who holds it. Every failure is the same 404 after the same work, and
/// counts against the address's failure budget, so guessing is both hopeless and visible.
pub async fn resolve(app: &App, ip: IpAddr, token: &str) -> Result<Resolved, ApiError> {
    let config = &app.config;
    let address = ip.to_string();
    app.limiter.check("contact_resolve_ip", address.as_bytes(), &config.limit_contact_resolve_per_ip).await?;
    let failures = &config.limit_contact_resolve_failures_per_ip;
    app.limiter.check_not_exhausted("contact_resolve_failures_ip", address.as_bytes(), failures).await?;
    let hash = contact_token_hash(&app.keys.pseudonym_key, token);
    let found = app.storage.contacts.find(hash).await?;
    let now = now_millis();
    let live = found.filter(|t| constant_time_eq(&t.token_hash, &hash) & t.live(now));
    let account = match live {
        Some(token) => app.directory.get(token.owner).await?.account.clone().filter(|a| a.approved),
        None => None,
    };
    match account {
        Some(account) => {
            metrics::counter!("sealpost_contact_resolutions_total", "outcome" => "found").increment(1);
            Ok(Resolved { aci: account.aci, identity_key: account.identity_key })
        }
        None => {
            metrics::counter!("sealpost_contact_resolutions_total", "outcome" => "not_found").increment(1);
            // The failure budget: its refusal shows on the next attempt (checked above without taking).
            let _ = app.limiter.check("contact_resolve_failures_ip", address.as_bytes(), failures).await;
            Err(ApiError::NotFound)
        }
    }
}

/// Counts the requester (by a keyed hash of its address) as a user of the token, once; false when the
/// token has no room for a new requester.
pub async fn count_first_contact(app: &App, grant: &ContactGrant, ip: IpAddr) -> Result<bool, ApiError> {
    let requester = crate::crypto::pseudonym(&app.keys.pseudonym_key, "contact-requester", ip.to_string().as_bytes());
    Ok(app.storage.contacts.count_use(grant.id, requester).await?)
}
