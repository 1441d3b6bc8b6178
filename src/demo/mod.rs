//! The browser demo at `/demo/`: a page that registers two throwaway accounts through the public API and
//! makes a QR-initiated WebRTC call between them (see docs/demo.md).
//!
//! Owns: the page's files, built into the binary (`include_str!`), and the headers they are served with. The
//! page is a client like any other: it reaches the server only through the public API, so this module holds
//! no state and calls no capability.
//! Never: fetches or loads anything at run time, serves a file not in [`ASSETS`], or lets the page run inline
//! script (the Content-Security-Policy forbids it).

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::http::extract::Path;
use crate::state::App;

/// Only this origin's scripts, styles and API; media from the page's own streams; no plugins, no framing,
/// no inline script or style (the page sets styles through the CSSOM only).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Every file of the page: name under `/demo/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("assets/index.html")),
    ("demo.css", "text/css; charset=utf-8", include_str!("assets/demo.css")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("assets/api.js")),
    ("crypto.js", "text/javascript; charset=utf-8", include_str!("assets/crypto.js")),
    ("wire.js", "text/javascript; charset=utf-8", include_str!("assets/wire.js")),
    ("qr.js", "text/javascript; charset=utf-8", include_str!("assets/qr.js")),
    ("call.js", "text/javascript; charset=utf-8", include_str!("assets/call.js")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
];

/// The demo's routes, or none when `SEALPOST_DEMO` is off (its paths then answer the usual JSON 404).
pub fn routes(enabled: bool) -> Router<Arc<App>> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { asset("index.html") }))
        .route("/demo/{file}", get(file))
}

async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(file, _, _)| *file == name) else {
        return ApiError::NotFound.into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(self), microphone=(self)"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_load_only_their_own_files() {
        let (_, _, html) = ASSETS[0];
        assert!(!html.contains("<script>"), "no inline script: the policy would block it");
        assert!(!html.contains("style="), "no inline style: the policy would block it");
        for src in html.split("src=\"").skip(1).chain(html.split("href=\"").skip(1)) {
            let target = src.split('"').next().unwrap_or_default();
            assert!(ASSETS.iter().any(|(name, _, _)| *name == target), "{target} is not an asset");
        }
        for (name, _, body) in ASSETS {
            for forbidden in ["http://", "https://", "eval("] {
                assert!(!body.contains(forbidden), "{name} mentions {forbidden}");
            }
        }
    }
}
