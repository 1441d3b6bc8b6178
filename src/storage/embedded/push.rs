//! Web Push subscriptions in SQLite.
//!
//! Owns the SQL of [`PushSubscriptions`]. Invariants: a subscription exists only beside its device (the
//! insert checks the device in the same statement, and the foreign key removes it with the device); only
//! the endpoint is stored.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::{PushSubscriptions, StoreResult};

#[async_trait]
impl PushSubscriptions for Sqlite {
    async fn put_subscription(&self, aci: Aci, device: DeviceId, endpoint: &str, now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO push_subscriptions (aci, device_id, endpoint, created_at)
             SELECT aci, device_id, ?, ? FROM devices WHERE aci = ? AND device_id = ?
             ON CONFLICT (aci, device_id) DO UPDATE SET endpoint = excluded.endpoint, created_at = excluded.created_at",
        )
        .bind(endpoint)
        .bind(now)
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .execute(&*self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn subscription(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT endpoint FROM push_subscriptions WHERE aci = ? AND device_id = ?")
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .fetch_optional(&self.reader)
            .await?)
    }

    async fn delete_subscription(&self, aci: Aci, device: DeviceId, only: Option<&str>) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM push_subscriptions WHERE aci = ? AND device_id = ? AND (? IS NULL OR endpoint = ?)",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .bind(only)
        .bind(only)
        .execute(&*self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
