//! The API's error type: one variant per cause, each with a stable `code` and an HTTP status.
//!
//! Bodies are `{"code": "...", "message": "..."}`. Messages never contain an account id, device id, key,
//! token or IP; internal causes are logged (without such values) and shown to the client as a generic line.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::DomainError;
use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body does not match the expected shape: {0}")]
    InvalidBody(String),
    #[error("request body has a field this endpoint does not accept: {0}")]
    UnknownField(String),
    #[error("request body must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("request body is too large")]
    PayloadTooLarge,
    /// A value that does not parse (base64, a key's length or type, a registration id, a secret).
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("keyId must be in 1..=16777215")]
    InvalidKeyId,
    #[error("a key list holds more keys than allowed ({0})")]
    TooManyKeys(usize),
    #[error("a key id appears twice in one list")]
    DuplicateKeyId,
    #[error("signature on `{0}` does not verify against the account's identity key")]
    InvalidSignature(&'static str),
    #[error("path parameter is not valid")]
    InvalidPath,
    #[error("query string is not valid")]
    InvalidQuery,
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("this server only registers holders of an invite code")]
    InviteRequired,
    #[error("invite code is unknown, used or expired")]
    InvalidInvite,
    #[error("account is waiting for an operator's approval")]
    PendingApproval,
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("only the primary device may do this")]
    PrimaryDeviceRequired,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("cross-origin requests from this origin are not allowed")]
    CorsOriginRefused,
    #[error("too many requests")]
    RateLimited(Duration),
    #[error("envelope content is larger than allowed")]
    MessageTooLarge,
    #[error("envelope type is not one of 1, 3, 6, 8 (sealed sender: only 6)")]
    InvalidMessageType,
    #[error("ttlSeconds must be between 1 and the server's maximum")]
    InvalidTtl,
    #[error("registration ids do not match the recipient's current devices")]
    StaleDevices(Vec<u32>),
    #[error("the messages do not address exactly the recipient's current devices")]
    MismatchedDevices { missing: Vec<u32>, extra: Vec<u32> },
    #[error("registration ids do not match some recipients' current devices")]
    StaleRecipients(Vec<RecipientDevices>),
    #[error("the message does not address exactly some recipients' current devices")]
    MismatchedRecipients(Vec<RecipientDevices>),
    #[error("not a multi-recipient sealed-sender message: {0}")]
    InvalidMultiRecipient(String),
    #[error("header {0} is missing or not valid")]
    InvalidHeader(&'static str),
    #[error("the attachment is larger than allowed")]
    AttachmentTooLarge,
    #[error("the upload credential is unknown, wrong, expired or already used")]
    InvalidUploadCredential,
    #[error("Upload-Offset is not where the upload stands; resume from the Upload-Offset of this answer")]
    UploadOffsetMismatch(u64),
    #[error("only tus 1.0.0 is supported")]
    UnsupportedTusVersion,
    #[error("the range is outside the attachment")]
    RangeNotSatisfiable(u64),
    #[error("the recipient's queue is full")]
    QueueFull,
    #[error("verification code is unknown, used or expired")]
    InvalidVerificationCode,
    #[error("the account already has the most devices allowed")]
    TooManyDevices,
    #[error("the account already has the most live contact tokens allowed")]
    TooManyContactTokens,
    #[error("the request collides with the stored state; retry")]
    Conflict,
    #[error("this endpoint is a WebSocket: send an upgrade request")]
    UpgradeRequired,
    #[error("push endpoint refused: {0}")]
    PushEndpoint(#[from] crate::push::sender::EndpointError),
    #[error("keys.p256dh must be an uncompressed P-256 point (65 bytes) and keys.auth 16 bytes, in base64url")]
    InvalidPushKeys,
    #[error("a storage service is unavailable; retry shortly")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_devices: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_devices: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_devices: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipients: Option<&'a [RecipientDevices]>,
}

/// One recipient's device problems in a multi-recipient send (`recipients` of a 409 or 410).
#[derive(Debug, Serialize)]
pub struct RecipientDevices {
    uuid: String,
    devices: DeviceProblems,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceProblems {
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_devices: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_devices: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_devices: Option<Vec<u32>>,
}

impl RecipientDevices {
    pub fn stale(aci: crate::domain::Aci, stale: Vec<u32>) -> Self {
        let devices = DeviceProblems { missing_devices: None, extra_devices: None, stale_devices: Some(stale) };
        RecipientDevices { uuid: aci.to_string(), devices }
    }

    pub fn mismatched(aci: crate::domain::Aci, missing: Vec<u32>, extra: Vec<u32>) -> Self {
        let devices =
            DeviceProblems { missing_devices: Some(missing), extra_devices: Some(extra), stale_devices: None };
        RecipientDevices { uuid: aci.to_string(), devices }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson(_) | InvalidBody(_) | UnknownField(_) | Invalid(_) | InvalidKeyId | TooManyKeys(_)
            | DuplicateKeyId | InvalidPath | InvalidQuery | PushEndpoint(_) | InvalidPushKeys => {
                StatusCode::BAD_REQUEST
            }
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidSignature(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InviteRequired | InvalidInvite | PendingApproval | PrimaryDeviceRequired => StatusCode::FORBIDDEN,
            Unauthorized => StatusCode::UNAUTHORIZED,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            CorsOriginRefused => StatusCode::FORBIDDEN,
            RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidMessageType | InvalidTtl | InvalidMultiRecipient(_) | InvalidHeader(_) => StatusCode::BAD_REQUEST,
            AttachmentTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidUploadCredential => StatusCode::FORBIDDEN,
            UploadOffsetMismatch(_) => StatusCode::CONFLICT,
            UnsupportedTusVersion => StatusCode::PRECONDITION_FAILED,
            RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            StaleDevices(_) | StaleRecipients(_) => StatusCode::GONE,
            MismatchedDevices { .. } | MismatchedRecipients(_) => StatusCode::CONFLICT,
            QueueFull => StatusCode::INSUFFICIENT_STORAGE,
            InvalidVerificationCode => StatusCode::FORBIDDEN,
            TooManyDevices | TooManyContactTokens | Conflict => StatusCode::CONFLICT,
            UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable reason. Clients switch on this, so never rename one.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MalformedJson(_) => "malformed_json",
            InvalidBody(_) => "invalid_body",
            UnknownField(_) => "unknown_field",
            UnsupportedMediaType(_) => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            Invalid(err) => err.code(),
            InvalidKeyId => "invalid_key_id",
            TooManyKeys(_) => "too_many_keys",
            DuplicateKeyId => "duplicate_key_id",
            InvalidSignature(_) => "invalid_signature",
            InvalidPath => "invalid_path",
            InvalidQuery => "invalid_query",
            RequestTimeout => "request_timeout",
            InviteRequired => "invite_required",
            InvalidInvite => "invalid_invite",
            PendingApproval => "pending_approval",
            Unauthorized => "unauthorized",
            PrimaryDeviceRequired => "primary_device_required",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            CorsOriginRefused => "cors_origin_refused",
            RateLimited(_) => "rate_limited",
            MessageTooLarge => "message_too_large",
            InvalidMessageType => "invalid_message_type",
            InvalidTtl => "invalid_ttl",
            StaleDevices(_) | StaleRecipients(_) => "stale_devices",
            MismatchedDevices { .. } | MismatchedRecipients(_) => "mismatched_devices",
            InvalidMultiRecipient(_) => "invalid_multi_recipient_message",
            InvalidHeader(_) => "invalid_header",
            AttachmentTooLarge => "attachment_too_large",
            InvalidUploadCredential => "invalid_upload_credential",
            UploadOffsetMismatch(_) => "upload_offset_mismatch",
            UnsupportedTusVersion => "unsupported_tus_version",
            RangeNotSatisfiable(_) => "range_not_satisfiable",
            QueueFull => "queue_full",
            InvalidVerificationCode => "invalid_verification_code",
            TooManyDevices => "too_many_devices",
            TooManyContactTokens => "too_many_contact_tokens",
            Conflict => "conflict",
            UpgradeRequired => "websocket_upgrade_required",
            PushEndpoint(err) => err.code(),
            InvalidPushKeys => "invalid_push_keys",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal_error",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable { .. } => ApiError::Unavailable(err.to_string()),
            StoreError::Conflict(_) => ApiError::Conflict,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Seconds a client is told to wait after a 503 `unavailable`: about how long a store takes to come back
/// from a restart or failover, and short enough that queued sends are not held up for long.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 2;

/// The resumable-upload protocol version attachments speak (tus).
pub const TUS_VERSION: &str = "1.0.0";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(detail) => {
                // The detail comes from the storage layer, whose errors carry no user values.
                tracing::error!(error = %detail, "request failed");
                "internal error".to_owned()
            }
            // Logged once per outage by the store's health tracking, not once per request.
            ApiError::Unavailable(_) => self.to_string(),
            other => other.to_string(),
        };
        let mut body = ErrorBody {
            code: self.code(),
            message,
            stale_devices: None,
            missing_devices: None,
            extra_devices: None,
            recipients: None,
        };
        match &self {
            ApiError::StaleDevices(stale) => body.stale_devices = Some(stale),
            ApiError::MismatchedDevices { missing, extra } => {
                body.missing_devices = Some(missing);
                body.extra_devices = Some(extra);
            }
            ApiError::StaleRecipients(recipients) | ApiError::MismatchedRecipients(recipients) => {
                body.recipients = Some(recipients)
            }
            _ => {}
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        let retry_after = match &self {
            ApiError::RateLimited(retry) => Some(retry.as_secs() + u64::from(retry.subsec_nanos() > 0)),
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECONDS),
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        // What a tus client or a range request needs to carry on.
        let headers = response.headers_mut();
        match &self {
            ApiError::UploadOffsetMismatch(offset) => {
                headers.insert("upload-offset", HeaderValue::from(*offset));
            }
            ApiError::UnsupportedTusVersion => {
                headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
            }
            ApiError::RangeNotSatisfiable(length) => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
