//! Linking a new device by QR code, as Signal does, the rules.
//!
//! 1. The new device opens `GET /v1/websocket/provisioning` and receives a random address; it shows a QR
//!    code with that address and an ephemeral public key of its own (see docs/api.md for the URI).
//! 2. The primary scans it, asks for a link code ([`link_code`]) and relays ([`relay`]) a message it
//!    encrypted to the ephemeral key: the identity key pair, the aci and the code. The server never parses
//!    it.
//! 3. The new device joins ([`link`]) with the code, its own secret and its signed keys.
//!
//! Invariants: a link code works once and expires (default 10 minutes); it is spent as soon as it is
//! looked up, so a failing link attempt cannot be retried with the same code; an account never exceeds
//! `max_devices`; a new device's id is not one a removed device's token could still name.

use std::net::IpAddr;

use base64::Engine;

use crate::access::AuthedDevice;
use crate::crypto::{hash_secret, new_salt, random_bytes, sha256};
use crate::domain::{Aci, DeviceId, DeviceSecret, DeviceSlots, Incarnation, RegistrationId, is_live, now_millis};
use crate::error::ApiError;
use crate::keys::service::{verify_ec, verify_kem};
use crate::state::App;
use crate::storage::{AddDeviceError, NewDevice, SignedEcKey, SignedKemKey};

/// A fresh link code and when it expires.
pub async fn link_code(app: &App, by: AuthedDevice) -> Result<(String, i64), ApiError> {
    if !by.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    app.limiter.check("link_codes_account", by.aci.0.as_bytes(), &app.config.limit_link_codes_per_account).await?;
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<15>());
    let expires_at = now_millis() + (app.config.link_code_ttl_seconds as i64).saturating_mul(1000);
    app.storage.accounts.create_link_code(sha256(code.as_bytes()), by.aci, expires_at).await?;
    Ok((code, expires_at))
}

/// Hands the primary's encrypted provisioning message to the socket holding `address`, on any instance.
pub async fn relay(app: &App, by: AuthedDevice, address: &str, body: Vec<u8>) -> Result<(), ApiError> {
    if !by.device.is_primary() {
        return Err(ApiError::PrimaryDeviceRequired);
    }
    if body.len() > app.config.max_provisioning_message_bytes {
        return Err(ApiError::MessageTooLarge);
    }
    if address.len() > 64 || !app.storage.bus.publish_provisioning(address, body).await? {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

/// A new device's request to join, its form already checked.
pub struct LinkRequest {
    pub verification_code: String,
    pub secret: DeviceSecret,
    pub registration_id: RegistrationId,
    pub name: Option<Vec<u8>>,
    pub signed_pre_key: SignedEcKey,
    pub pq_last_resort: SignedKemKey,
}

/// Adds the device to the account the code belongs to; returns the account and the new device's id.
pub async fn link(app: &App, ip: IpAddr, request: LinkRequest) -> Result<(Aci, DeviceId), ApiError> {
    app.limiter.check("link_ip", ip.to_string().as_bytes(), &app.config.limit_link_per_ip).await?;
    if request.name.as_ref().is_some_and(|n| n.len() > app.config.max_device_name_bytes) {
        return Err(ApiError::InvalidBody("name is longer than allowed".into()));
    }
    // The code is spent before the signatures are checked, so a wrong key (a guessing attempt) burns it.
    let now = now_millis();
    let code = sha256(request.verification_code.trim().as_bytes());
    let aci = match app.storage.accounts.consume_link_code(code).await? {
        Some((aci, expires_at)) if is_live(expires_at, now) => aci,
        _ => return Err(ApiError::InvalidVerificationCode),
    };
    let account = app.storage.accounts.account(aci).await?.ok_or(ApiError::InvalidVerificationCode)?;
    verify_ec(&account.identity_key, &request.signed_pre_key)?;
    verify_kem(&account.identity_key, "pqLastResortPreKey", &request.pq_last_resort)?;

    let salt = new_salt();
    let device = NewDevice {
        registration_id: request.registration_id,
        incarnation: Incarnation::random(),
        secret_salt: salt,
        secret_hash: hash_secret(&salt, &request.secret.0),
        name: request.name,
        created_at: now,
    };
    let id = match app.storage.accounts.add_device(aci, &device, &device_slots(&app.config, now)).await? {
        Ok(id) => id,
        Err(AddDeviceError::TooManyDevices) => return Err(ApiError::TooManyDevices),
        Err(AddDeviceError::NoAccount) => return Err(ApiError::InvalidVerificationCode),
    };
    app.storage.keys.put_signed(aci, id, Some(&request.signed_pre_key), Some(&request.pq_last_resort)).await?;
    app.directory.invalidate(aci).await?;
    metrics::counter!("sealpost_devices_linked_total").increment(1);
    Ok((aci, id))
}

/// How new devices get their ids under this configuration: an id given up less than a token's lifetime
/// ago is not handed out again yet, as a token of the device that had it could still be accepted (tokens
/// name their incarnation too, so this is a second line of defence).
pub fn device_slots(config: &crate::config::Config, now: i64) -> DeviceSlots {
    let token_life_ms = (config.token_ttl_seconds + crate::access::tokens::TOKEN_LEEWAY_SECONDS) * 1000;
    DeviceSlots { max_devices: config.max_devices, reuse_after: now - token_life_ms as i64 }
}
