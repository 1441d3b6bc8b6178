//! Signed EC prekeys and last-resort Kyber keys in SQLite (`signed_keys`, one row of each kind per device).
//!
//! Owns the SQL of [`KeyStore`]; rows are decoded in `storage::rows`. Invariant: a device is listed only
//! when it has both keys, so a bundle is never handed out half. It never checks a signature: keys are
//! verified once, at the edge, before they reach a store.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::rows::{self, DeviceKeyColumns};
use crate::storage::{DeviceKeys, KeyStore, SignedEcKey, SignedKemKey, StoreResult};

#[async_trait]
impl KeyStore for Sqlite {
    async fn put_signed(
        &self,
        aci: Aci,
        device: DeviceId,
        signed: Option<&SignedEcKey>,
        last_resort: Option<&SignedKemKey>,
    ) -> StoreResult<()> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        for (kind, key_id, public_key, signature) in rows::signed_key_rows(signed, last_resort) {
            sqlx::query(
                "INSERT INTO signed_keys (aci, device_id, kind, key_id, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (aci, device_id, kind) DO UPDATE SET
                   key_id = excluded.key_id, public_key = excluded.public_key, signature = excluded.signature",
            )
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .bind(i64::from(kind))
            .bind(i64::from(key_id))
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
            "SELECT d.device_id, d.registration_id,
                    e.key_id AS ec_id, e.public_key AS ec_key, e.signature AS ec_sig,
                    k.key_id AS kem_id, k.public_key AS kem_key, k.signature AS kem_sig
             FROM devices d
             JOIN signed_keys e ON e.aci = d.aci AND e.device_id = d.device_id AND e.kind = 1
             JOIN signed_keys k ON k.aci = d.aci AND k.device_id = d.device_id AND k.kind = 2
             WHERE d.aci = ? AND (? IS NULL OR d.device_id = ?)
             ORDER BY d.device_id",
        )
        .bind(aci_text(aci))
        .bind(only.map(|d| i64::from(d.0)))
        .bind(only.map(|d| i64::from(d.0)))
        .fetch_all(&self.reader)
        .await?;
        all.into_iter().map(rows::device_keys).collect()
    }
}
