//! The ephemeral half of the scale-out deployment: Redis (or Redis Cluster, the same code path through
//! fred's cluster configuration) holds one-time prekey pools, message queues, rate-limit buckets,
//! presence, leases, wakeup notes and the pub/sub bus. Any number of sealpost instances share it.
//!
//! This module owns the clients: how they reconnect and how long a command may take, the start-up check
//! for an append-only file, and assembling one store per capability over a shared pool. Names live in
//! `keys.rs`, Lua in `scripts/`. Invariants: a Redis that is down or frozen costs a caller at most the
//! store timeout, and the clients reconnect for as long as the process runs; every task it starts runs
//! through `shutdown::Tasks` and quits its client when the server stops. It never holds a durable record:
//! what must survive losing Redis is in Postgres.

mod bus;
mod import;
mod keys;
mod lease;
mod limits;
mod prekeys;
mod presence;
mod queue;
mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, Pool};
use fred::types::Value;

use crate::config::Config;
use crate::shutdown::Tasks;
pub use crate::storage::redis::bus::RedisBus;
pub use crate::storage::redis::import::RedisImport;
use crate::storage::redis::keys::Keys;
pub use crate::storage::redis::lease::RedisLease;
pub use crate::storage::redis::limits::RedisLimits;
pub use crate::storage::redis::prekeys::RedisPreKeys;
pub use crate::storage::redis::presence::RedisPresence;
pub use crate::storage::redis::queue::RedisQueue;
pub use crate::storage::redis::wakeups::RedisWakeups;
use crate::storage::{Probe, StoreError, StoreResult};

/// One store per capability, all over the same connections.
pub struct RedisStores {
    pub pre_keys: Arc<RedisPreKeys>,
    pub queue: Arc<RedisQueue>,
    pub limits: Arc<RedisLimits>,
    pub bus: Arc<RedisBus>,
    pub presence: Arc<RedisPresence>,
    pub lease: Arc<RedisLease>,
    pub wakeups: Arc<RedisWakeups>,
    pub probe: Arc<RedisProbe>,
    /// Imports and queue counts (`sealpost import`, `sealpost stats`).
    pub import: Arc<RedisImport>,
}

/// Connects the command pool and the bus's subscriber. Fails at once when Redis is not there (start-up
/// retries are [`crate::storage::connect_with_retries`]'s).
pub async fn connect(config: &Config, url: &str, timeout: Duration, tasks: &Tasks) -> StoreResult<RedisStores> {
    let keys = Keys::new(&config.redis_key_prefix);
    let ca_file = config.store_ca_file.as_deref();
    let pool = builder(url, ca_file, timeout)?.build_pool(2)?;
    pool.init().await?;
    warn_without_append_only_file(&pool).await;
    let provisioning_ttl = Duration::from_secs(config.provisioning_timeout_seconds + 60);
    let bus = match RedisBus::connect(url, ca_file, keys.clone(), pool.clone(), provisioning_ttl, timeout, tasks).await
    {
        Ok(bus) => bus,
        Err(err) => {
            // Start-up tries again from scratch: nothing of this attempt may keep reconnecting.
            let _ = pool.quit().await;
            return Err(err);
        }
    };
    let quitting = pool.clone();
    tasks.spawn("redis pool", move |mut shutdown| async move {
        shutdown.recv().await;
        if let Err(err) = quitting.quit().await {
            tracing::debug!(error = %err, "quitting the Redis pool failed");
        }
    });
    Ok(RedisStores {
        pre_keys: Arc::new(RedisPreKeys::new(pool.clone(), keys.clone())),
        queue: Arc::new(RedisQueue::new(pool.clone(), keys.clone())),
        limits: Arc::new(RedisLimits::new(pool.clone(), keys.clone())),
        bus: Arc::new(bus),
        presence: Arc::new(RedisPresence::new(pool.clone(), keys.clone())),
        lease: Arc::new(RedisLease::new(pool.clone(), keys.clone())),
        wakeups: Arc::new(RedisWakeups::new(pool.clone(), keys.clone(), config.push_retry_backlog)),
        import: Arc::new(RedisImport::new(pool.clone(), keys)),
        probe: Arc::new(RedisProbe { pool }),
    })
}

/// A Redis client builder for `url` that never gives up: it reconnects with backoff (to every node of a
/// cluster) for as long as the process runs, and bounds every command by `timeout`, so that a Redis that is
/// down or frozen costs a caller that long and no more. A command issued while disconnected waits for the
/// reconnect within the same bound. Start-up retries are the caller's (`init` fails at once when Redis is
/// not there, see [`crate::storage::connect_with_retries`]).
///
/// `rediss://` and `rediss-cluster://` URLs connect over TLS (rustls), trusting `ca_file` when given and the
/// system's roots otherwise.
fn builder(url: &str, ca_file: Option<&std::path::Path>, timeout: Duration) -> StoreResult<Builder> {
    use fred::types::config::{ReconnectPolicy, TcpConfig, UnresponsiveConfig};
    let mut config = RedisConfig::from_url(url)?;
    if let (Some(tls), Some(ca_file)) = (config.tls.as_mut(), ca_file) {
        tls.connector = fred::types::config::TlsConnector::from(tls_trusting(ca_file)?);
    }
    config.fail_fast = true;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // A cluster redirect (MOVED, ASK) is a second attempt.
            c.max_command_attempts = 3;
            c.unresponsive = UnresponsiveConfig { max_timeout: Some(timeout), interval: Duration::from_millis(500) };
            c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
        })
        .with_performance_config(|p| p.default_command_timeout = timeout);
    Ok(builder)
}

/// A TLS client configuration that trusts exactly the certificates in `ca_file`.
fn tls_trusting(ca_file: &std::path::Path) -> StoreResult<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| StoreError::Config(format!("SEALPOST_STORE_CA_FILE {}: {reason}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Queued envelopes and one-time prekeys exist only in Redis: without its append-only file, a restart of
/// Redis loses them all, silently for clients. Say so loudly at start-up.
async fn warn_without_append_only_file(pool: &Pool) {
    let info: Result<String, _> = pool.next_connected().info(Some(fred::types::InfoKind::Persistence)).await;
    match info {
        Ok(info) if info.lines().any(|l| l.trim() == "aof_enabled:0") => tracing::warn!(
            "REDIS HAS NO APPEND-ONLY FILE (appendonly no): a restart of Redis loses every queued message and \
             one-time prekey; run Redis with appendonly yes (docs/operations.md, Durability)"
        ),
        Ok(_) => {}
        Err(err) => tracing::info!(error = %err, "could not check Redis persistence (INFO persistence)"),
    }
}

/// The bytes of a non-empty string or bytes reply (scripts answer '' for "nothing").
fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Bytes(b) if !b.is_empty() => Some(b),
        Value::String(s) if !s.is_empty() => Some(s.as_bytes()),
        _ => None,
    }
}

/// The readiness check of Redis.
pub struct RedisProbe {
    pool: Pool,
}

#[async_trait]
impl Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> StoreResult<()> {
        let _: String = self.pool.next_connected().ping(None).await?;
        Ok(())
    }
}
