//! Web Push subscriptions in Postgres.
//!
//! Owns the SQL of [`PushSubscriptions`]. Invariants: a subscription exists only beside its device (the
//! insert checks the device in the same statement, and the foreign key removes it with the device); only
//! the endpoint is stored.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::postgres::{Postgres, device_param};
use crate::storage::{PushSubscriptions, StoreResult};

#[async_trait]
impl PushSubscriptions for Postgres {
    async fn put_subscription(&self, aci: Aci, device: DeviceId, endpoint: &str, now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO push_subscriptions (aci, device_id, endpoint, created_at)
             SELECT aci, device_id, $1, $2 FROM devices WHERE aci = $3 AND device_id = $4
             ON CONFLICT (aci, device_id) DO UPDATE SET endpoint = excluded.endpoint, created_at = excluded.created_at",
        )
        .bind(endpoint)
        .bind(now)
        .bind(aci.0)
        .bind(device_param(device))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn subscription(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT endpoint FROM push_subscriptions WHERE aci = $1 AND device_id = $2")
            .bind(aci.0)
            .bind(device_param(device))
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn delete_subscription(&self, aci: Aci, device: DeviceId, only: Option<&str>) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM push_subscriptions WHERE aci = $1 AND device_id = $2 AND ($3::text IS NULL OR endpoint = $3)",
        )
        .bind(aci.0)
        .bind(device_param(device))
        .bind(only)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
