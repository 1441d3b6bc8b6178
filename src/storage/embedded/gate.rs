//! The embedded store's two writing connections sharing SQLite's one write lock fairly: the batch writer
//! (`writer.rs`) yields to the rare writes of the pool connection (`mod.rs`) while one is announced.
//!
//! Invariant: a rare write announces itself for as long as it waits for the lock (a statement, or the
//! `BEGIN IMMEDIATE` of a transaction); the batch writer never waits for it longer than [`YIELD_AT_MOST`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the batch writer waits at most for the rare writes before it starts its next batch anyway.
const YIELD_AT_MOST: Duration = Duration::from_millis(50);

/// Rare writes (the pool connection of `mod.rs`) waiting for the file's write lock or taking it. While
/// there are any, the batch writer starts no new batch (for at most [`YIELD_AT_MOST`]): SQLite's busy
/// handler retries only now and then, and under a steady stream of messages it would mostly find the next
/// batch holding the lock, so a device removal could wait for as long as the stream lasts.
#[derive(Default)]
pub struct PoolWrites(AtomicUsize);

impl PoolWrites {
    /// Announces a rare write on `pool` until the handle is dropped.
    pub fn enter<'a>(&'a self, pool: &'a sqlx::SqlitePool) -> PoolWriting<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        PoolWriting { writes: self, pool }
    }

    /// Waits (on the writer thread) while a rare write is announced, at most [`YIELD_AT_MOST`].
    pub(super) fn yield_to_pool(&self) {
        let started = Instant::now();
        while self.0.load(Ordering::SeqCst) > 0 && started.elapsed() < YIELD_AT_MOST {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The rare writes' pool, announced to the batch writer while this lives.
pub struct PoolWriting<'a> {
    writes: &'a PoolWrites,
    pool: &'a sqlx::SqlitePool,
}

impl std::ops::Deref for PoolWriting<'_> {
    type Target = sqlx::SqlitePool;
    fn deref(&self) -> &sqlx::SqlitePool {
        self.pool
    }
}

impl Drop for PoolWriting<'_> {
    fn drop(&mut self) {
        self.writes.0.fetch_sub(1, Ordering::SeqCst);
    }
}
