//! The wakeups' short-lived notes in Redis (scale-out): which devices were woken lately, one key per device
//! expiring after the quiet period, and the wakeups waiting to be sent again, one sorted set by due time.
//!
//! Invariants: noting a wakeup is one script (compare the urgency, then `SET … PX`), so two instances
//! handling one burst send one wakeup between them; taking due retries is one script, so each retry is sent
//! by one instance; the retry set is bounded. It never holds anything but "woken lately" and the retries.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{KeysInterface, Pool};
use fred::types::scripts::Script;

use crate::domain::{Aci, DeviceId};
use crate::storage::redis::keys::Keys;
use crate::storage::{StoreError, StoreResult, WakeupRetry, WakeupState};

/// Redis: wakeup notes and retries, across instances.
pub struct RedisWakeups {
    pool: Pool,
    keys: Keys,
    mark: Script,
    schedule: Script,
    take_due: Script,
    /// Retries kept at most (`SEALPOST_PUSH_RETRY_BACKLOG`).
    max_retries: usize,
}

impl RedisWakeups {
    pub fn new(pool: Pool, keys: Keys, max_retries: usize) -> Self {
        RedisWakeups {
            pool,
            keys,
            mark: Script::from_lua(include_str!("scripts/wakeup_mark.lua")),
            schedule: Script::from_lua(include_str!("scripts/wakeup_schedule.lua")),
            take_due: Script::from_lua(include_str!("scripts/wakeup_take_due.lua")),
            max_retries,
        }
    }
}

#[async_trait]
impl WakeupState for RedisWakeups {
    async fn mark(&self, aci: Aci, device: DeviceId, urgent: bool, quiet: Duration) -> StoreResult<bool> {
        let key = self.keys.wakeup_mark(aci, device);
        let args = vec![if urgent { "2" } else { "1" }.to_owned(), quiet.as_millis().max(1).to_string()];
        let marked: i64 = self.mark.evalsha_with_reload(self.pool.next_connected(), vec![key], args).await?;
        Ok(marked == 1)
    }

    async fn clear(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        let _: i64 = self.pool.next_connected().del(self.keys.wakeup_mark(aci, device)).await?;
        Ok(())
    }

    async fn schedule_retry(&self, retry: &WakeupRetry) -> StoreResult<()> {
        let args = vec![retry.due_at.to_string(), retry.encode(), self.max_retries.to_string()];
        let key = self.keys.wakeup_retries();
        let _: i64 = self.schedule.evalsha_with_reload(self.pool.next_connected(), vec![key], args).await?;
        Ok(())
    }

    async fn take_due(&self, now: i64, limit: usize) -> StoreResult<Vec<WakeupRetry>> {
        let key = self.keys.wakeup_retries();
        let args = vec![now.to_string(), limit.max(1).to_string()];
        let due: Vec<String> = self.take_due.evalsha_with_reload(self.pool.next_connected(), vec![key], args).await?;
        due.chunks(2)
            .map(|pair| match pair {
                [member, score] => {
                    let due_at = score.parse::<f64>().map_err(|_| StoreError::Corrupt("retry due time"))? as i64;
                    WakeupRetry::decode(member, due_at).ok_or(StoreError::Corrupt("retry"))
                }
                _ => Err(StoreError::Corrupt("retry")),
            })
            .collect()
    }
}
