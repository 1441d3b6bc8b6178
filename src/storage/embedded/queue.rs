//! Per-device envelope queues in SQLite (`messages`, ordered by `seq`).
//!
//! Owns the reads and bulk deletes of [`MessageQueue`]; pushes and acknowledgements are applied by the
//! group-commit writer (`writer.rs`), which checks and inserts inside its transaction. Invariants: an
//! expired envelope is never returned (every read filters on expiry, whether or not the reaper ran); a
//! push naming a removed device is refused, since the writer checks the device row in the transaction that
//! inserts. It never takes a rate-limit token except for a push, and then before the write is queued.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::writer::WriteOp;
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::{
    MessageQueue, NewEnvelope, PushOutcome, QueuedEnvelope, RateBucket, RateLimitStore, Recipient, StoreError,
    StoreResult,
};

#[async_trait]
impl MessageQueue for Sqlite {
    async fn push(
        &self,
        aci: Aci,
        items: &[(Recipient, NewEnvelope)],
        max_len: u32,
        bucket: Option<&RateBucket>,
    ) -> StoreResult<PushOutcome> {
        if let Some(bucket) = bucket
            && let Err(wait) = self.limits.take(bucket.name, &bucket.key, &bucket.limit, 1).await?
        {
            return Ok(PushOutcome::Limited(wait));
        }
        let op = |reply| WriteOp::Push { aci, items: items.to_vec(), max_len, reply };
        self.batched(op).await
    }

    async fn peek(
        &self,
        aci: Aci,
        device: DeviceId,
        after: u64,
        limit: usize,
        now: i64,
    ) -> StoreResult<Vec<QueuedEnvelope>> {
        let page: Vec<(i64, Vec<u8>, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, guid, expires_at, envelope FROM messages
             WHERE aci = ? AND device_id = ? AND seq > ? AND expires_at > ? ORDER BY seq LIMIT ?",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .bind(after as i64)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        page.into_iter()
            .map(|(seq, guid, expires_at, envelope)| {
                let guid = guid.as_slice().try_into().map_err(|_| StoreError::Corrupt("guid"))?;
                Ok(QueuedEnvelope { seq: seq as u64, guid, expires_at, envelope })
            })
            .collect()
    }

    async fn ack(&self, aci: Aci, device: DeviceId, guid: [u8; 16]) -> StoreResult<bool> {
        Ok(self.ack_many(aci, device, &[guid]).await? == 1)
    }

    async fn ack_many(&self, aci: Aci, device: DeviceId, guids: &[[u8; 16]]) -> StoreResult<u64> {
        let guids = guids.to_vec();
        self.batched(|reply| WriteOp::Ack { aci, device, guids, reply }).await
    }

    async fn remove_device(&self, aci: Aci, device: Recipient) -> StoreResult<()> {
        // Later pushes check the device row inside the writer's transaction, so once the row is gone
        // nothing more can be queued for it.
        sqlx::query("DELETE FROM messages WHERE aci = ? AND device_id = ?")
            .bind(aci_text(aci))
            .bind(i64::from(device.device.0))
            .execute(&*self.writer())
            .await?;
        Ok(())
    }

    async fn reap(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM messages WHERE expires_at <= ?").bind(now).execute(&*self.writer()).await?;
        Ok(done.rows_affected())
    }
}
