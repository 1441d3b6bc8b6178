//! One-time prekey pools in SQLite (`one_time_keys`: kind 1 EC, kind 2 Kyber with its signature).
//!
//! Owns the SQL of [`PreKeyPool`] except the claim, which the group-commit writer (`writer.rs`) runs as a
//! DELETE … RETURNING inside its transaction. Invariant: a one-time prekey is returned to at most one
//! caller, since the row a claim deletes is the row it returns. It never hands out a key without
//! deleting it.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::writer::WriteOp;
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::rows::{KIND_EC, KIND_KEM};
use crate::storage::{EcOneTimeKey, PreKeyPool, SignedKemKey, StoreResult};

/// A pool entry as the table holds it: key id, public key, signature (Kyber keys only).
type PoolRow = (u32, Vec<u8>, Option<[u8; 64]>);

#[async_trait]
impl PreKeyPool for Sqlite {
    async fn replace(
        &self,
        aci: Aci,
        device: DeviceId,
        ec: Option<&[EcOneTimeKey]>,
        kem: Option<&[SignedKemKey]>,
    ) -> StoreResult<()> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let lists: [(i16, Option<Vec<PoolRow>>); 2] = [
            (KIND_EC, ec.map(|keys| keys.iter().map(|k| (k.key_id, k.public_key.0.to_vec(), None)).collect())),
            (
                KIND_KEM,
                kem.map(|keys| keys.iter().map(|k| (k.key_id, k.public_key.0.clone(), Some(k.signature.0))).collect()),
            ),
        ];
        for (kind, keys) in lists {
            let Some(keys) = keys else { continue };
            sqlx::query("DELETE FROM one_time_keys WHERE aci = ? AND device_id = ? AND kind = ?")
                .bind(aci_text(aci))
                .bind(i64::from(device.0))
                .bind(i64::from(kind))
                .execute(&mut *tx)
                .await?;
            for (key_id, public_key, signature) in keys {
                sqlx::query(
                    "INSERT INTO one_time_keys (aci, device_id, kind, key_id, public_key, signature)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(aci_text(aci))
                .bind(i64::from(device.0))
                .bind(i64::from(kind))
                .bind(i64::from(key_id))
                .bind(public_key)
                .bind(signature.map(|s| s.to_vec()))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn counts(&self, aci: Aci, device: DeviceId) -> StoreResult<(u32, u32)> {
        let (ec, kem): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(kind = 1), 0) AS ec, COALESCE(SUM(kind = 2), 0) AS kem
             FROM one_time_keys WHERE aci = ? AND device_id = ?",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .fetch_one(&self.reader)
        .await?;
        Ok((ec as u32, kem as u32))
    }

    async fn claim(&self, aci: Aci, device: DeviceId) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)> {
        self.batched(|reply| WriteOp::Claim { aci, device, reply }).await
    }

    async fn remove_device(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        sqlx::query("DELETE FROM one_time_keys WHERE aci = ? AND device_id = ?")
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .execute(&*self.writer())
            .await?;
        Ok(())
    }
}
