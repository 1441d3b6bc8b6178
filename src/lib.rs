//! sealpost: the untrusted middle of an end-to-end-encrypted messenger.
//!
//! Clients do all the cryptography. The server registers anonymous accounts and links their devices,
//! stores public keys and hands out one-time prekeys exactly once, queues opaque envelopes with a TTL and
//! delivers them over WebSocket until acknowledged, and issues sealed-sender certificates. See `docs/` for
//! the API and the deployment guide.

pub mod access;
pub mod accounts;
pub mod attachments;
pub mod calls;
pub mod config;
pub mod contacts;
pub mod crypto;
pub mod delivery;
pub mod demo;
pub mod directory;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod messages;
pub mod push;
pub mod relay;
pub mod routes;
pub mod server_keys;
pub mod shutdown;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod upkeep;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::App;
pub use crate::state::StartError;

/// Connects storage (applying migrations), creates missing server keys and loads them, and starts the
/// background work, the jobs included.
pub async fn build_app(config: Config) -> Result<Arc<App>, StartError> {
    let app = App::build(config).await?;
    jobs::start(&app).map_err(StartError::Jobs)?;
    Ok(app)
}

/// Serves the API on `listener` (over TLS when a certificate is configured) and metrics on `metrics_listener` until `shutdown` completes, then stops
/// accepting, lets open requests finish (up to the configured grace period) and returns.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(app.config.shutdown_grace_seconds);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = routes::api(app.clone());
    let metrics = routes::metrics(app.clone());
    let limits = http::listener::ListenerLimits {
        header_read_timeout: Duration::from_secs(app.config.header_read_timeout_seconds),
        max_connections: app.config.max_connections,
        max_connections_per_ip: app.config.trusted_proxy_header.is_none().then_some(app.config.max_connections_per_ip),
        ipv6_prefix_length: app.config.ipv6_prefix_length,
        max_header_bytes: app.config.max_header_bytes,
    };
    let tls = http::tls::Tls::from_config(&app.config).map_err(std::io::Error::other)?;
    let acceptor = tls.as_ref().map(|tls| tls.acceptor.clone());
    if let Some(tls) = tls {
        let interval = Duration::from_secs(app.config.tls_reload_interval_seconds);
        tokio::spawn(tls.certificate.watch(interval, stop_rx.clone()));
    }
    let api_server = http::listener::serve(listener, api, limits, acceptor, stop_rx.clone());
    let mut metrics_stop = stop_rx.clone();
    let metrics_server = axum::serve(metrics_listener, metrics).with_graceful_shutdown(async move {
        let _ = metrics_stop.wait_for(|stop| *stop).await;
    });
    let api_task = tokio::spawn(api_server);
    let metrics_task = tokio::spawn(async move { metrics_server.await });

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = app.shutdown_trigger.send(true);
    let drained = tokio::time::timeout(grace, async {
        let api = api_task.await;
        let metrics = metrics_task.await;
        (api, metrics)
    })
    .await;
    match drained {
        Ok((Ok(api), Ok(metrics))) => {
            api?;
            metrics?;
        }
        Ok(_) => tracing::error!("a server task panicked"),
        Err(_) => {
            tracing::warn!(grace_seconds = grace.as_secs(), "open connections outlived the shutdown grace period")
        }
    }
    // The jobs stopped with the app's signal; they give their leases up before the stores close.
    app.tasks.join("jobs", grace).await;
    // Only now that no request is left: the background work that served them.
    let stuck = app.tasks.stop(grace).await;
    if !stuck.is_empty() {
        tracing::warn!(tasks = ?stuck, "background tasks outlived the shutdown grace period");
    }
    Ok(())
}
