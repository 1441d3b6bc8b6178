//! The HTTP surface of key distribution: `PUT /v1/keys`, `GET /v1/keys/count`, `GET /v1/keys/{aci}/{device}`.
//! Also the JSON form of a signed key, which linking a device takes too.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use super::service::{self, key_id};
use crate::access::{AuthedDevice, Caller};
use crate::domain::{Aci, DeviceId, EcPublicKey, KemPublicKey, Signature, encode_b64};
use crate::error::ApiError;
use crate::http::ClientIp;
use crate::http::extract::{Json, Path};
use crate::state::App;
use crate::storage::{EcOneTimeKey, KeyUpload, SignedEcKey, SignedKemKey};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/keys", put(upload))
        .route("/v1/keys/count", get(count))
        .route("/v1/keys/{aci}/{device}", get(fetch))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedKeyJson {
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

/// Decodes a signed EC prekey (its form; the signature is checked by the service).
pub fn parse_signed_ec(json: &SignedKeyJson) -> Result<SignedEcKey, ApiError> {
    Ok(SignedEcKey {
        key_id: key_id(json.key_id)?,
        public_key: EcPublicKey::from_b64("signedPreKey.publicKey", &json.public_key)?,
        signature: Signature::from_b64("signedPreKey.signature", &json.signature)?,
    })
}

/// Decodes a signed Kyber prekey (its form; the signature is checked by the service).
pub fn parse_signed_kem(field: &'static str, json: &SignedKeyJson) -> Result<SignedKemKey, ApiError> {
    Ok(SignedKemKey {
        key_id: key_id(json.key_id)?,
        public_key: KemPublicKey::from_b64(field, &json.public_key)?,
        signature: Signature::from_b64(field, &json.signature)?,
    })
}

fn parse_upload(req: &UploadRequest) -> Result<KeyUpload, ApiError> {
    let one_time = |k: &PreKeyJson| {
        Ok::<_, ApiError>(EcOneTimeKey {
            key_id: key_id(k.key_id)?,
            public_key: EcPublicKey::from_b64("preKeys.publicKey", &k.public_key)?,
        })
    };
    Ok(KeyUpload {
        signed_pre_key: req.signed_pre_key.as_ref().map(parse_signed_ec).transpose()?,
        pq_last_resort: req
            .pq_last_resort_pre_key
            .as_ref()
            .map(|k| parse_signed_kem("pqLastResortPreKey", k))
            .transpose()?,
        pre_keys: req.pre_keys.as_ref().map(|keys| keys.iter().map(one_time).collect()).transpose()?,
        pq_pre_keys: req
            .pq_pre_keys
            .as_ref()
            .map(|keys| keys.iter().map(|k| parse_signed_kem("pqPreKeys", k)).collect())
            .transpose()?,
    })
}

async fn upload(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Json(req): Json<UploadRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let upload = parse_upload(&req)?;
    service::upload(&app, authed, upload).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CountResponse {
    count: u32,
    pq_count: u32,
}

async fn count(State(app): State<Arc<App>>, authed: AuthedDevice) -> Result<impl IntoResponse, ApiError> {
    let (count, pq_count) = service::counts(&app, authed).await?;
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

async fn fetch(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    caller: Caller,
    Path((aci, device)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let only = match device.as_str() {
        "*" => None,
        other => Some(DeviceId::parse(other).ok_or(ApiError::InvalidPath)?),
    };
    let (identity, bundles) = service::fetch(&app, &caller, ip, Aci::parse(&aci), only).await?;
    let devices = bundles
        .into_iter()
        .map(|bundle| DeviceBundle {
            device_id: bundle.keys.device.0,
            registration_id: bundle.keys.registration_id.0,
            signed_pre_key: SignedKeyView {
                key_id: bundle.keys.signed_pre_key.key_id,
                public_key: encode_b64(&bundle.keys.signed_pre_key.public_key.0),
                signature: encode_b64(&bundle.keys.signed_pre_key.signature.0),
            },
            pre_key: bundle.one_time.map(|k| PreKeyView { key_id: k.key_id, public_key: encode_b64(&k.public_key.0) }),
            pq_pre_key: SignedKeyView {
                key_id: bundle.kem.key_id,
                public_key: encode_b64(&bundle.kem.public_key.0),
                signature: encode_b64(&bundle.kem.signature.0),
            },
        })
        .collect();
    Ok(axum::Json(BundleResponse { identity_key: encode_b64(&identity.0), devices }))
}
