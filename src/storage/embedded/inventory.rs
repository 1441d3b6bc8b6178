//! Aggregate counts of the embedded database for `sealpost stats`.
//!
//! Owns the counting SQL. Invariants: it only reads (through the reader pool), and it returns numbers,
//! never a row's identifier.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::rows;
use crate::storage::transfer::{
    DurableCounts, DurableCountsRow, DurableInventory, QueueCounts, QueueInventory, QueuedAt,
};
use crate::storage::{StoreError, StoreResult};

#[async_trait]
impl DurableInventory for Sqlite {
    async fn counts(&self) -> StoreResult<DurableCounts> {
        let row: DurableCountsRow = sqlx::query_as(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM devices),
                        (SELECT count(*) FROM push_subscriptions), (SELECT count(*) FROM contact_tokens),
                        (SELECT count(*) FROM invites), (SELECT count(*) FROM attachments),
                        (SELECT COALESCE(SUM(length), 0) FROM attachments WHERE completed_at IS NOT NULL)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(row.into())
    }

    async fn devices_after(&self, after: Option<(Aci, DeviceId)>, limit: u32) -> StoreResult<Vec<(Aci, DeviceId)>> {
        let (aci, device) = after.map(|(a, d)| (aci_text(a), i64::from(d.0))).unwrap_or_default();
        let found: Vec<(String, i64)> = sqlx::query_as(
            "SELECT aci, device_id FROM devices WHERE (aci, device_id) > (?, ?) ORDER BY aci, device_id LIMIT ?",
        )
        .bind(aci)
        .bind(device)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        found
            .into_iter()
            .map(|(aci, device)| Ok((Aci::parse(&aci).ok_or(StoreError::Corrupt("aci"))?, rows::device_id(device)?)))
            .collect()
    }
}

#[async_trait]
impl QueueInventory for Sqlite {
    async fn queue_counts(&self, queued_at: QueuedAt<'_>, now: i64) -> StoreResult<QueueCounts> {
        let (envelopes, queues): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT aci || '.' || device_id) FROM messages WHERE expires_at > ?",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        // Sequence numbers grow with every insert across all queues: the smallest live one is the oldest.
        let oldest: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT envelope FROM messages WHERE expires_at > ? ORDER BY seq LIMIT 1")
                .bind(now)
                .fetch_optional(&self.reader)
                .await?;
        Ok(QueueCounts {
            envelopes: envelopes.max(0) as u64,
            queues: queues.max(0) as u64,
            oldest_queued_at: oldest.as_deref().and_then(queued_at),
        })
    }
}
