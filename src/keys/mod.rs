//! Key distribution: identity, signed, last-resort and one-time prekeys for PQXDH.
//!
//! Invariants:
//! * every signed key was verified (XEdDSA, by the account's identity key) before it was stored;
//! * a one-time prekey is returned to at most one caller, ever (the pool's claim is atomic);
//! * a bundle always carries a Kyber key: a one-time one while the pool lasts, then the last-resort key.
//!
//! Never: holds or sees a private key; tells an access-key caller whether an account exists.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use crate::crypto::xeddsa;
use crate::domain::{Aci, DeviceId, EcPublicKey, KemPublicKey, Signature, encode_b64};
use crate::error::ApiError;
use crate::http::auth::{AuthedDevice, DeviceOrAccessKey};
use crate::http::extract::{Json, Path};
use crate::http::{App, ClientIp};
use crate::storage::{EcOneTimeKey, KeyUpload, SignedEcKey, SignedKemKey};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/keys", put(upload))
        .route("/v1/keys/count", get(count))
        .route("/v1/keys/{aci}/{device}", get(fetch))
}

/// Largest key id libsignal uses (24 bits).
const MAX_KEY_ID: i64 = 0xFF_FFFF;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SignedKeyJson {
    key_id: i64,
    public_key: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PreKeyJson {
    key_id: i64,
    public_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UploadRequest {
    #[serde(default)]
    signed_pre_key: Option<SignedKeyJson>,
    #[serde(default)]
    pq_last_resort_pre_key: Option<SignedKeyJson>,
    #[serde(default)]
    pre_keys: Option<Vec<PreKeyJson>>,
    #[serde(default)]
    pq_pre_keys: Option<Vec<SignedKeyJson>>,
}

fn key_id(value: i64) -> Result<u32, ApiError> {
    if (1..=MAX_KEY_ID).contains(&value) { Ok(value as u32) } else { Err(ApiError::InvalidKeyId) }
}

fn unique_ids(ids: impl Iterator<Item = i64>) -> Result<(), ApiError> {
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

/// Decodes a signed EC prekey (form only; see [`verify_ec`]).
pub(crate) fn parse_signed_ec(json: &SignedKeyJson) -> Result<SignedEcKey, ApiError> {
    Ok(SignedEcKey {
        key_id: key_id(json.key_id)?,
        public_key: EcPublicKey::from_b64("signedPreKey.publicKey", &json.public_key)?,
        signature: Signature::from_b64("signedPreKey.signature", &json.signature)?,
    })
}

pub(crate) fn verify_ec(identity: &EcPublicKey, key: &SignedEcKey) -> Result<(), ApiError> {
    verify(identity, "signedPreKey", &key.public_key.0, &key.signature)
}

/// Decodes a signed Kyber prekey (form only; see [`verify_kem`]).
pub(crate) fn parse_signed_kem(field: &'static str, json: &SignedKeyJson) -> Result<SignedKemKey, ApiError> {
    Ok(SignedKemKey {
        key_id: key_id(json.key_id)?,
        public_key: KemPublicKey::from_b64(field, &json.public_key)?,
        signature: Signature::from_b64(field, &json.signature)?,
    })
}

pub(crate) fn verify_kem(identity: &EcPublicKey, field: &'static str, key: &SignedKemKey) -> Result<(), ApiError> {
    verify(identity, field, &key.public_key.0, &key.signature)
}

fn signed_ec(identity: &EcPublicKey, json: &SignedKeyJson) -> Result<SignedEcKey, ApiError> {
    let key = parse_signed_ec(json)?;
    verify_ec(identity, &key)?;
    Ok(key)
}

fn signed_kem(identity: &EcPublicKey, field: &'static str, json: &SignedKeyJson) -> Result<SignedKemKey, ApiError> {
    let key = parse_signed_kem(field, json)?;
    verify_kem(identity, field, &key)?;
    Ok(key)
}

/// Checks a whole upload (limits, ids, encodings, every signature) before anything is stored.
fn validate_upload(req: &UploadRequest, identity: &EcPublicKey, max_keys: usize) -> Result<KeyUpload, ApiError> {
    for len in [req.pre_keys.as_ref().map(Vec::len), req.pq_pre_keys.as_ref().map(Vec::len)].into_iter().flatten() {
        if len > max_keys {
            return Err(ApiError::TooManyKeys(max_keys));
        }
    }
    if let Some(keys) = &req.pre_keys {
        unique_ids(keys.iter().map(|k| k.key_id))?;
    }
    if let Some(keys) = &req.pq_pre_keys {
        unique_ids(keys.iter().map(|k| k.key_id))?;
    }
    Ok(KeyUpload {
        signed_pre_key: req.signed_pre_key.as_ref().map(|k| signed_ec(identity, k)).transpose()?,
        pq_last_resort: req
            .pq_last_resort_pre_key
            .as_ref()
            .map(|k| signed_kem(identity, "pqLastResortPreKey", k))
            .transpose()?,
        pre_keys: req
            .pre_keys
            .as_ref()
            .map(|keys| {
                keys.iter()
                    .map(|k| {
                        Ok(EcOneTimeKey {
                            key_id: key_id(k.key_id)?,
                            public_key: EcPublicKey::from_b64("preKeys.publicKey", &k.public_key)?,
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .transpose()?,
        pq_pre_keys: req
            .pq_pre_keys
            .as_ref()
            .map(|keys| keys.iter().map(|k| signed_kem(identity, "pqPreKeys", k)).collect::<Result<Vec<_>, _>>())
            .transpose()?,
    })
}

async fn upload(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Json(req): Json<UploadRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let entry = app.directory.get(authed.aci).await?;
    let account = entry.account.as_ref().ok_or(ApiError::Unauthorized)?;
    let upload = validate_upload(&req, &account.identity_key, app.config.max_keys_per_upload)?;
    if upload.signed_pre_key.is_some() || upload.pq_last_resort.is_some() {
        app.storage
            .keys
            .put_signed(authed.aci, authed.device, upload.signed_pre_key.as_ref(), upload.pq_last_resort.as_ref())
            .await?;
        // The device may have just become able to receive messages.
        app.directory.invalidate(authed.aci).await?;
    }
    if upload.pre_keys.is_some() || upload.pq_pre_keys.is_some() {
        app.storage
            .pre_keys
            .replace(authed.aci, authed.device, upload.pre_keys.as_deref(), upload.pq_pre_keys.as_deref())
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CountResponse {
    count: u32,
    pq_count: u32,
}

async fn count(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let (count, pq_count) = app.storage.pre_keys.counts(authed.aci, authed.device).await?;
    Ok(axum::Json(CountResponse { count, pq_count }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedKeyView {
    key_id: u32,
    public_key: String,
    signature: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PreKeyView {
    key_id: u32,
    public_key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceBundle {
    device_id: u32,
    registration_id: u16,
    signed_pre_key: SignedKeyView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pre_key: Option<PreKeyView>,
    pq_pre_key: SignedKeyView,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleResponse {
    identity_key: String,
    devices: Vec<DeviceBundle>,
}

fn kem_view(key: &SignedKemKey) -> SignedKeyView {
    SignedKeyView {
        key_id: key.key_id,
        public_key: encode_b64(&key.public_key.0),
        signature: encode_b64(&key.signature.0),
    }
}

async fn fetch(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    requester: DeviceOrAccessKey,
    Path((aci, device)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let target = Aci::parse(&aci);
    let only = match device.as_str() {
        "*" => None,
        other => Some(DeviceId::parse(other).ok_or(ApiError::InvalidPath)?),
    };
    let requester_id = match &requester {
        DeviceOrAccessKey::Device(d) => format!("{}.{}", d.aci, d.device),
        DeviceOrAccessKey::AccessKey(_) => format!("ip:{ip}"),
    };
    app.limiter
        .check("prekey_fetch_requester", requester_id.as_bytes(), &app.config.limit_prekey_fetch_per_requester)
        .await?;
    let not_found = match requester {
        DeviceOrAccessKey::Device(_) => ApiError::NotFound,
        DeviceOrAccessKey::AccessKey(_) => ApiError::Unauthorized,
    };
    let target = match target {
        Some(aci) => aci,
        None if matches!(requester, DeviceOrAccessKey::Device(_)) => return Err(ApiError::InvalidPath),
        None => return Err(ApiError::Unauthorized),
    };
    let entry = app.directory.get(target).await?;
    let account = entry.account.clone();
    if let DeviceOrAccessKey::AccessKey(presented) = &requester
        && !DeviceOrAccessKey::access_allowed(presented, account.as_ref())
    {
        return Err(ApiError::Unauthorized);
    }
    let Some(account) = account.filter(|a| a.approved) else { return Err(not_found) };
    // Per requester and target, never per target alone: a target-wide bucket would let anyone deny everyone
    // a session with the target. Draining the one-time keys stays possible (at the requester's cost); then
    // callers get the last-resort key, as with Signal.
    let pair = format!("{requester_id}>{target}");
    app.limiter
        .check("prekey_fetch_requester_target", pair.as_bytes(), &app.config.limit_prekey_fetch_per_requester_target)
        .await?;

    let devices: Vec<_> = entry.keys.iter().filter(|k| only.is_none_or(|d| d == k.device)).cloned().collect();
    if devices.is_empty() {
        return Err(not_found);
    }
    let mut bundles = Vec::with_capacity(devices.len());
    for keys in devices {
        let (ec, kem) = app.storage.pre_keys.claim(target, keys.device).await?;
        metrics::counter!("sealpost_prekey_claims_total", "ec" => if ec.is_some() { "one_time" } else { "none" },
            "kem" => if kem.is_some() { "one_time" } else { "last_resort" })
        .increment(1);
        bundles.push(DeviceBundle {
            device_id: keys.device.0,
            registration_id: keys.registration_id.0,
            signed_pre_key: SignedKeyView {
                key_id: keys.signed_pre_key.key_id,
                public_key: encode_b64(&keys.signed_pre_key.public_key.0),
                signature: encode_b64(&keys.signed_pre_key.signature.0),
            },
            pre_key: ec.map(|k| PreKeyView { key_id: k.key_id, public_key: encode_b64(&k.public_key.0) }),
            pq_pre_key: kem_view(kem.as_ref().unwrap_or(&keys.pq_last_resort)),
        });
    }
    Ok(axum::Json(BundleResponse { identity_key: encode_b64(&account.identity_key.0), devices: bundles }))
}
