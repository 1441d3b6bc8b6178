//! Who is calling, and whether they may reach an account: decided here, once, for every capability.
//!
//! A caller is a device (by its token), or a stranger presenting an unidentified-access key (sealed
//! sender) or a contact token (the random token of a QR code). The one rule: a device may reach any
//! approved account; an access key opens an approved account whose key it matches (compared in constant
//! time) or that accepts anyone; a contact token opens the approved account that issued it, while it is
//! neither revoked nor expired; everything else is refused, and refused the same way whether the account
//! exists or not, so existence does not leak to anonymous callers.
//! Never: logs who called, or which account was asked for.

pub mod extract;
pub mod tokens;

use std::net::IpAddr;

use crate::domain::{AccessKey, Aci, DeviceId, Incarnation};
use crate::error::ApiError;
use crate::state::App;
use crate::storage::Account;
use tokens::TokenSubject;

/// An authenticated device.
#[derive(Debug, Clone, Copy)]
pub struct AuthedDevice {
    pub aci: Aci,
    pub device: DeviceId,
    pub incarnation: Incarnation,
}

/// The caller of an endpoint that strangers may use too (bundles, sends).
#[derive(Debug)]
pub enum Caller {
    Device(AuthedDevice),
    /// Known only by the 16 bytes it presented; `None` when the header was malformed, which is answered
    /// like a wrong key, after the same lookups.
    AccessKey(Option<AccessKey>),
    /// A stranger with a contact token; `None` when the token is unknown, revoked or expired.
    ContactToken(Option<ContactGrant>),
}

/// What a usable contact token grants: first contact with the account that issued it.
#[derive(Debug, Clone, Copy)]
pub struct ContactGrant {
    pub id: [u8; 16],
    pub owner: Aci,
}

/// The contact token of a `Contact-Token` header, looked up: a grant while the token is usable.
pub async fn contact_grant(app: &App, token: &str) -> Result<Option<ContactGrant>, ApiError> {
    let hash = crate::crypto::contact_token_hash(&app.keys.pseudonym_key, token);
    let found = app.storage.contacts.find(hash).await?;
    let now = crate::domain::now_millis();
    Ok(found
        .filter(|t| crate::crypto::constant_time_eq(&t.token_hash, &hash) && t.usable(now))
        .map(|t| ContactGrant { id: t.id, owner: t.owner }))
}

impl Caller {
    /// Whether the caller stays anonymous (sealed sender).
    pub fn is_anonymous(&self) -> bool {
        !matches!(self, Caller::Device(_))
    }

    pub fn device(&self) -> Option<AuthedDevice> {
        match self {
            Caller::Device(device) => Some(*device),
            Caller::AccessKey(_) | Caller::ContactToken(_) => None,
        }
    }

    /// Whom the caller's rate limits count against: its device, or its address when anonymous.
    pub fn bucket_identity(&self, ip: IpAddr) -> String {
        match self {
            Caller::Device(d) => format!("{}.{}", d.aci, d.device),
            Caller::AccessKey(_) | Caller::ContactToken(_) => format!("ip:{ip}"),
        }
    }

    /// The answer for "nothing of that account for you": 404 to a device, which may know the account
    /// exists; 401 to an anonymous caller, exactly as for a wrong key.
    pub fn not_found(&self) -> ApiError {
        match self {
            Caller::Device(_) => ApiError::NotFound,
            Caller::AccessKey(_) | Caller::ContactToken(_) => ApiError::Unauthorized,
        }
    }

    /// May this caller reach `account` (`None`: no such account)?
    pub fn may_reach(&self, account: Option<&Account>) -> Result<(), ApiError> {
        let allowed = match (self, account) {
            (_, None) => false,
            (_, Some(account)) if !account.approved => false,
            (Caller::Device(_), Some(_)) => true,
            (Caller::AccessKey(_), Some(account)) if account.unrestricted_access => true,
            (Caller::AccessKey(Some(presented)), Some(account)) => {
                account.access_key.is_some_and(|stored| crate::crypto::constant_time_eq(&stored.0, &presented.0))
            }
            (Caller::AccessKey(None), Some(_)) => false,
            (Caller::ContactToken(Some(grant)), Some(account)) => grant.owner == account.aci,
            (Caller::ContactToken(None), Some(_)) => false,
        };
        if allowed { Ok(()) } else { Err(self.not_found()) }
    }
}

/// Checks a token and that its device is still active, in the incarnation the token names.
pub async fn authenticate(app: &App, token: &str) -> Result<AuthedDevice, ApiError> {
    let subject = tokens::verify(&app.keys.jwt_decoding, &app.tokens, token).ok_or(ApiError::Unauthorized)?;
    if !app.directory.get(subject.aci).await?.device_active(subject.device, subject.incarnation) {
        return Err(ApiError::Unauthorized);
    }
    Ok(AuthedDevice { aci: subject.aci, device: subject.device, incarnation: subject.incarnation })
}

/// Signs a token for one incarnation of a device; returns it with its lifetime in seconds.
pub fn issue_token(app: &App, subject: TokenSubject) -> Result<(String, u64), ApiError> {
    let ttl = app.config.token_ttl_seconds;
    let token = tokens::issue(&app.keys.jwt_encoding, subject, ttl)
        .map_err(|e| ApiError::Internal(format!("token signing failed: {e}")))?;
    Ok((token, ttl))
}
