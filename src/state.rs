//! The state every request handler, service and job works with: one [`App`] per running server (tests
//! run many in one process, so nothing here is global), built by [`App::build`].

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::access::tokens::TokenCache;
use crate::config::Config;
use crate::crypto::sender_certificate::Certifier;
use crate::delivery::Hub;
use crate::directory::Directory;
use crate::limits::Limiter;
use crate::push::sender::{AllowedOrigins, PushSender};
use crate::push::wakeups::Wakeups;
use crate::server_keys::{KeyError, ServerKeys};
use crate::shutdown::Tasks;
use crate::storage::{Storage, StoreError};

/// Everything a request handler may use.
pub struct App {
    pub config: Config,
    pub storage: Storage,
    pub keys: ServerKeys,
    pub limiter: Limiter,
    pub metrics: PrometheusHandle,
    pub hub: Arc<Hub>,
    pub directory: Arc<Directory>,
    pub tokens: TokenCache,
    pub certifier: Certifier,
    /// Content-free Web Push wakeups of devices that have no socket.
    pub wakeups: Arc<Wakeups>,
    /// A random name for this running server, in its request logs: several instances (or test servers)
    /// can be told apart in one log without naming anyone.
    pub instance: String,
    /// When this server started, for the uptime `/healthz` reports.
    pub started: std::time::Instant,
    /// Turns true when the server begins to shut down; open sockets close with 1001.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub shutdown_trigger: tokio::sync::watch::Sender<bool>,
    /// Background tasks, stopped and joined after the last request.
    pub tasks: Tasks,
}

pub type AppState = axum::extract::State<Arc<App>>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("server keys: {0}")]
    Keys(#[from] KeyError),
    #[error("push: {0}")]
    Push(String),
    #[error("jobs: {0}")]
    Jobs(String),
}

impl App {
    /// Creates missing server keys and loads them, connects storage (applying migrations) and starts the
    /// background work of the stores, the hub and the wakeups (the jobs start in `crate::build_app`, since
    /// they work with the whole `App`).
    pub async fn build(config: Config) -> Result<Arc<App>, StartError> {
        let created = crate::server_keys::generate_missing(&config)?;
        if !created.is_empty() {
            tracing::info!(count = created.len(), "created missing server key files");
        }
        let keys = ServerKeys::load(&config)?;
        let tasks = Tasks::default();
        let storage = Storage::connect(&config, &tasks).await?;
        let limiter = Limiter::new(storage.limits.clone(), keys.pseudonym_key);
        let directory = Arc::new(Directory::new(storage.clone(), Duration::from_secs(config.directory_cache_seconds)));
        let hub = Hub::start(&storage, directory.clone(), &tasks);
        let allowed = AllowedOrigins::parse(config.push_allowed_origins.as_deref())
            .map_err(|e| StartError::Push(format!("SEALPOST_PUSH_ALLOWED_ORIGINS: {e}")))?;
        let timeout = Duration::from_millis(config.push_timeout_ms);
        let sender = PushSender::new(&keys.vapid, config.push_contact.clone(), allowed, timeout, None)
            .map_err(StartError::Push)?;
        let wakeups = Wakeups::start(&storage, sender, &config, &tasks);
        let certifier = Certifier::new(&keys.trust_root, keys.server_cert.clone());
        let (shutdown_trigger, shutdown) = tokio::sync::watch::channel(false);
        let instance = crate::crypto::random_bytes::<4>().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Arc::new(App {
            limiter,
            storage,
            keys,
            metrics: crate::telemetry::metrics_handle(),
            hub,
            directory,
            tokens: TokenCache::default(),
            certifier,
            wakeups,
            instance,
            started: std::time::Instant::now(),
            shutdown,
            shutdown_trigger,
            tasks,
            config,
        }))
    }
}
