//! Which devices have a socket open on any instance, in Redis: one key per device holding the id of the
//! connection that marked it, expiring unless the socket renews it.
//!
//! Invariants: a mark never replaces a newer connection's, and an unmark only deletes the key while it still
//! holds the connection id given (compare and set, compare and delete, each one script), so neither a late
//! renewal nor the late goodbye of an older socket hides a newer one; a crashed
//! instance's marks vanish within their TTL. The same semantics as the embedded `MemoryPresence`. It never
//! records anything about a device beyond "connected now", and nothing outlives the TTL.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{KeysInterface, Pool};
use fred::types::scripts::Script;

use crate::domain::{Aci, DeviceId};
use crate::storage::redis::keys::Keys;
use crate::storage::{Presence, StoreResult};

/// Redis: presence of devices, across instances.
pub struct RedisPresence {
    pool: Pool,
    keys: Keys,
    connect: Script,
    disconnect: Script,
}

impl RedisPresence {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        RedisPresence {
            pool,
            keys,
            connect: Script::from_lua(include_str!("scripts/presence_connect.lua")),
            disconnect: Script::from_lua(include_str!("scripts/presence_disconnect.lua")),
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn connected(&self, aci: Aci, device: DeviceId, connection: u64, ttl: Duration) -> StoreResult<()> {
        let ttl = ttl.as_millis().clamp(1, i64::MAX as u128).to_string();
        let key = self.keys.presence(aci, device);
        let client = self.pool.next_connected();
        let _: i64 = self.connect.evalsha_with_reload(client, vec![key], vec![connection.to_string(), ttl]).await?;
        Ok(())
    }

    async fn disconnected(&self, aci: Aci, device: DeviceId, connection: u64) -> StoreResult<()> {
        let key = self.keys.presence(aci, device);
        let client = self.pool.next_connected();
        let _: i64 = self.disconnect.evalsha_with_reload(client, vec![key], vec![connection.to_string()]).await?;
        Ok(())
    }

    async fn is_connected(&self, aci: Aci, device: DeviceId) -> StoreResult<bool> {
        let present: i64 = self.pool.next_connected().exists(self.keys.presence(aci, device)).await?;
        Ok(present > 0)
    }
}
