//! Accounts, devices, invite and link codes in SQLite.
//!
//! Owns the SQL of [`AccountStore`]; what a row means is decoded in `storage::rows`, and which device id is
//! free or whether a code is live is decided in `domain`. Invariants: a write that reads first (linking a
//! device, spending an invite) holds the write lock from its first read (`BEGIN IMMEDIATE` or the writer's
//! own transaction), so two concurrent links cannot both take the last place. Plain reads use the reader
//! pool, never the one writer connection.

use async_trait::async_trait;

use crate::domain::{AccessKey, Aci, DeviceId, DeviceSlots};
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::rows::{self, AccountColumns, CredentialColumns, DeviceColumns};
use crate::storage::{
    Account, AccountStore, AddDeviceError, CreateAccountError, Device, DeviceCredentials, IdleDevice, NewAccount,
    NewDevice, StoreError, StoreResult,
};

/// Devices not seen since a day, but a primary only when its whole account is idle.
const IDLE_DEVICES: &str = "SELECT d.aci, d.device_id FROM devices d
     WHERE d.last_seen_day < ?1
       AND (d.device_id <> 1 OR NOT EXISTS (SELECT 1 FROM devices e WHERE e.aci = d.aci AND e.last_seen_day >= ?1))
     ORDER BY d.last_seen_day LIMIT ?2";

#[async_trait]
impl AccountStore for Sqlite {
    async fn create_account(
        &self,
        account: &NewAccount,
        invite: Option<[u8; 32]>,
        now: i64,
    ) -> StoreResult<Result<(), CreateAccountError>> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        if let Some(hash) = invite {
            let expires_at: Option<i64> =
                sqlx::query_scalar("DELETE FROM invites WHERE code_hash = ? RETURNING expires_at")
                    .bind(&hash[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Err(refused) = rows::invite_accepted(expires_at, now) {
                return Ok(Err(refused));
            }
        }
        sqlx::query("INSERT INTO accounts (aci, identity_key, approved, created_at) VALUES (?, ?, ?, ?)")
            .bind(aci_text(account.aci))
            .bind(&account.identity_key.0[..])
            .bind(account.approved)
            .bind(account.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO devices (aci, device_id, registration_id, incarnation, secret_salt, secret_hash, created_at,
                                  last_seen_day)
             VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
        )
        .bind(aci_text(account.aci))
        .bind(i64::from(account.registration_id.0))
        .bind(account.incarnation.0)
        .bind(&account.secret_salt[..])
        .bind(&account.secret_hash[..])
        .bind(account.created_at)
        .bind(crate::domain::round_to_day(account.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn create_invite(&self, code_hash: [u8; 32], expires_at: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO invites (code_hash, expires_at) VALUES (?, ?)")
            .bind(&code_hash[..])
            .bind(expires_at)
            .execute(&*self.writer())
            .await?;
        Ok(())
    }

    async fn add_device(
        &self,
        aci: Aci,
        device: &NewDevice,
        slots: &DeviceSlots,
    ) -> StoreResult<Result<DeviceId, AddDeviceError>> {
        // BEGIN IMMEDIATE takes the write lock before reading, so the count cannot change under us.
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let taken: Vec<i64> = sqlx::query_scalar(
            "SELECT d.device_id FROM accounts a JOIN devices d ON d.aci = a.aci WHERE a.aci = ? ORDER BY d.device_id",
        )
        .bind(aci_text(aci))
        .fetch_all(&mut *tx)
        .await?;
        if taken.is_empty() {
            return Ok(Err(AddDeviceError::NoAccount));
        }
        let given_up: Vec<(i64, i64)> =
            sqlx::query_as("SELECT device_id, removed_at FROM removed_devices WHERE aci = ?")
                .bind(aci_text(aci))
                .fetch_all(&mut *tx)
                .await?;
        let id = match rows::free_device_id(slots, &taken, &given_up)? {
            Ok(id) => id,
            Err(refused) => return Ok(Err(refused)),
        };
        sqlx::query(
            "INSERT INTO devices (aci, device_id, registration_id, incarnation, secret_salt, secret_hash, name, created_at,
                                  last_seen_day)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(aci_text(aci))
        .bind(i64::from(id.0))
        .bind(i64::from(device.registration_id.0))
        .bind(device.incarnation.0)
        .bind(&device.secret_salt[..])
        .bind(&device.secret_hash[..])
        .bind(device.name.as_deref())
        .bind(device.created_at)
        .bind(crate::domain::round_to_day(device.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(id))
    }

    async fn approve(&self, aci: Aci) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE accounts SET approved = 1 WHERE aci = ?")
            .bind(aci_text(aci))
            .execute(&*self.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn account(&self, aci: Aci) -> StoreResult<Option<Account>> {
        let columns: Option<AccountColumns> = sqlx::query_as(
            "SELECT identity_key, access_key, unrestricted_access, approved FROM accounts WHERE aci = ?",
        )
        .bind(aci_text(aci))
        .fetch_optional(&self.reader)
        .await?;
        columns.map(|columns| rows::account(aci, columns)).transpose()
    }

    async fn device_credentials(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<DeviceCredentials>> {
        let columns: Option<CredentialColumns> = sqlx::query_as(
            "SELECT d.incarnation, d.secret_salt, d.secret_hash, a.approved FROM devices d JOIN accounts a ON a.aci = d.aci
             WHERE d.aci = ? AND d.device_id = ?",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .fetch_optional(&self.reader)
        .await?;
        Ok(columns.map(rows::credentials))
    }

    async fn touch_device(&self, aci: Aci, device: DeviceId, day: i64) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen_day = ? WHERE aci = ? AND device_id = ? AND last_seen_day < ?")
            .bind(day)
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .bind(day)
            .execute(&*self.writer())
            .await?;
        Ok(())
    }

    async fn devices(&self, aci: Aci) -> StoreResult<Vec<Device>> {
        let all: Vec<DeviceColumns> = sqlx::query_as(
            "SELECT device_id, registration_id, incarnation, created_at, last_seen_day, name FROM devices
             WHERE aci = ? ORDER BY device_id",
        )
        .bind(aci_text(aci))
        .fetch_all(&self.reader)
        .await?;
        all.into_iter().map(rows::device).collect()
    }

    async fn delete_device(&self, aci: Aci, device: DeviceId, now: i64) -> StoreResult<bool> {
        // Its one-time keys go with it (a cascade), and so must what the reserves hold of them.
        self.reserves.forget(aci, device);
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("DELETE FROM devices WHERE aci = ? AND device_id = ?")
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO removed_devices (aci, device_id, removed_at) VALUES (?, ?, ?)
                 ON CONFLICT (aci, device_id) DO UPDATE SET removed_at = excluded.removed_at",
            )
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.reserves.forget(aci, device);
        Ok(done.rows_affected() == 1)
    }

    async fn delete_account(&self, aci: Aci) -> StoreResult<bool> {
        self.reserves.forget_account(aci);
        let done =
            sqlx::query("DELETE FROM accounts WHERE aci = ?").bind(aci_text(aci)).execute(&*self.writer()).await?;
        self.reserves.forget_account(aci);
        Ok(done.rows_affected() == 1)
    }

    async fn set_access(&self, aci: Aci, key: Option<AccessKey>, unrestricted: bool) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE accounts SET access_key = ?, unrestricted_access = ? WHERE aci = ?")
            .bind(key.map(|k| k.0.to_vec()))
            .bind(unrestricted)
            .bind(aci_text(aci))
            .execute(&*self.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_link_code(&self, code_hash: [u8; 32], aci: Aci, expires_at: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO link_codes (code_hash, aci, expires_at) VALUES (?, ?, ?)")
            .bind(&code_hash[..])
            .bind(aci_text(aci))
            .bind(expires_at)
            .execute(&*self.writer())
            .await?;
        Ok(())
    }

    async fn consume_link_code(&self, code_hash: [u8; 32]) -> StoreResult<Option<(Aci, i64)>> {
        let spent: Option<(String, i64)> =
            sqlx::query_as("DELETE FROM link_codes WHERE code_hash = ? RETURNING aci, expires_at")
                .bind(&code_hash[..])
                .fetch_optional(&*self.writer())
                .await?;
        let Some((aci, expires_at)) = spent else { return Ok(None) };
        Ok(Some((Aci::parse(&aci).ok_or(StoreError::Corrupt("aci"))?, expires_at)))
    }

    async fn reap_codes(&self, now: i64) -> StoreResult<u64> {
        let links =
            sqlx::query("DELETE FROM link_codes WHERE expires_at <= ?").bind(now).execute(&*self.writer()).await?;
        let invites =
            sqlx::query("DELETE FROM invites WHERE expires_at <= ?").bind(now).execute(&*self.writer()).await?;
        Ok(links.rows_affected() + invites.rows_affected())
    }

    async fn idle_devices(&self, seen_before: i64, limit: u32) -> StoreResult<Vec<IdleDevice>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as(IDLE_DEVICES).bind(seen_before).bind(i64::from(limit)).fetch_all(&self.reader).await?;
        rows.into_iter()
            .map(|(aci, device)| {
                let aci = Aci::parse(&aci).ok_or(StoreError::Corrupt("aci"))?;
                let device = u32::try_from(device).map(DeviceId).map_err(|_| StoreError::Corrupt("device id"))?;
                Ok(IdleDevice { aci, device })
            })
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
