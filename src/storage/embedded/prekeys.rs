//! One-time prekey pools in SQLite (`one_time_keys`: kind 1 EC, kind 2 Kyber with its signature).
//!
//! Owns the SQL of [`PreKeyPool`]. A claim is served from the device's reserve (`reserve.rs`) when it holds
//! keys, else the group-commit writer (`writer.rs`) runs `prekey_rows::take` inside its transaction: a DELETE …
//! RETURNING of the next keys, the first for the caller and the rest for the reserve. Invariant: a
//! one-time prekey is returned to at most one caller, since the rows a claim deletes are the rows it
//! returns or reserves, and a reserved key leaves the reserve only once. It never hands out a key
//! without deleting it first.

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::reserve::{Claim, Claimed};
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
        // Before (no key put back at a stop lands in the new pool) and after (no key of the old one stays
        // reserved): see `reserve.rs`.
        self.reserves.forget(aci, device);
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
        self.reserves.forget(aci, device);
        Ok(())
    }

    /// What the table holds plus what the device's reserve holds: reserved keys are still to be handed out.
    async fn counts(&self, aci: Aci, device: DeviceId) -> StoreResult<(u32, u32)> {
        let (ec, kem): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(kind = 1), 0) AS ec, COALESCE(SUM(kind = 2), 0) AS kem
             FROM one_time_keys WHERE aci = ? AND device_id = ?",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .fetch_one(&self.reader)
        .await?;
        let (held_ec, held_kem) = self.reserves.held(aci, device);
        Ok((ec as u32 + held_ec as u32, kem as u32 + held_kem as u32))
    }

    async fn claim(&self, aci: Aci, device: DeviceId) -> StoreResult<Claimed> {
        let mut turn = None;
        let fetch = loop {
            match self.reserves.claim(aci, device, turn.is_some()) {
                Claim::Ready(claimed) => return Ok(claimed),
                Claim::Fetch(fetch) => break fetch,
                Claim::Queue(queue) => turn = Some(queue.lock_owned().await),
            }
        };
        let (ec, kem) = (fetch.ec, fetch.kem);
        match self.batched(|reply| WriteOp::Claim { aci, device, ec, kem, reply }).await {
            Ok(taken) => Ok(self.reserves.settle(aci, device, fetch, taken)),
            Err(err) => {
                self.reserves.put_back(aci, device, fetch);
                Err(err)
            }
        }
    }

    async fn remove_device(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.reserves.forget(aci, device);
        sqlx::query("DELETE FROM one_time_keys WHERE aci = ? AND device_id = ?")
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .execute(&*self.writer())
            .await?;
        self.reserves.forget(aci, device);
        Ok(())
    }
}
