//! Embedded deployment: one SQLite file (WAL) for everything durable, the one-time prekey pools and the
//! message queues, plus in-process token buckets, bus, presence, leases and wakeup notes. One process, no services.
//!
//! This module owns opening the file (pragmas, the reader pool, the pool of one connection for the rare
//! writes, the per-message writer thread's connection and the checkpointer's connection) and assembling
//! the [`Storage`]; each capability's SQL lives in its own file. Invariants: SQLite allows one writer at a
//! time and there are two writing connections, so every write transaction begins IMMEDIATE (it takes the
//! lock before its first read, and a collision waits in SQLite's busy handler instead of failing on a
//! stale snapshot), and every rare write goes through [`Sqlite::writer`], which makes the batch writer yield
//! to it (`gate.rs`) so a stream of messages cannot starve it; reads never use a writing connection. It
//! must never start a task except through `tasks`, so that a stopping server waits for the writer to answer
//! every queued write and for the last checkpoint.

mod accounts;
mod attachments;
mod checkpoint;
mod contacts;
mod gate;
mod inventory;
mod keys;
mod memory;
mod prekey_rows;
mod prekeys;
mod push;
mod queue;
mod reserve;
pub mod snapshot;
mod wakeups;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqlitePool};

use crate::config::Config;
use crate::domain::Aci;
use crate::shutdown::Tasks;
pub use crate::storage::embedded::memory::{LocalBus, MemoryLease, MemoryLimits, MemoryPresence};
pub use crate::storage::embedded::wakeups::MemoryWakeups;
use crate::storage::guard::{Guarded, StoreHealth};
use crate::storage::objects::ObjectBlobs;
use crate::storage::{
    AccountStore, AttachmentStore, ContactTokens, KeyStore, MessageQueue, PreKeyPool, Probe, PushSubscriptions,
    Storage, StoreError, StoreResult,
};

/// The settings of every connection to the file, whichever driver opens it (sqlx for the pools and the
/// checkpointer, rusqlite for the batch writer): WAL, commits without fsync of the WAL (a crash of the
/// machine can lose the last commits, never corrupt), foreign keys enforced.
const PRAGMAS: [(&str, &str); 3] = [("journal_mode", "WAL"), ("synchronous", "NORMAL"), ("foreign_keys", "ON")];
/// How long a connection waits for another's write lock before its statement fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn options(database_url: &str) -> StoreResult<SqliteConnectOptions> {
    let options = SqliteConnectOptions::from_str(database_url)?.create_if_missing(true).busy_timeout(BUSY_TIMEOUT);
    Ok(PRAGMAS.iter().fold(options, |options, (name, value)| options.pragma(*name, *value)))
}

fn ensure_parent(database_url: &str) -> StoreResult<()> {
    let path = database_url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Migration(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}

pub async fn migrate_only(_config: &Config, database_url: &str) -> StoreResult<usize> {
    ensure_parent(database_url)?;
    let mut conn = sqlx::SqliteConnection::connect_with(&options(database_url)?).await?;
    let ran = crate::storage::migrate::sqlite(&mut conn).await?;
    conn.close().await?;
    Ok(ran)
}

/// Reader connections: as many as configured, but no more than two per CPU. Each is a thread of its own,
/// and a read is CPU work on the file cache, so more only add threads and page caches.
fn readers(configured: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    configured.clamp(1, u32::try_from(cpus * 2).unwrap_or(u32::MAX))
}

pub async fn connect(config: &Config, database_url: &str, tasks: &Tasks) -> StoreResult<Storage> {
    migrate_only(config, database_url).await?;
    let path = snapshot::database_path(database_url)
        .ok_or_else(|| StoreError::Config("the embedded store needs a database file, not :memory:".into()))?;
    // The rare writes (registration, key uploads, removals, the reapers) use a pool of one connection; the
    // per-message writes have a thread with its own (`writer.rs`). Neither checkpoints on commit (that would
    // put an fsync of the database file in front of some unlucky request); a third connection checkpoints
    // in the background instead.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(database_url)?.pragma("wal_autocheckpoint", "0"))
        .await?;
    let checkpointer = sqlx::SqliteConnection::connect_with(&options(database_url)?).await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(readers(config.database_max_connections))
        .connect_with(
            options(database_url)?.read_only(true).pragma("cache_size", format!("-{}", config.sqlite_reader_cache_kib)),
        )
        .await?;
    let bus = Arc::new(LocalBus::new());
    let pool_writes = Arc::new(gate::PoolWrites::default());
    let reserves = Arc::new(reserve::Reserves::new(config.prekey_reserve_max, config.prekey_reserve_devices));
    let shared = writer::Shared { bus: bus.clone(), pool_writes: pool_writes.clone(), reserves: reserves.clone() };
    let batches = writer::start(tasks, writer::open(&path)?, checkpointer, shared)?;
    let limits = Arc::new(MemoryLimits::default());
    let db = Arc::new(Sqlite { reader, rare_writes: writer, pool_writes, batches, limits: limits.clone(), reserves });
    // A local file rarely fails, but a full disk or a stuck writer must answer 503 quickly like any store.
    let health = StoreHealth::new("sqlite", Duration::from_millis(config.store_timeout_ms));
    let blobs = ObjectBlobs::open(config)?;
    let blobs_health = StoreHealth::new("objects", Duration::from_millis(config.store_timeout_ms));
    Ok(Storage {
        accounts: Guarded::<dyn AccountStore>::new(db.clone(), health.clone()),
        keys: Guarded::<dyn KeyStore>::new(db.clone(), health.clone()),
        pre_keys: Guarded::<dyn PreKeyPool>::new(db.clone(), health.clone()),
        queue: Guarded::<dyn MessageQueue>::new(db.clone(), health.clone()),
        bus,
        presence: Arc::new(MemoryPresence::default()),
        contacts: Guarded::<dyn ContactTokens>::new(db.clone(), health.clone()),
        attachments: Guarded::<dyn AttachmentStore>::new(db.clone(), health.clone()),
        blobs: blobs.clone(),
        lease: Arc::new(MemoryLease::default()),
        push: Guarded::<dyn PushSubscriptions>::new(db.clone(), health.clone()),
        wakeups: Arc::new(MemoryWakeups::new(config.push_retry_backlog)),
        limits,
        inventory: db.clone(),
        queue_inventory: db.clone(),
        import: None,
        probes: vec![
            Guarded::<dyn Probe>::new(db, health.clone()),
            Guarded::<dyn Probe>::new(blobs, blobs_health.clone()),
        ],
        health: vec![health, blobs_health],
        kind: "embedded",
    })
}

/// The SQLite store.
///
/// SQLite allows one writer at a time. The per-message writes go to one thread that owns a connection and
/// commits them in batches; the rare writes queue in a pool of exactly one connection (a cheap async wait),
/// so at most two writers meet at the file lock; reads use their own read-only connections, which WAL lets
/// run beside the writers.
pub struct Sqlite {
    reader: SqlitePool,
    /// The pool of one connection for the rare writes; use it through [`Sqlite::writer`].
    rare_writes: SqlitePool,
    /// Rare writes waiting for the write lock or holding it: the batch writer yields to them.
    pool_writes: Arc<gate::PoolWrites>,
    /// The in-process buckets, also used for the rate-limit token a queue push takes.
    limits: Arc<MemoryLimits>,
    /// The per-message writes (queue pushes and acknowledgements, prekey claims) go to a thread that commits
    /// whatever has accumulated in one transaction: under load one commit serves many messages.
    batches: writer::Batches,
    /// One-time prekeys taken from the table ahead of demand for devices claimed from often (`reserve.rs`).
    reserves: Arc<reserve::Reserves>,
}

impl Sqlite {
    /// The rare writes' connection, announced to the batch writer for as long as the returned handle lives
    /// (a statement, or the `BEGIN IMMEDIATE` of a transaction), so that it waits for the file's lock only
    /// behind the batch in progress.
    fn writer(&self) -> gate::PoolWriting<'_> {
        self.pool_writes.enter(&self.rare_writes)
    }
}

/// SQLite keeps an aci as its text form.
fn aci_text(aci: Aci) -> String {
    aci.to_string()
}

#[async_trait]
impl Probe for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    async fn check(&self) -> StoreResult<()> {
        AccountStore::ping(self).await
    }
}
