//! Accounts, devices, invite and link codes in Postgres.
//!
//! Owns the SQL of [`AccountStore`]; what a row means is decoded in `storage::rows`, and which device id is
//! free or whether a code is live is decided in `domain`. Invariants: linking a device locks the account
//! row first (`FOR UPDATE`), so two concurrent links of one account cannot both take the last place; an
//! invite is deleted in the transaction that creates the account, so it works once. It never keeps a
//! device secret other than as its salted hash.

use async_trait::async_trait;

use crate::domain::{AccessKey, Aci, DeviceId, DeviceSlots};
use crate::storage::postgres::{Postgres, device_param};
use crate::storage::rows::{self, AccountColumns, CredentialColumns, DeviceColumns};
use crate::storage::{
    Account, AccountStore, AddDeviceError, CreateAccountError, Device, DeviceCredentials, IdleDevice, NewAccount,
    NewDevice, StoreError, StoreResult,
};

/// Devices not seen since a day, but a primary only when its whole account is idle.
const IDLE_DEVICES: &str = "SELECT d.aci, d.device_id FROM devices d
     WHERE d.last_seen_day < $1
       AND (d.device_id <> 1 OR NOT EXISTS (SELECT 1 FROM devices e WHERE e.aci = d.aci AND e.last_seen_day >= $1))
     ORDER BY d.last_seen_day LIMIT $2";

#[async_trait]
impl AccountStore for Postgres {
    async fn create_account(
        &self,
        account: &NewAccount,
        invite: Option<[u8; 32]>,
        now: i64,
    ) -> StoreResult<Result<(), CreateAccountError>> {
        let mut tx = self.pool.begin().await?;
        if let Some(hash) = invite {
            let expires_at: Option<i64> =
                sqlx::query_scalar("DELETE FROM invites WHERE code_hash = $1 RETURNING expires_at")
                    .bind(&hash[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Err(refused) = rows::invite_accepted(expires_at, now) {
                return Ok(Err(refused));
            }
        }
        sqlx::query("INSERT INTO accounts (aci, identity_key, approved, created_at) VALUES ($1, $2, $3, $4)")
            .bind(account.aci.0)
            .bind(&account.identity_key.0[..])
            .bind(account.approved)
            .bind(account.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO devices (aci, device_id, registration_id, incarnation, secret_salt, secret_hash, created_at,
                                  last_seen_day)
             VALUES ($1, 1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account.aci.0)
        .bind(i32::from(account.registration_id.0))
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
        sqlx::query("INSERT INTO invites (code_hash, expires_at) VALUES ($1, $2)")
            .bind(&code_hash[..])
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_device(
        &self,
        aci: Aci,
        device: &NewDevice,
        slots: &DeviceSlots,
    ) -> StoreResult<Result<DeviceId, AddDeviceError>> {
        let mut tx = self.pool.begin().await?;
        // Locking the account row serialises concurrent links of one account.
        let locked: Option<i32> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE aci = $1 FOR UPDATE")
            .bind(aci.0)
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            return Ok(Err(AddDeviceError::NoAccount));
        }
        let taken: Vec<i64> = sqlx::query_scalar("SELECT device_id::BIGINT FROM devices WHERE aci = $1")
            .bind(aci.0)
            .fetch_all(&mut *tx)
            .await?;
        let given_up: Vec<(i64, i64)> =
            sqlx::query_as("SELECT device_id::BIGINT, removed_at FROM removed_devices WHERE aci = $1")
                .bind(aci.0)
                .fetch_all(&mut *tx)
                .await?;
        let id = match rows::free_device_id(slots, &taken, &given_up)? {
            Ok(id) => id,
            Err(refused) => return Ok(Err(refused)),
        };
        sqlx::query(
            "INSERT INTO devices (aci, device_id, registration_id, incarnation, secret_salt, secret_hash, name, created_at,
                                  last_seen_day)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(aci.0)
        .bind(device_param(id))
        .bind(i32::from(device.registration_id.0))
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
        let done =
            sqlx::query("UPDATE accounts SET approved = TRUE WHERE aci = $1").bind(aci.0).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn account(&self, aci: Aci) -> StoreResult<Option<Account>> {
        let columns: Option<AccountColumns> = sqlx::query_as(
            "SELECT identity_key, access_key, unrestricted_access, approved FROM accounts WHERE aci = $1",
        )
        .bind(aci.0)
        .fetch_optional(&self.pool)
        .await?;
        columns.map(|columns| rows::account(aci, columns)).transpose()
    }

    async fn device_credentials(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<DeviceCredentials>> {
        let columns: Option<CredentialColumns> = sqlx::query_as(
            "SELECT d.incarnation, d.secret_salt, d.secret_hash, a.approved FROM devices d JOIN accounts a ON a.aci = d.aci
             WHERE d.aci = $1 AND d.device_id = $2",
        )
        .bind(aci.0)
        .bind(device_param(device))
        .fetch_optional(&self.pool)
        .await?;
        Ok(columns.map(rows::credentials))
    }

    async fn touch_device(&self, aci: Aci, device: DeviceId, day: i64) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen_day = $1 WHERE aci = $2 AND device_id = $3 AND last_seen_day < $1")
            .bind(day)
            .bind(aci.0)
            .bind(device_param(device))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn devices(&self, aci: Aci) -> StoreResult<Vec<Device>> {
        let all: Vec<DeviceColumns> = sqlx::query_as(
            "SELECT device_id::BIGINT, registration_id::BIGINT, incarnation, created_at, last_seen_day, name
             FROM devices WHERE aci = $1 ORDER BY device_id",
        )
        .bind(aci.0)
        .fetch_all(&self.pool)
        .await?;
        all.into_iter().map(rows::device).collect()
    }

    async fn delete_device(&self, aci: Aci, device: DeviceId, now: i64) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM devices WHERE aci = $1 AND device_id = $2")
            .bind(aci.0)
            .bind(device_param(device))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO removed_devices (aci, device_id, removed_at) VALUES ($1, $2, $3)
                 ON CONFLICT (aci, device_id) DO UPDATE SET removed_at = EXCLUDED.removed_at",
            )
            .bind(aci.0)
            .bind(device_param(device))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_account(&self, aci: Aci) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM accounts WHERE aci = $1").bind(aci.0).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_access(&self, aci: Aci, key: Option<AccessKey>, unrestricted: bool) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE accounts SET access_key = $1, unrestricted_access = $2 WHERE aci = $3")
            .bind(key.map(|k| k.0.to_vec()))
            .bind(unrestricted)
            .bind(aci.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_link_code(&self, code_hash: [u8; 32], aci: Aci, expires_at: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO link_codes (code_hash, aci, expires_at) VALUES ($1, $2, $3)")
            .bind(&code_hash[..])
            .bind(aci.0)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn consume_link_code(&self, code_hash: [u8; 32]) -> StoreResult<Option<(Aci, i64)>> {
        let spent: Option<(uuid::Uuid, i64)> =
            sqlx::query_as("DELETE FROM link_codes WHERE code_hash = $1 RETURNING aci, expires_at")
                .bind(&code_hash[..])
                .fetch_optional(&self.pool)
                .await?;
        Ok(spent.map(|(aci, expires_at)| (Aci(aci), expires_at)))
    }

    async fn reap_codes(&self, now: i64) -> StoreResult<u64> {
        let links = sqlx::query("DELETE FROM link_codes WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        let invites = sqlx::query("DELETE FROM invites WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        Ok(links.rows_affected() + invites.rows_affected())
    }

    async fn idle_devices(&self, seen_before: i64, limit: u32) -> StoreResult<Vec<IdleDevice>> {
        let rows: Vec<(uuid::Uuid, i32)> =
            sqlx::query_as(IDLE_DEVICES).bind(seen_before).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(aci, device)| {
                let device = u32::try_from(device).map(DeviceId).map_err(|_| StoreError::Corrupt("device id"))?;
                Ok(IdleDevice { aci: Aci(aci), device })
            })
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
