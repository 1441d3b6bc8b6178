//! Signed EC prekeys and last-resort Kyber keys in Postgres (`signed_keys`, one row of each kind per
//! device).
//!
//! Owns the SQL of [`KeyStore`]; rows are decoded in `storage::rows`. Invariant: a device is listed only
//! when it has both keys, so a bundle is never handed out half. Key ids are `u32` kept in a signed
//! `INTEGER` (wrapping above `i32::MAX`; `rows::key_id` undoes it). It never checks a signature: keys are
//! verified once, at the edge, before they reach a store.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::postgres::{Postgres, device_param};
use crate::storage::rows::{self, DeviceKeyColumns};
use crate::storage::{DeviceKeys, KeyStore, SignedEcKey, SignedKemKey, StoreResult};

#[async_trait]
impl KeyStore for Postgres {
    async fn put_signed(
        &self,
        aci: Aci,
        device: DeviceId,
        signed: Option<&SignedEcKey>,
        last_resort: Option<&SignedKemKey>,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for (kind, key_id, public_key, signature) in rows::signed_key_rows(signed, last_resort) {
            sqlx::query(
                "INSERT INTO signed_keys (aci, device_id, kind, key_id, public_key, signature)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (aci, device_id, kind) DO UPDATE SET
                   key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
            )
            .bind(aci.0)
            .bind(device_param(device))
            .bind(kind)
            .bind(key_id as i32)
            .bind(public_key)
            .bind(&signature[..])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn device_keys(&self, aci: Aci, only: Option<DeviceId>) -> StoreResult<Vec<DeviceKeys>> {
        let all: Vec<DeviceKeyColumns> = sqlx::query_as(
            "SELECT d.device_id::BIGINT, d.registration_id::BIGINT,
                    e.key_id::BIGINT AS ec_id, e.public_key AS ec_key, e.signature AS ec_sig,
                    k.key_id::BIGINT AS kem_id, k.public_key AS kem_key, k.signature AS kem_sig
             FROM devices d
             JOIN signed_keys e ON e.aci = d.aci AND e.device_id = d.device_id AND e.kind = 1
             JOIN signed_keys k ON k.aci = d.aci AND k.device_id = d.device_id AND k.kind = 2
             WHERE d.aci = $1 AND ($2::INTEGER IS NULL OR d.device_id = $2)
             ORDER BY d.device_id",
        )
        .bind(aci.0)
        .bind(only.map(device_param))
        .fetch_all(&self.pool)
        .await?;
        all.into_iter().map(rows::device_keys).collect()
    }
}
