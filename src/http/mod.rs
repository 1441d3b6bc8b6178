//! HTTP plumbing: the router, shared state, extractors that turn bad input into our error body, request
//! metrics and privacy-preserving request logs. Capabilities own their handlers; this module only wires.

pub mod auth;
pub mod extract;
pub mod openapi;
mod ops;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::error::ApiError;
use crate::limits::Limiter;
use crate::server_keys::ServerKeys;
use crate::storage::Storage;

/// Everything a request handler may use. One per running server (tests run many in one process).
pub struct App {
    pub config: Config,
    pub storage: Storage,
    pub keys: ServerKeys,
    pub limiter: Limiter,
    pub metrics: PrometheusHandle,
    pub hub: Arc<crate::delivery::Hub>,
    pub directory: Arc<crate::directory::Directory>,
    pub tokens: auth::TokenCache,
    pub certifier: crate::messages::certificates::Certifier,
    /// Turns true when the server begins to shut down; open sockets close with 1001.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub shutdown_trigger: tokio::sync::watch::Sender<bool>,
}

pub type AppState = State<Arc<App>>;

/// The public API router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(ops::routes())
        .merge(crate::accounts::routes())
        .merge(crate::keys::routes())
        .merge(crate::messages::routes())
        .merge(crate::delivery::websocket::routes())
        .merge(crate::delivery::provisioning::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(app.config.max_request_bytes))
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

/// The metrics router, served on its own listener.
pub fn metrics_router(app: Arc<App>) -> Router {
    ops::metrics_routes().with_state(app)
}

/// Counts and times every request by route template (never by concrete path, which holds ids), and logs
/// method, template, status and latency at debug level: no path, query, header or address.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("sealpost_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("sealpost_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(%method, %route, status, latency_us = elapsed.as_micros() as u64, "request");
    response
}

/// Address of the client as seen by this server (or told by a trusted proxy). Used only in memory, for
/// rate-limit buckets; never stored or logged.
pub struct ClientIp(pub std::net::IpAddr);

impl axum::extract::FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(header) = &app.config.trusted_proxy_header
            && let Some(value) = parts.headers.get(header.as_str()).and_then(|v| v.to_str().ok())
            // The last entry is the one the trusted proxy appended; earlier ones are whatever the client sent.
            && let Some(ip) = value.rsplit(',').next().and_then(|last| last.trim().parse().ok())
        {
            return Ok(ClientIp(ip));
        }
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| ClientIp(info.0.ip()))
            .ok_or_else(|| ApiError::Internal("connection info missing".into()))
    }
}

impl IntoResponse for crate::storage::StoreError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
