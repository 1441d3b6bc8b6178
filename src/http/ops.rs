//! Operations endpoints: liveness, readiness of every configured store, the API description (JSON and a
//! readable page), Prometheus metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(super::docs::page))
}

pub fn metrics_routes() -> Router<Arc<App>> {
    Router::new().route("/metrics", get(metrics))
}

async fn openapi() -> impl IntoResponse {
    axum::Json(super::openapi::document())
}

/// Liveness, with what an operator checks after an upgrade: the version running and for how long.
async fn healthz(State(app): State<Arc<App>>) -> impl IntoResponse {
    axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": app.started.elapsed().as_secs(),
    }))
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    for probe in &app.storage.probes {
        let ok = match tokio::time::timeout(std::time::Duration::from_secs(3), probe.check()).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(store = probe.name(), error = %err, "readiness check failed");
                false
            }
            Err(_) => {
                tracing::warn!(store = probe.name(), "readiness check timed out");
                false
            }
        };
        ready &= ok;
        checks.insert(probe.name().into(), json!(if ok { "ok" } else { "unavailable" }));
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = if ready {
        json!({"status": "ready", "checks": checks})
    } else {
        json!({"code": "unavailable", "message": "a storage backend is unreachable", "checks": checks})
    };
    (status, axum::Json(body))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render())
}
