//! What browsers and log readers need from every answer: CORS for the configured web-client origins,
//! security headers, and a request id that ties a client's report to the server's log lines.
//!
//! Invariants:
//! * no origin is allowed unless configured (`SEALPOST_CORS_ALLOWED_ORIGINS`); a preflight from any other
//!   origin is refused with 403 `cors_origin_refused`, and no answer names an origin that is not listed;
//! * credentials (cookies) are never allowed cross-origin: the API authenticates by header only;
//! * the request id is the client's own when it is short and plain, otherwise random; it is never derived
//!   from the client's address, account or device, so it links nothing but one exchange;
//! * `Strict-Transport-Security` only when this listener speaks TLS (over plain HTTP it would be a lie
//!   a proxy in front may contradict).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::ApiError;
use crate::state::App;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The CSP of every answer that is not an HTML page: nothing may be loaded, nothing may frame it.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Methods a listed origin may use, and headers its scripts may read from answers.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
const EXPOSED_HEADERS: &str = "x-request-id, retry-after, location, content-range, upload-offset, upload-length, \
                               tus-resumable, upload-expires";
/// Seconds a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The middleware: request id and span around everything, CORS, then the security headers on the answer.
pub async fn browser(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    let span = tracing::info_span!("request", request_id = %id);
    let origin = request.headers().get(header::ORIGIN).cloned();
    let preflight = request.method() == Method::OPTIONS
        && origin.is_some()
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let allowed = origin.as_ref().filter(|o| origin_allowed(&app.config.cors_allowed_origins, o));
    let mut response = if preflight {
        match allowed {
            Some(origin) => preflight_answer(origin, request.headers()),
            None => {
                metrics::counter!("sealpost_cors_refused_total").increment(1);
                tracing::debug!(parent: &span, "preflight from an origin that is not allowed");
                ApiError::CorsOriginRefused.into_response()
            }
        }
    } else {
        next.run(request).instrument(span).await
    };
    let headers = response.headers_mut();
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    }
    if origin.is_some() && app.config.cors_allowed_origins.is_some() {
        // The answer depends on the origin: caches must not hand one origin's answer to another.
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    security_headers(headers, app.config.tls_cert_file.is_some());
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    response
}

/// The client's request id if it is 1 to 64 characters of letters, digits, `-`, `_`, `.` and `:`;
/// otherwise a fresh random one.
pub fn request_id(headers: &HeaderMap) -> String {
    let sane =
        |v: &&str| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    match headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(sane) {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Whether `origin` is one of the comma-separated configured origins (compared exactly, ASCII case
/// folded, as browsers send them: `scheme://host[:port]`).
pub fn origin_allowed(configured: &Option<String>, origin: &HeaderValue) -> bool {
    let Some(list) = configured else { return false };
    let Ok(origin) = origin.to_str() else { return false };
    list.split(',').map(str::trim).any(|allowed| !allowed.is_empty() && allowed.eq_ignore_ascii_case(origin))
}

fn preflight_answer(origin: &HeaderValue, request: &HeaderMap) -> Response {
    let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
    // Any header the client asks for: each is still checked by the endpoint that reads it, and a header
    // grants nothing by being allowed here (no cookies cross origins).
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        && asked.to_str().is_ok_and(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b", -_".contains(&b)))
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    response
}

/// Headers every answer carries. An HTML page sets its own (stricter-than-default is its job) CSP.
fn security_headers(headers: &mut HeaderMap, tls: bool) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(API_CSP));
    }
    if tls {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(request_id(&headers), "abc-123_x.y:z");
        for bad in ["", "has space", "quote\"", &"x".repeat(65)] {
            headers.insert(REQUEST_ID, HeaderValue::from_str(bad).expect("header"));
            let id = request_id(&headers);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "{id}");
        }
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()), "random each time");
    }

    #[test]
    fn origins_match_exactly() {
        let list = Some("https://app.example.org, http://localhost:5173".to_owned());
        assert!(origin_allowed(&list, &HeaderValue::from_static("https://app.example.org")));
        assert!(origin_allowed(&list, &HeaderValue::from_static("http://localhost:5173")));
        assert!(!origin_allowed(&list, &HeaderValue::from_static("https://app.example.org.evil.test")));
        assert!(!origin_allowed(&list, &HeaderValue::from_static("null")));
        assert!(!origin_allowed(&None, &HeaderValue::from_static("https://app.example.org")));
    }
}
