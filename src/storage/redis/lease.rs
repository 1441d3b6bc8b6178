//! Named leases in Redis, so that a job runs on one instance at a time.
//!
//! A lease is a key holding its grant's fencing token and holder, with a TTL; the tokens come from a
//! counter beside it (same hash tag, so the scripts work on a cluster) that never expires, so every grant
//! of a name gets a larger token than the last. Invariants: at most one holder at a time (the grant is
//! `SET … NX PX` inside the script); renew and release act only while the key still holds that grant
//! (compare, then PEXPIRE or DEL, in one script), so a holder whose lease expired can neither extend nor
//! free its successor's. The same semantics as the embedded `MemoryLease`. It never reuses a token.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::Pool;
use fred::types::scripts::Script;

use crate::storage::redis::keys::Keys;
use crate::storage::{Lease, StoreError, StoreResult};

/// Redis: leases, across instances.
pub struct RedisLease {
    pool: Pool,
    keys: Keys,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl RedisLease {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        RedisLease {
            pool,
            keys,
            acquire: Script::from_lua(concat!(
                include_str!("scripts/lease_value.lua"),
                include_str!("scripts/lease_acquire.lua")
            )),
            renew: Script::from_lua(concat!(
                include_str!("scripts/lease_value.lua"),
                include_str!("scripts/lease_renew.lua")
            )),
            release: Script::from_lua(concat!(
                include_str!("scripts/lease_value.lua"),
                include_str!("scripts/lease_release.lua")
            )),
        }
    }
}

fn millis(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

#[async_trait]
impl Lease for RedisLease {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<u64>> {
        let keys = self.keys.lease(name).to_vec();
        let args = vec![holder.to_owned(), millis(ttl)];
        let token: Option<i64> = self.acquire.evalsha_with_reload(self.pool.next_connected(), keys, args).await?;
        token.map(|token| u64::try_from(token).map_err(|_| StoreError::Corrupt("fencing token"))).transpose()
    }

    async fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> StoreResult<bool> {
        let [lease, _] = self.keys.lease(name);
        let args = vec![holder.to_owned(), token.to_string(), millis(ttl)];
        let renewed: i64 = self.renew.evalsha_with_reload(self.pool.next_connected(), vec![lease], args).await?;
        Ok(renewed == 1)
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> StoreResult<()> {
        let [lease, _] = self.keys.lease(name);
        let args = vec![holder.to_owned(), token.to_string()];
        let _: i64 = self.release.evalsha_with_reload(self.pool.next_connected(), vec![lease], args).await?;
        Ok(())
    }
}
