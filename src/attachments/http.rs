//! The HTTP surface of attachments: create an upload (device token), the tus 1.0.0 core protocol on the
//! upload URL (the upload credential), and the download (no credential: the id is the capability).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use serde::{Deserialize, Serialize};

use super::service;
use crate::access::AuthedDevice;
use crate::error::{ApiError, TUS_VERSION};
use crate::http::ClientIp;
use crate::http::extract::{Json, Path};
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/attachments", post(create))
        .route("/v1/attachments/{id}", get(download))
        .route("/v1/attachments/{id}/upload", head(offset).patch(append).options(discover))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    length: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateResponse {
    id: String,
    upload_url: String,
    upload_credential: String,
    download_url: String,
    upload_until: i64,
    expires_at: i64,
}

async fn create(
    State(app): State<Arc<App>>,
    authed: AuthedDevice,
    Json(req): Json<CreateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let created = service::create(&app, authed, req.length).await?;
    let body = CreateResponse {
        upload_url: format!("/v1/attachments/{}/upload", created.id),
        download_url: format!("/v1/attachments/{}", created.id),
        id: created.id,
        upload_credential: created.credential,
        upload_until: created.upload_until,
        expires_at: created.expires_at,
    };
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// Headers every tus answer carries.
fn tus(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// tus requires `Tus-Resumable: 1.0.0` on every request but `OPTIONS`.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(v) if v == TUS_VERSION.as_bytes() => Ok(()),
        _ => Err(ApiError::UnsupportedTusVersion),
    }
}

fn credential(headers: &HeaderMap) -> Option<&str> {
    headers.get("upload-credential").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// `OPTIONS`: what this tus server offers (no credential needed).
async fn discover(State(app): State<Arc<App>>) -> Response {
    let mut response = tus(StatusCode::NO_CONTENT.into_response());
    let headers = response.headers_mut();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert("tus-max-size", HeaderValue::from(app.config.max_attachment_bytes));
    response
}

/// `HEAD`: where the upload stands.
async fn offset(State(app): State<Arc<App>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let answer = async {
        check_version(&headers)?;
        let attachment = service::open(&app, &id, credential(&headers)).await?;
        let mut response = StatusCode::OK.into_response();
        response.headers_mut().insert("upload-offset", HeaderValue::from(attachment.received));
        response.headers_mut().insert("upload-length", HeaderValue::from(attachment.length));
        Ok::<_, ApiError>(response)
    };
    tus(answer.await.unwrap_or_else(IntoResponse::into_response))
}

/// `PATCH`: bytes from `Upload-Offset` on.
async fn append(State(app): State<Arc<App>>, Path(id): Path<String>, request: Request) -> Response {
    let answer = async {
        let headers = request.headers();
        check_version(headers)?;
        let attachment = service::open(&app, &id, credential(headers)).await?;
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(|v| v.trim().eq_ignore_ascii_case("application/offset+octet-stream")) {
            return Err(ApiError::UnsupportedMediaType("application/offset+octet-stream"));
        }
        let number = |name: &'static str| -> Result<Option<u64>, ApiError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => {
                    v.to_str().ok().and_then(|v| v.trim().parse().ok()).map(Some).ok_or(ApiError::InvalidHeader(name))
                }
            }
        };
        let offset = number("upload-offset")?.ok_or(ApiError::InvalidHeader("upload-offset"))?;
        if offset != attachment.received {
            return Err(ApiError::UploadOffsetMismatch(attachment.received));
        }
        if number("content-length")?.is_some_and(|n| n > attachment.length - attachment.received) {
            return Err(ApiError::AttachmentTooLarge);
        }
        let body: Body = request.into_body();
        let offset = service::upload(app.clone(), attachment, offset, body).await?;
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.headers_mut().insert("upload-offset", HeaderValue::from(offset));
        Ok(response)
    };
    tus(answer.await.unwrap_or_else(IntoResponse::into_response))
}

/// `GET` (and `HEAD`): the bytes, whole or one range.
async fn download(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let download = service::download(&app, ip, &id, range).await?;
    let (status, sent) = match &download.range {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range.end - range.start),
        None => (StatusCode::OK, download.length),
    };
    let mut response = Response::new(Body::from_stream(download.bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(sent));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The bytes never change; they are ciphertext, but only the client should keep them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, immutable"));
    if let Some(range) = &download.range
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {}-{}/{}", range.start, range.end - 1, download.length))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}
