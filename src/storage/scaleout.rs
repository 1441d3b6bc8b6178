//! Scale-out deployment: Postgres for durable records (`storage::postgres`), Redis or Redis Cluster for
//! everything ephemeral and the bus between instances (`storage::redis`). Any number of sealpost
//! instances can share them.
//!
//! This module only assembles a [`Storage`] from the two: every store behind its store's health guard, so
//! each call is bounded in time and an outage is reported once. It must never hold a query or a key name
//! of its own.

use std::time::Duration;

use crate::config::Config;
use crate::shutdown::Tasks;
use crate::storage::guard::{Guarded, StoreHealth};
use crate::storage::objects::ObjectBlobs;
use crate::storage::transfer::Importers;
use crate::storage::{
    AccountStore, AttachmentStore, Bus, ContactTokens, KeyStore, Lease, MessageQueue, PreKeyPool, Presence, Probe,
    PushSubscriptions, RateLimitStore, Storage, StoreResult, WakeupState, postgres, redis,
};

pub use crate::storage::postgres::Postgres;
pub use crate::storage::redis::RedisBus;

pub async fn migrate_only(config: &Config, database_url: &str) -> StoreResult<usize> {
    postgres::migrate_only(config, database_url).await
}

pub async fn connect(config: &Config, database_url: &str, redis_url: &str, tasks: &Tasks) -> StoreResult<Storage> {
    let timeout = Duration::from_millis(config.store_timeout_ms);
    let postgres = postgres::connect(config, database_url, timeout).await?;
    let redis = redis::connect(config, redis_url, timeout, tasks).await?;
    let (pg_health, redis_health) = (StoreHealth::new("postgres", timeout), StoreHealth::new("redis", timeout));
    let blobs = ObjectBlobs::open(config)?;
    let blobs_health = StoreHealth::new("objects", timeout);
    Ok(Storage {
        accounts: Guarded::<dyn AccountStore>::new(postgres.clone(), pg_health.clone()),
        keys: Guarded::<dyn KeyStore>::new(postgres.clone(), pg_health.clone()),
        pre_keys: Guarded::<dyn PreKeyPool>::new(redis.pre_keys, redis_health.clone()),
        queue: Guarded::<dyn MessageQueue>::new(redis.queue, redis_health.clone()),
        bus: Guarded::<dyn Bus>::new(redis.bus, redis_health.clone()),
        presence: Guarded::<dyn Presence>::new(redis.presence, redis_health.clone()),
        contacts: Guarded::<dyn ContactTokens>::new(postgres.clone(), pg_health.clone()),
        attachments: Guarded::<dyn AttachmentStore>::new(postgres.clone(), pg_health.clone()),
        blobs: blobs.clone(),
        lease: Guarded::<dyn Lease>::new(redis.lease, redis_health.clone()),
        push: Guarded::<dyn PushSubscriptions>::new(postgres.clone(), pg_health.clone()),
        wakeups: Guarded::<dyn WakeupState>::new(redis.wakeups, redis_health.clone()),
        limits: Guarded::<dyn RateLimitStore>::new(redis.limits, redis_health.clone()),
        inventory: postgres.clone(),
        queue_inventory: redis.import.clone(),
        import: Some(Importers { durable: postgres.clone(), ephemeral: redis.import }),
        probes: vec![
            Guarded::<dyn Probe>::new(postgres, pg_health.clone()),
            Guarded::<dyn Probe>::new(redis.probe, redis_health.clone()),
            Guarded::<dyn Probe>::new(blobs, blobs_health.clone()),
        ],
        health: vec![pg_health, redis_health, blobs_health],
        kind: "scale-out",
    })
}
