//! Logs and metrics set-up.
//!
//! Privacy rule: no log line or metric label carries an account id, device id, IP, key, token or content.
//! Request logs name the route template, never the path; metric labels are templates, statuses and fixed
//! words.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the process-wide log subscriber (the binary calls this once).
///
/// Whatever the filter says, libraries log at `info` at most: at `debug` and `trace` the WebSocket, HTTP,
/// database and Redis libraries write whole frames, queries and key names (envelopes, acis, guids), which
/// our privacy rules keep out of every log. Only sealpost's own lines go below `info`.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let layer = tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi);
    let layer = match config.log_format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(tracing_subscriber::filter::filter_fn(libraries_at_info)))
        .try_init();
    // Libraries that log through the `log` facade (the Redis client) check its level before they format a
    // line. The subscriber set it from a filter that cannot tell (the one above), i.e. to `trace`, and every
    // Redis command was then formatted for a trace line that was dropped: a few percent of a message's CPU.
    // Nothing below `info` of theirs is ever written, so nothing below it needs formatting.
    log::set_max_level(log::LevelFilter::Info);
}

/// The cap on libraries' log lines described at [`init_logging`]. The cron scheduler under the job runner
/// is held at `warn`: at `info` it narrates its own start-up, which says nothing to an operator.
pub fn libraries_at_info(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    if target.starts_with("tokio_cron_scheduler") {
        return *metadata.level() <= tracing::Level::WARN;
    }
    target.starts_with("sealpost") || *metadata.level() <= tracing::Level::INFO
}

/// Handle to the Prometheus recorder. The `metrics` facade is process-wide by design, so the recorder is
/// installed once and every server in the process (tests run several) renders the same registry.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the handle still renders ours then.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
