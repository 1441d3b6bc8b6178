//! The storage seam: small traits, one implementation per deployment.
//!
//! * **Embedded** (`embedded/`): SQLite for durable records, one-time prekey pools and message queues;
//!   in-process rate-limit buckets, bus, presence and leases. No service to run.
//! * **Attachment bytes** (`objects`), in either deployment: a directory, or an S3-compatible bucket.
//! * **Scale-out** (`scaleout`, assembling `postgres/` and `redis/`): Postgres for durable records
//!   (accounts, devices, identity, signed and last-resort keys, invite and link codes); Redis or Redis
//!   Cluster for one-time prekey pools (atomic pop), message queues, rate-limit buckets, presence, leases
//!   and the pub/sub bus between instances.
//!
//! Handlers and capabilities only see the traits (`seams`) and records (`model`); which implementation
//! runs is decided once, from the configured URLs, in [`Storage::connect`]. Dialect differences stay
//! inside the backend folders; what a stored value means is decoded once, in `rows`, for every backend.

pub mod embedded;
pub mod error;
pub mod guard;
mod migrate;
pub mod model;
pub mod objects;
pub mod postgres;
pub mod redis;
mod rows;
pub mod scaleout;
pub mod seams;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

pub use error::{StoreError, StoreResult};
pub use model::*;
pub use seams::*;

use crate::config::{Backend, Config};
use crate::shutdown::Tasks;

/// The storage a running server uses.
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
    pub keys: Arc<dyn KeyStore>,
    pub pre_keys: Arc<dyn PreKeyPool>,
    pub limits: Arc<dyn RateLimitStore>,
    pub queue: Arc<dyn MessageQueue>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub contacts: Arc<dyn ContactTokens>,
    pub attachments: Arc<dyn AttachmentStore>,
    /// Attachment bytes: the attachments directory, or an S3-compatible bucket.
    pub blobs: Arc<dyn Blobs>,
    pub lease: Arc<dyn Lease>,
    pub push: Arc<dyn PushSubscriptions>,
    pub wakeups: Arc<dyn WakeupState>,
    /// Aggregate counts for `sealpost stats` (durable records; queues).
    pub inventory: Arc<dyn transfer::DurableInventory>,
    pub queue_inventory: Arc<dyn transfer::QueueInventory>,
    /// Where `sealpost import` writes; `None` in the embedded deployment.
    pub import: Option<transfer::Importers>,
    /// Checks every configured store, for `/readyz`.
    pub probes: Vec<Arc<dyn Probe>>,
    /// Availability of each store as its calls see it.
    pub health: Vec<Arc<guard::StoreHealth>>,
    pub kind: &'static str,
}

impl Storage {
    /// Connects to the backend the configuration selects and applies pending migrations (under a lock).
    /// A store that cannot be reached yet is tried again for `SEALPOST_STORE_STARTUP_WAIT_SECONDS`, so
    /// sealpost may start before its database and Redis (as in a compose file).
    /// Background work of the stores (the SQLite writer, the Redis bus) is started on `tasks`.
    pub async fn connect(config: &Config, tasks: &Tasks) -> StoreResult<Storage> {
        connect_with_retries(config, tasks, Duration::from_secs(config.store_startup_wait_seconds)).await
    }

    /// Applies pending migrations only (for `sealpost migrate`).
    pub async fn migrate(config: &Config) -> StoreResult<usize> {
        match config.backend() {
            Backend::Embedded { database_url } => embedded::migrate_only(config, &database_url).await,
            Backend::ScaleOut { database_url, .. } => scaleout::migrate_only(config, &database_url).await,
            Backend::Invalid(reason) => Err(StoreError::Migration(reason)),
        }
    }
}

/// See [`Storage::connect`]: retries unreachable stores once a second until `wait` has passed.
pub async fn connect_with_retries(config: &Config, tasks: &Tasks, wait: Duration) -> StoreResult<Storage> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        let attempt = match config.backend() {
            Backend::Embedded { database_url } => embedded::connect(config, &database_url, tasks).await,
            Backend::ScaleOut { database_url, redis_url } => {
                scaleout::connect(config, &database_url, &redis_url, tasks).await
            }
            Backend::Invalid(reason) => Err(StoreError::Migration(reason)),
        };
        match attempt {
            Err(err) if err.is_unavailable() && tokio::time::Instant::now() < deadline => {
                if !told {
                    tracing::warn!(error = %err, wait_seconds = wait.as_secs(), "a store is not reachable yet; retrying");
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err),
            Ok(storage) => {
                if told {
                    tracing::info!("every store is reachable");
                }
                return Ok(storage);
            }
        }
    }
}
