//! Key distribution, the rules: every signed key verifies against the account's identity key before it is
//! stored; a bundle fetch claims at most one one-time key of each kind per device, atomically, and falls
//! back to the last-resort Kyber key; fetches are rate limited per requester and per requester and target.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::access::{AuthedDevice, Caller};
use crate::crypto::xeddsa;
use crate::domain::{Aci, DeviceId, EcPublicKey, Signature};
use crate::error::ApiError;
use crate::state::App;
use crate::storage::{DeviceKeys, EcOneTimeKey, KeyUpload, SignedEcKey, SignedKemKey};

/// Largest key id libsignal uses (24 bits).
const MAX_KEY_ID: i64 = 0xFF_FFFF;

pub fn key_id(value: i64) -> Result<u32, ApiError> {
    if (1..=MAX_KEY_ID).contains(&value) { Ok(value as u32) } else { Err(ApiError::InvalidKeyId) }
}

/// No key id twice in one list.
pub fn unique_ids(ids: impl Iterator<Item = u32>) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(ApiError::DuplicateKeyId);
        }
    }
    Ok(())
}

fn verify(identity: &EcPublicKey, field: &'static str, message: &[u8], signature: &Signature) -> Result<(), ApiError> {
    if xeddsa::verify(&identity.montgomery(), message, &signature.0) {
        Ok(())
    } else {
        Err(ApiError::InvalidSignature(field))
    }
}

pub fn verify_ec(identity: &EcPublicKey, key: &SignedEcKey) -> Result<(), ApiError> {
    verify(identity, "signedPreKey", &key.public_key.0, &key.signature)
}

pub fn verify_kem(identity: &EcPublicKey, field: &'static str, key: &SignedKemKey) -> Result<(), ApiError> {
    verify(identity, field, &key.public_key.0, &key.signature)
}

/// Checks an upload's limits and every signature (the form was checked where it was parsed).
fn check_upload(upload: &KeyUpload, identity: &EcPublicKey, max_keys: usize) -> Result<(), ApiError> {
    let lengths = [upload.pre_keys.as_ref().map(Vec::len), upload.pq_pre_keys.as_ref().map(Vec::len)];
    if lengths.into_iter().flatten().any(|len| len > max_keys) {
        return Err(ApiError::TooManyKeys(max_keys));
    }
    if let Some(keys) = &upload.pre_keys {
        unique_ids(keys.iter().map(|k| k.key_id))?;
    }
    if let Some(keys) = &upload.pq_pre_keys {
        unique_ids(keys.iter().map(|k| k.key_id))?;
    }
    if let Some(key) = &upload.signed_pre_key {
        verify_ec(identity, key)?;
    }
    if let Some(key) = &upload.pq_last_resort {
        verify_kem(identity, "pqLastResortPreKey", key)?;
    }
    for key in upload.pq_pre_keys.iter().flatten() {
        verify_kem(identity, "pqPreKeys", key)?;
    }
    Ok(())
}

/// Stores a device's upload, all checked before anything is stored; each part present replaces what the
/// device had of that kind.
pub async fn upload(app: &App, device: AuthedDevice, upload: KeyUpload) -> Result<(), ApiError> {
    let entry = app.directory.get(device.aci).await?;
    let account = entry.account.as_ref().ok_or(ApiError::Unauthorized)?;
    check_upload(&upload, &account.identity_key, app.config.max_keys_per_upload)?;
    if upload.signed_pre_key.is_some() || upload.pq_last_resort.is_some() {
        let (signed, last_resort) = (upload.signed_pre_key.as_ref(), upload.pq_last_resort.as_ref());
        app.storage.keys.put_signed(device.aci, device.device, signed, last_resort).await?;
        // The device may have just become able to receive messages.
        app.directory.invalidate(device.aci).await?;
    }
    if upload.pre_keys.is_some() || upload.pq_pre_keys.is_some() {
        let (ec, kem) = (upload.pre_keys.as_deref(), upload.pq_pre_keys.as_deref());
        app.storage.pre_keys.replace(device.aci, device.device, ec, kem).await?;
    }
    Ok(())
}

/// Unused one-time keys of a device: (EC, Kyber).
pub async fn counts(app: &App, device: AuthedDevice) -> Result<(u32, u32), ApiError> {
    Ok(app.storage.pre_keys.counts(device.aci, device.device).await?)
}

/// One device's bundle as handed out.
pub struct Bundle {
    pub keys: DeviceKeys,
    pub one_time: Option<EcOneTimeKey>,
    /// A one-time Kyber key while the pool lasts, else the last-resort key.
    pub kem: SignedKemKey,
}

/// The identity key and one bundle per device (all, or `only`) of `target`, for `caller`. `target` is
/// `None` when it did not parse: a device is told so, an anonymous caller gets the same 401 as always.
pub async fn fetch(
    app: &App,
    caller: &Caller,
    ip: IpAddr,
    target: Option<Aci>,
    only: Option<DeviceId>,
) -> Result<(EcPublicKey, Vec<Bundle>), ApiError> {
    let requester = caller.bucket_identity(ip);
    let per_requester = ("prekey_fetch_requester", requester.as_bytes(), &app.config.limit_prekey_fetch_per_requester);
    let Some(target) = target else {
        app.limiter.check(per_requester.0, per_requester.1, per_requester.2).await?;
        return Err(if let Caller::Device(_) = caller { ApiError::InvalidPath } else { caller.not_found() });
    };
    // Per requester and target, never per target alone: a target-wide bucket would let anyone deny everyone
    // a session with the target. Draining the one-time keys stays possible (at the requester's cost); then
    // callers get the last-resort key, as with Signal. Both buckets are taken in one call to the store,
    // before the target is looked up.
    let pair = format!("{requester}>{target}");
    let limit = &app.config.limit_prekey_fetch_per_requester_target;
    app.limiter.check_two(per_requester, ("prekey_fetch_requester_target", pair.as_bytes(), limit)).await?;
    let entry = app.directory.get(target).await?;
    caller.may_reach(entry.account.as_ref())?;
    // A contact token counts a use at its requester's first bundle fetch, and is refused to new
    // requesters once it has none left.
    if let Caller::ContactToken(Some(grant)) = caller
        && !crate::contacts::service::count_first_contact(app, grant, ip).await?
    {
        return Err(caller.not_found());
    }
    let identity = entry.account.as_ref().map(|a| a.identity_key).ok_or_else(|| caller.not_found())?;
    let keys = app.directory.keys(target).await?;
    let devices: Vec<_> = keys.iter().filter(|k| only.is_none_or(|d| d == k.device)).cloned().collect();
    if devices.is_empty() {
        return Err(caller.not_found());
    }
    let mut bundles = Vec::with_capacity(devices.len());
    for keys in devices {
        let (one_time, kem) = app.storage.pre_keys.claim(target, keys.device).await?;
        metrics::counter!("sealpost_prekey_claims_total", "ec" => if one_time.is_some() { "one_time" } else { "none" },
            "kem" => if kem.is_some() { "one_time" } else { "last_resort" })
        .increment(1);
        let kem = kem.unwrap_or_else(|| keys.pq_last_resort.clone());
        bundles.push(Bundle { keys, one_time, kem });
    }
    Ok((identity, bundles))
}
