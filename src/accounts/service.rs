//! Accounts and devices, the rules: who may register, how a device proves itself for a token, how a device
//! or a whole account goes away. Called by the HTTP surface, the CLI and other capabilities.

use std::net::IpAddr;

use base64::Engine;

use crate::access::AuthedDevice;
use crate::access::tokens::TokenSubject;
use crate::config::RegistrationPolicy;
use crate::crypto::{constant_time_eq, hash_secret, new_salt, random_bytes, sha256};
use crate::domain::{AccessKey, Aci, DeviceId, DeviceSecret, EcPublicKey, Incarnation, RegistrationId};
use crate::domain::{now_millis, round_to_day};
use crate::error::ApiError;
use crate::state::App;
use crate::storage::{BusEvent, CreateAccountError, Device, NewAccount, Recipient, Storage};

/// A validated registration.
pub struct Registration {
    pub identity_key: EcPublicKey,
    pub registration_id: RegistrationId,
    pub secret: DeviceSecret,
    pub invite_code: Option<String>,
}

/// Registers an account and its primary device (1); returns the new aci.
pub async fn register(app: &App, ip: IpAddr, registration: Registration) -> Result<Aci, ApiError> {
    app.limiter.check("registration_ip", ip.to_string().as_bytes(), &app.config.limit_registration_per_ip).await?;
    let policy = app.config.registration_policy;
    let invite = match (policy, registration.invite_code.as_deref()) {
        (RegistrationPolicy::Invite, None) => return Err(ApiError::InviteRequired),
        (RegistrationPolicy::Invite, Some(code)) => Some(sha256(code.trim().as_bytes())),
        _ => None,
    };
    let salt = new_salt();
    let now = now_millis();
    let account = NewAccount {
        aci: Aci::random(),
        identity_key: registration.identity_key,
        registration_id: registration.registration_id,
        incarnation: Incarnation::random(),
        secret_salt: salt,
        secret_hash: hash_secret(&salt, &registration.secret.0),
        approved: policy != RegistrationPolicy::Approval,
        created_at: now,
    };
    match app.storage.accounts.create_account(&account, invite, now).await? {
        Ok(()) => {}
        Err(CreateAccountError::InvalidInvite) => return Err(ApiError::InvalidInvite),
    }
    metrics::counter!("sealpost_registrations_total").increment(1);
    Ok(account.aci)
}

/// Exchanges a device's secret for a token; returns it with its lifetime in seconds. `credentials`: the
/// device and secret the caller claims, `None` when they did not parse (refused like a wrong secret).
pub async fn issue_token(
    app: &App,
    ip: IpAddr,
    credentials: Option<(Aci, DeviceId, Vec<u8>)>,
) -> Result<(String, u64), ApiError> {
    app.limiter.check("auth_ip", ip.to_string().as_bytes(), &app.config.limit_auth_per_ip).await?;
    let (aci, device, secret) = credentials.ok_or(ApiError::Unauthorized)?;
    let stored = app.storage.accounts.device_credentials(aci, device).await?;
    // Hash even for an unknown device so the answer takes as long as for a wrong secret.
    let (salt, expected, approved, incarnation) = match &stored {
        Some(c) => (c.secret_salt.as_slice(), c.secret_hash.as_slice(), c.approved, c.incarnation),
        None => (&[0u8; 16][..], &[0u8; 32][..], false, Incarnation::LEGACY),
    };
    let matches = constant_time_eq(&hash_secret(salt, &secret), expected);
    if stored.is_none() || !matches {
        return Err(ApiError::Unauthorized);
    }
    if !approved {
        return Err(ApiError::PendingApproval);
    }
    app.storage.accounts.touch_device(aci, device, round_to_day(now_millis())).await?;
    crate::access::issue_token(app, TokenSubject { aci, device, incarnation })
}

pub async fn devices(app: &App, aci: Aci) -> Result<Vec<Device>, ApiError> {
    Ok(app.storage.accounts.devices(aci).await?)
}

/// The primary unlinks one of the other devices.
pub async fn unlink(app: &App, by: AuthedDevice, target: DeviceId) -> Result<(), ApiError> {
    // The primary leaves by deleting the account; removing it alone would orphan the others.
    if !by.device.is_primary() || target.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    remove_device(app, by.aci, target).await
}

/// Removes a device and everything it owns (durable record, keys, pools, queue). After this returns, its
/// tokens are refused and its socket is closed with 4401, on every instance.
///
/// Order matters: the one-time keys and the queue go first, so a failure there leaves the device intact
/// and the call can simply be retried (nothing is orphaned in Redis); then the durable record, which is
/// what refuses its tokens; then every instance forgets it and its sockets are closed.
pub async fn remove_device(app: &App, aci: Aci, device: DeviceId) -> Result<(), ApiError> {
    let devices = app.storage.accounts.devices(aci).await?;
    let Some(found) = devices.iter().find(|d| d.id == device) else {
        return Err(ApiError::NotFound);
    };
    clear_device_state(&app.storage, aci, Recipient { device, incarnation: found.incarnation }).await?;
    let removed = app.storage.accounts.delete_device(aci, device, now_millis()).await?;
    app.directory.invalidate(aci).await?;
    if !removed {
        return Err(ApiError::NotFound);
    }
    app.storage.bus.publish(aci, device, BusEvent::Revoke).await?;
    Ok(())
}

/// Deletes a device's one-time prekeys and queued envelopes.
async fn clear_device_state(storage: &Storage, aci: Aci, device: Recipient) -> Result<(), ApiError> {
    storage.pre_keys.remove_device(aci, device.device).await?;
    storage.queue.remove_device(aci, device).await?;
    Ok(())
}

/// The primary deletes the account and everything of it; every device loses access at once.
pub async fn delete_account(app: &App, by: AuthedDevice) -> Result<(), ApiError> {
    if !by.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    remove_account(app, by.aci).await
}

/// Deletes an account and everything of it (its primary's request, or the inactive-device sweep); every
/// device loses access at once. `NotFound` when there is no such account.
pub async fn remove_account(app: &App, aci: Aci) -> Result<(), ApiError> {
    // Same order as for one device: ephemeral state, then the durable record, then the sockets.
    let devices = app.storage.accounts.devices(aci).await?;
    for device in &devices {
        clear_device_state(&app.storage, aci, Recipient { device: device.id, incarnation: device.incarnation }).await?;
    }
    app.storage.queue.remove_account(aci).await?;
    let removed = app.storage.accounts.delete_account(aci).await?;
    app.directory.invalidate(aci).await?;
    if !removed {
        return Err(ApiError::NotFound);
    }
    for device in &devices {
        app.storage.bus.publish(aci, device.id, BusEvent::Revoke).await?;
    }
    metrics::counter!("sealpost_account_deletions_total").increment(1);
    Ok(())
}

/// Sets who may reach the account anonymously: holders of `key`, or anyone.
pub async fn set_access(app: &App, aci: Aci, key: Option<AccessKey>, unrestricted: bool) -> Result<(), ApiError> {
    app.storage.accounts.set_access(aci, key, unrestricted).await?;
    app.directory.invalidate(aci).await?;
    Ok(())
}

/// Creates a single-use invite code valid for `ttl_seconds`; only its hash is stored.
pub async fn create_invite(storage: &Storage, ttl_seconds: u64) -> Result<String, ApiError> {
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<18>());
    let expires_at = now_millis() + (ttl_seconds as i64).saturating_mul(1000);
    storage.accounts.create_invite(sha256(code.as_bytes()), expires_at).await?;
    Ok(code)
}
