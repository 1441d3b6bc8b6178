//! Embedded deployment: one SQLite file (WAL) for everything durable and the one-time prekey pools, and
//! in-process token buckets. One process, no services.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};

use super::guard::{Guarded, StoreHealth};
use super::*;
use crate::config::{Config, RateLimit};
use crate::domain::{AccessKey, EcPublicKey, Incarnation, KemPublicKey, RegistrationId, Signature};
use crate::domain::{Aci, DeviceId, DeviceSlots};

const KIND_EC: i64 = 1;
const KIND_KEM: i64 = 2;

fn options(database_url: &str) -> StoreResult<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(database_url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10)))
}

fn ensure_parent(database_url: &str) -> StoreResult<()> {
    let path = database_url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Migration(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}

pub async fn migrate_only(_config: &Config, database_url: &str) -> StoreResult<usize> {
    ensure_parent(database_url)?;
    let mut conn = sqlx::SqliteConnection::connect_with(&options(database_url)?).await?;
    let ran = super::migrate::sqlite(&mut conn).await?;
    conn.close().await?;
    Ok(ran)
}

pub async fn connect(config: &Config, database_url: &str, _tasks: &crate::shutdown::Tasks) -> StoreResult<Storage> {
    migrate_only(config, database_url).await?;
    let (batches, queued) = tokio::sync::mpsc::channel(BATCH_QUEUE);
    // The writer never checkpoints on commit (that would put an fsync of the database file in front of
    // some unlucky message); a separate connection checkpoints in the background instead.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(database_url)?.pragma("wal_autocheckpoint", "0"))
        .await?;
    let checkpointer = sqlx::SqliteConnection::connect_with(&options(database_url)?).await?;
    tokio::spawn(checkpoint_regularly(checkpointer, batches.downgrade()));
    let reader = SqlitePoolOptions::new()
        .max_connections(config.database_max_connections.max(1))
        .connect_with(options(database_url)?.read_only(true))
        .await?;
    let bus = Arc::new(LocalBus::new());
    tokio::spawn(run_batches(writer.clone(), queued, bus.clone()));
    let limits = Arc::new(MemoryLimits::default());
    let db = Arc::new(Sqlite { reader, writer, batches, limits: limits.clone() });
    // A local file rarely fails, but a full disk or a stuck writer must answer 503 quickly like any store.
    let health = StoreHealth::new("sqlite", Duration::from_millis(config.store_timeout_ms));
    Ok(Storage {
        accounts: Guarded::<dyn AccountStore>::new(db.clone(), health.clone()),
        keys: Guarded::<dyn KeyStore>::new(db.clone(), health.clone()),
        pre_keys: Guarded::<dyn PreKeyPool>::new(db.clone(), health.clone()),
        queue: Guarded::<dyn MessageQueue>::new(db.clone(), health.clone()),
        bus,
        presence: Arc::new(MemoryPresence::default()),
        lease: Arc::new(MemoryLease::default()),
        limits,
        probes: vec![Guarded::<dyn Probe>::new(db, health.clone())],
        health: vec![health],
        kind: "embedded",
    })
}

/// The SQLite store.
///
/// SQLite allows one writer at a time. All writes go through a pool of exactly one connection, so they
/// queue in the pool (a cheap async wait) instead of colliding on the file lock, where SQLite's busy
/// handler would sleep and stretch latencies; reads use their own read-only connections, which WAL lets
/// run beside the writer.
pub struct Sqlite {
    reader: SqlitePool,
    writer: SqlitePool,
    /// The in-process buckets, also used for [`MessageQueue::push_limited`].
    limits: Arc<MemoryLimits>,
    /// The per-message writes (queue pushes and acknowledgements, prekey claims) go to a task that commits
    /// whatever has accumulated in one transaction: under load one commit serves many messages.
    batches: tokio::sync::mpsc::Sender<WriteOp>,
}

fn aci_text(aci: Aci) -> String {
    aci.to_string()
}

fn ec_key(bytes: &[u8]) -> StoreResult<EcPublicKey> {
    EcPublicKey::from_bytes("stored", bytes).map_err(|_| StoreError::Corrupt("ec key"))
}

fn kem_key(bytes: Vec<u8>) -> StoreResult<KemPublicKey> {
    if bytes.len() == KemPublicKey::LEN { Ok(KemPublicKey(bytes)) } else { Err(StoreError::Corrupt("kem key")) }
}

fn signature(bytes: &[u8]) -> StoreResult<Signature> {
    Ok(Signature(bytes.try_into().map_err(|_| StoreError::Corrupt("signature"))?))
}

fn registration_id(value: i64) -> StoreResult<RegistrationId> {
    RegistrationId::new(value).map_err(|_| StoreError::Corrupt("registration id"))
}

async fn add_device_locked(
    conn: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    aci: Aci,
    device: &NewDevice,
    slots: &DeviceSlots,
) -> StoreResult<Result<DeviceId, AddDeviceError>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT d.device_id FROM accounts a JOIN devices d ON d.aci = a.aci WHERE a.aci = ? ORDER BY d.device_id",
    )
    .bind(aci_text(aci))
    .fetch_all(&mut **conn)
    .await?;
    if ids.is_empty() {
        return Ok(Err(AddDeviceError::NoAccount));
    }
    let given_up: Vec<(i64, i64)> = sqlx::query_as("SELECT device_id, removed_at FROM removed_devices WHERE aci = ?")
        .bind(aci_text(aci))
        .fetch_all(&mut **conn)
        .await?;
    let taken: Vec<DeviceId> = ids.iter().map(|id| DeviceId(*id as u32)).collect();
    let given_up: Vec<(DeviceId, i64)> = given_up.into_iter().map(|(id, at)| (DeviceId(id as u32), at)).collect();
    let Some(DeviceId(id)) = slots.pick(&taken, &given_up) else {
        return Ok(Err(AddDeviceError::TooManyDevices));
    };
    let id = i64::from(id);
    sqlx::query(
        "INSERT INTO devices (aci, device_id, registration_id, incarnation, secret_salt, secret_hash, name, created_at,
                              last_seen_day)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(aci_text(aci))
    .bind(id)
    .bind(i64::from(device.registration_id.0))
    .bind(device.incarnation.0)
    .bind(&device.secret_salt[..])
    .bind(&device.secret_hash[..])
    .bind(device.name.as_deref())
    .bind(device.created_at)
    .bind(crate::domain::round_to_day(device.created_at))
    .execute(&mut **conn)
    .await?;
    Ok(Ok(DeviceId(id as u32)))
}

#[async_trait]
impl AccountStore for Sqlite {
    async fn create_account(
        &self,
        account: &NewAccount,
        invite: Option<[u8; 32]>,
        now: i64,
    ) -> StoreResult<Result<(), CreateAccountError>> {
        let mut tx = self.writer.begin().await?;
        if let Some(hash) = invite {
            let expires_at: Option<i64> =
                sqlx::query_scalar("DELETE FROM invites WHERE code_hash = ? RETURNING expires_at")
                    .bind(&hash[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            if !expires_at.is_some_and(|at| crate::domain::is_live(at, now)) {
                return Ok(Err(CreateAccountError::InvalidInvite));
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
            .execute(&self.writer)
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let result = add_device_locked(&mut tx, aci, device, slots).await?;
        if result.is_ok() {
            tx.commit().await?;
        }
        Ok(result)
    }

    async fn approve(&self, aci: Aci) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE accounts SET approved = 1 WHERE aci = ?")
            .bind(aci_text(aci))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn account(&self, aci: Aci) -> StoreResult<Option<Account>> {
        let row =
            sqlx::query("SELECT identity_key, access_key, unrestricted_access, approved FROM accounts WHERE aci = ?")
                .bind(aci_text(aci))
                .fetch_optional(&self.reader)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let access: Option<Vec<u8>> = row.try_get("access_key")?;
        Ok(Some(Account {
            aci,
            identity_key: ec_key(row.try_get::<Vec<u8>, _>("identity_key")?.as_slice())?,
            access_key: match access {
                Some(bytes) => {
                    Some(AccessKey(bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt("access key"))?))
                }
                None => None,
            },
            unrestricted_access: row.try_get("unrestricted_access")?,
            approved: row.try_get("approved")?,
        }))
    }

    async fn device_credentials(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<DeviceCredentials>> {
        let row = sqlx::query(
            "SELECT d.incarnation, d.secret_salt, d.secret_hash, a.approved FROM devices d JOIN accounts a ON a.aci = d.aci
             WHERE d.aci = ? AND d.device_id = ?",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| {
            Ok(DeviceCredentials {
                incarnation: Incarnation(row.try_get("incarnation")?),
                secret_salt: row.try_get("secret_salt")?,
                secret_hash: row.try_get("secret_hash")?,
                approved: row.try_get("approved")?,
            })
        })
        .transpose()
    }

    async fn touch_device(&self, aci: Aci, device: DeviceId, day: i64) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen_day = ? WHERE aci = ? AND device_id = ? AND last_seen_day < ?")
            .bind(day)
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .bind(day)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn devices(&self, aci: Aci) -> StoreResult<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT device_id, registration_id, incarnation, created_at, last_seen_day, name FROM devices
             WHERE aci = ? ORDER BY device_id",
        )
        .bind(aci_text(aci))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Device {
                    id: DeviceId(row.try_get::<i64, _>("device_id")? as u32),
                    registration_id: registration_id(row.try_get("registration_id")?)?,
                    incarnation: Incarnation(row.try_get("incarnation")?),
                    created_at: row.try_get("created_at")?,
                    last_seen_day: row.try_get("last_seen_day")?,
                    name: row.try_get("name")?,
                })
            })
            .collect()
    }

    async fn delete_device(&self, aci: Aci, device: DeviceId, now: i64) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await?;
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
        Ok(done.rows_affected() == 1)
    }

    async fn delete_account(&self, aci: Aci) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM accounts WHERE aci = ?").bind(aci_text(aci)).execute(&self.writer).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_access(&self, aci: Aci, key: Option<AccessKey>, unrestricted: bool) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE accounts SET access_key = ?, unrestricted_access = ? WHERE aci = ?")
            .bind(key.map(|k| k.0.to_vec()))
            .bind(unrestricted)
            .bind(aci_text(aci))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_link_code(&self, code_hash: [u8; 32], aci: Aci, expires_at: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO link_codes (code_hash, aci, expires_at) VALUES (?, ?, ?)")
            .bind(&code_hash[..])
            .bind(aci_text(aci))
            .bind(expires_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn consume_link_code(&self, code_hash: [u8; 32]) -> StoreResult<Option<(Aci, i64)>> {
        let row = sqlx::query("DELETE FROM link_codes WHERE code_hash = ? RETURNING aci, expires_at")
            .bind(&code_hash[..])
            .fetch_optional(&self.writer)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let aci = Aci::parse(&row.try_get::<String, _>("aci")?).ok_or(StoreError::Corrupt("aci"))?;
        Ok(Some((aci, row.try_get("expires_at")?)))
    }

    async fn reap_codes(&self, now: i64) -> StoreResult<u64> {
        let links = sqlx::query("DELETE FROM link_codes WHERE expires_at <= ?").bind(now).execute(&self.writer).await?;
        let invites = sqlx::query("DELETE FROM invites WHERE expires_at <= ?").bind(now).execute(&self.writer).await?;
        Ok(links.rows_affected() + invites.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for Sqlite {
    async fn put_signed(
        &self,
        aci: Aci,
        device: DeviceId,
        signed: Option<&SignedEcKey>,
        last_resort: Option<&SignedKemKey>,
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let parts = [
            signed.map(|k| (KIND_EC, k.key_id, k.public_key.0.to_vec(), k.signature.0)),
            last_resort.map(|k| (KIND_KEM, k.key_id, k.public_key.0.clone(), k.signature.0)),
        ];
        for (kind, key_id, public_key, signature) in parts.into_iter().flatten() {
            sqlx::query(
                "INSERT INTO signed_keys (aci, device_id, kind, key_id, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (aci, device_id, kind) DO UPDATE SET
                   key_id = excluded.key_id, public_key = excluded.public_key, signature = excluded.signature",
            )
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .bind(kind)
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
        let rows = sqlx::query(
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
        rows.into_iter()
            .map(|row| {
                Ok(DeviceKeys {
                    device: DeviceId(row.try_get::<i64, _>("device_id")? as u32),
                    registration_id: registration_id(row.try_get("registration_id")?)?,
                    signed_pre_key: SignedEcKey {
                        key_id: row.try_get::<i64, _>("ec_id")? as u32,
                        public_key: ec_key(&row.try_get::<Vec<u8>, _>("ec_key")?)?,
                        signature: signature(&row.try_get::<Vec<u8>, _>("ec_sig")?)?,
                    },
                    pq_last_resort: SignedKemKey {
                        key_id: row.try_get::<i64, _>("kem_id")? as u32,
                        public_key: kem_key(row.try_get("kem_key")?)?,
                        signature: signature(&row.try_get::<Vec<u8>, _>("kem_sig")?)?,
                    },
                })
            })
            .collect()
    }
}

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
            && let Err(wait) = self.limits.take(bucket.name, &bucket.key, &bucket.limit).await?
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
        let rows = sqlx::query(
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
        rows.into_iter()
            .map(|row| {
                let guid: Vec<u8> = row.try_get("guid")?;
                Ok(QueuedEnvelope {
                    seq: row.try_get::<i64, _>("seq")? as u64,
                    guid: guid.as_slice().try_into().map_err(|_| StoreError::Corrupt("guid"))?,
                    expires_at: row.try_get("expires_at")?,
                    envelope: row.try_get("envelope")?,
                })
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
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn reap(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM messages WHERE expires_at <= ?").bind(now).execute(&self.writer).await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl PreKeyPool for Sqlite {
    async fn replace(
        &self,
        aci: Aci,
        device: DeviceId,
        ec: Option<&[EcOneTimeKey]>,
        kem: Option<&[SignedKemKey]>,
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let lists: [(i64, Option<Vec<(u32, Vec<u8>, Option<[u8; 64]>)>>); 2] = [
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
                .bind(kind)
                .execute(&mut *tx)
                .await?;
            for (key_id, public_key, signature) in keys {
                sqlx::query(
                    "INSERT INTO one_time_keys (aci, device_id, kind, key_id, public_key, signature)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(aci_text(aci))
                .bind(i64::from(device.0))
                .bind(kind)
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
        let row = sqlx::query(
            "SELECT COALESCE(SUM(kind = 1), 0) AS ec, COALESCE(SUM(kind = 2), 0) AS kem
             FROM one_time_keys WHERE aci = ? AND device_id = ?",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .fetch_one(&self.reader)
        .await?;
        Ok((row.try_get::<i64, _>("ec")? as u32, row.try_get::<i64, _>("kem")? as u32))
    }

    async fn claim(&self, aci: Aci, device: DeviceId) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)> {
        self.batched(|reply| WriteOp::Claim { aci, device, reply }).await
    }

    async fn remove_device(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        sqlx::query("DELETE FROM one_time_keys WHERE aci = ? AND device_id = ?")
            .bind(aci_text(aci))
            .bind(i64::from(device.0))
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Probe for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    async fn check(&self) -> StoreResult<()> {
        self.ping().await
    }
}

/// In-process token buckets for the embedded deployment.
///
/// A `std::sync::Mutex` is right here: the critical section is a few arithmetic operations and never
/// awaits, so an async mutex would only add overhead.
#[derive(Default)]
pub struct MemoryLimits {
    buckets: Mutex<HashMap<BucketKey, Bucket>>,
}

/// Bucket name and pseudonymous key.
type BucketKey = (String, [u8; 16]);
/// Tokens left and when they were counted.
type Bucket = (f64, Instant);

/// Above this many buckets, full (idle) ones are dropped so memory stays bounded.
const MAX_BUCKETS: usize = 100_000;

#[async_trait]
impl RateLimitStore for MemoryLimits {
    async fn take(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> StoreResult<Result<(), Duration>> {
        let now = Instant::now();
        let capacity = f64::from(limit.burst);
        let rate = limit.refill_per_second();
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity);
        }
        let entry = buckets.entry((bucket.to_owned(), *key)).or_insert((capacity, now));
        let tokens = (entry.0 + now.duration_since(entry.1).as_secs_f64() * rate).min(capacity);
        if tokens >= 1.0 {
            *entry = (tokens - 1.0, now);
            Ok(Ok(()))
        } else {
            *entry = (tokens, now);
            Ok(Err(Duration::from_secs_f64((1.0 - tokens) / rate)))
        }
    }
}

/// In-process bus: events go straight to this process's delivery hub.
pub struct LocalBus {
    subscribed: Mutex<std::collections::HashSet<(Aci, DeviceId)>>,
    provisioning: Mutex<std::collections::HashSet<String>>,
    sender: tokio::sync::mpsc::UnboundedSender<BusMessage>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<BusMessage>>>,
}

impl LocalBus {
    pub fn new() -> Self {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        LocalBus {
            subscribed: Mutex::default(),
            provisioning: Mutex::default(),
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    /// Tells this process's socket of the device, if any, to look at its queue.
    pub fn wake(&self, aci: Aci, device: DeviceId) {
        if self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).contains(&(aci, device)) {
            let _ = self.sender.send(BusMessage::Device(aci, device, BusEvent::Wake));
        }
    }
}

/// Which devices have a socket in this process (one process: no expiry needed, but honoured).
#[derive(Default)]
pub struct MemoryPresence {
    connected: Mutex<HashMap<(Aci, DeviceId), (u64, Instant)>>,
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connected(&self, aci: Aci, device: DeviceId, connection: u64, ttl: Duration) -> StoreResult<()> {
        self.connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((aci, device), (connection, Instant::now() + ttl));
        Ok(())
    }

    async fn disconnected(&self, aci: Aci, device: DeviceId, connection: u64) -> StoreResult<()> {
        let mut connected = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        if connected.get(&(aci, device)).is_some_and(|(id, _)| *id == connection) {
            connected.remove(&(aci, device));
        }
        Ok(())
    }

    async fn is_connected(&self, aci: Aci, device: DeviceId) -> StoreResult<bool> {
        let connected = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        Ok(connected.get(&(aci, device)).is_some_and(|(_, until)| *until > Instant::now()))
    }
}

/// Leases of one process: granted to whoever asks while free; the fencing token still grows.
#[derive(Default)]
pub struct MemoryLease {
    held: Mutex<HashMap<String, (String, u64, Instant)>>,
    tokens: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Lease for MemoryLease {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<u64>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if held.get(name).is_some_and(|(_, _, until)| *until > now) {
            return Ok(None);
        }
        let token = self.tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        held.insert(name.to_owned(), (holder.to_owned(), token, now + ttl));
        Ok(Some(token))
    }

    async fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> StoreResult<bool> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match held.get_mut(name) {
            Some((who, t, until)) if who == holder && *t == token && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> StoreResult<()> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(name).is_some_and(|(who, t, _)| who == holder && *t == token) {
            held.remove(name);
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, aci: Aci, device: DeviceId, event: BusEvent) -> StoreResult<bool> {
        let listening = self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).contains(&(aci, device));
        if listening {
            // The receiver lives as long as the hub; a send error only means the server is stopping.
            let _ = self.sender.send(BusMessage::Device(aci, device, event));
        }
        Ok(listening)
    }

    async fn subscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).insert((aci, device));
        Ok(())
    }

    async fn unsubscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).remove(&(aci, device));
        Ok(())
    }

    async fn publish_provisioning(&self, address: &str, body: Vec<u8>) -> StoreResult<bool> {
        let listening = self.provisioning.lock().unwrap_or_else(|p| p.into_inner()).contains(address);
        if listening {
            let _ = self.sender.send(BusMessage::Provisioning(address.to_owned(), body));
        }
        Ok(listening)
    }

    async fn subscribe_provisioning(&self, address: &str) -> StoreResult<()> {
        self.provisioning.lock().unwrap_or_else(|p| p.into_inner()).insert(address.to_owned());
        Ok(())
    }

    async fn unsubscribe_provisioning(&self, address: &str) -> StoreResult<()> {
        self.provisioning.lock().unwrap_or_else(|p| p.into_inner()).remove(address);
        Ok(())
    }

    async fn publish_invalidation(&self, _aci: Aci) -> StoreResult<()> {
        // One process: the caller has already forgotten the account.
        Ok(())
    }

    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<BusMessage>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Ops waiting for the batch writer before senders have to wait for room.
const BATCH_QUEUE: usize = 4096;
/// Ops committed together at most.
const MAX_BATCH: usize = 256;

type Reply<T> = tokio::sync::oneshot::Sender<StoreResult<T>>;

/// One per-message write for the batch writer, with where to send its result.
enum WriteOp {
    Push { aci: Aci, items: Vec<(Recipient, NewEnvelope)>, max_len: u32, reply: Reply<PushOutcome> },
    Ack { aci: Aci, device: DeviceId, guids: Vec<[u8; 16]>, reply: Reply<u64> },
    Claim { aci: Aci, device: DeviceId, reply: Reply<(Option<EcOneTimeKey>, Option<SignedKemKey>)> },
}

/// The result of one op inside a transaction that is not committed yet.
enum Applied {
    Push(PushOutcome),
    Ack(u64),
    Claim((Option<EcOneTimeKey>, Option<SignedKemKey>)),
}

impl Sqlite {
    async fn batched<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> StoreResult<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batches.send(op(reply)).await.map_err(|_| StoreError::Failed("the batch writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Failed("the batch writer stopped".into()))?
    }
}

/// Takes whatever ops are waiting (at least one, at most [`MAX_BATCH`]) and commits them in one
/// transaction. Results are released only after the commit, so a push is answered only once it is durable.
/// If the batch fails as a whole, each op is retried alone, so one bad op cannot fail its neighbours.
async fn run_batches(pool: SqlitePool, mut queued: tokio::sync::mpsc::Receiver<WriteOp>, bus: Arc<LocalBus>) {
    let mut lengths = QueueLengths::default();
    while let Some(first) = queued.recv().await {
        if lengths.known.len() > MAX_KNOWN_LENGTHS {
            lengths.known.clear();
        }
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        metrics::histogram!("sealpost_sqlite_batch_size").record(ops.len() as f64);
        match apply_batch(&pool, &ops, &mut lengths).await {
            Ok(results) => {
                for (op, result) in ops.into_iter().zip(results) {
                    wake_if_queued(&bus, &op, &result);
                    answer(op, Ok(result));
                }
            }
            Err(_) if ops.len() > 1 => {
                for op in ops {
                    let result =
                        apply_batch(&pool, std::slice::from_ref(&op), &mut lengths).await.map(|mut r| r.remove(0));
                    if let Ok(applied) = &result {
                        wake_if_queued(&bus, &op, applied);
                    }
                    answer(op, result);
                }
            }
            Err(err) => {
                for op in ops {
                    answer(op, Err(StoreError::Failed(err.to_string())));
                }
            }
        }
    }
}

/// Once a push is committed, the sockets of its devices hear of it (the queue owns the wake-up).
fn wake_if_queued(bus: &LocalBus, op: &WriteOp, result: &Applied) {
    if let (WriteOp::Push { aci, items, .. }, Applied::Push(PushOutcome::Queued)) = (op, result) {
        for (recipient, _) in items {
            bus.wake(*aci, recipient.device);
        }
    }
}

fn answer(op: WriteOp, result: StoreResult<Applied>) {
    // A caller that went away (request cancelled) just does not hear the answer.
    match (op, result) {
        (WriteOp::Push { reply, .. }, Ok(Applied::Push(r))) => drop(reply.send(Ok(r))),
        (WriteOp::Ack { reply, .. }, Ok(Applied::Ack(r))) => drop(reply.send(Ok(r))),
        (WriteOp::Claim { reply, .. }, Ok(Applied::Claim(r))) => drop(reply.send(Ok(r))),
        (WriteOp::Push { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (WriteOp::Ack { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (WriteOp::Claim { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (op, Ok(_)) => answer(op, Err(StoreError::Corrupt("batch result of the wrong kind"))),
    }
}

/// Queue lengths the batch writer has counted, so a push need not count its queue with a query each time.
///
/// Only the writer changes queues, except device removal and the reaper, which can only shorten them; so
/// a known length is never below the truth, and a queue that looks full is counted again before a push is
/// refused.
#[derive(Default)]
struct QueueLengths {
    known: HashMap<(Aci, DeviceId), i64>,
    /// Lengths changed by the transaction in progress; merged into `known` only once it commits.
    pending: HashMap<(Aci, DeviceId), i64>,
}

/// Devices whose queue length the writer remembers at most.
const MAX_KNOWN_LENGTHS: usize = 100_000;

impl QueueLengths {
    fn get(&self, key: &(Aci, DeviceId)) -> Option<i64> {
        self.pending.get(key).or_else(|| self.known.get(key)).copied()
    }
}

async fn apply_batch(pool: &SqlitePool, ops: &[WriteOp], lengths: &mut QueueLengths) -> StoreResult<Vec<Applied>> {
    lengths.pending.clear();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            WriteOp::Push { aci, items, max_len, .. } => {
                Applied::Push(push_in(&mut tx, *aci, items, *max_len, lengths).await?)
            }
            WriteOp::Ack { aci, device, guids, .. } => {
                let mut deleted = 0;
                for guid in guids {
                    let done = sqlx::query("DELETE FROM messages WHERE guid = ? AND aci = ? AND device_id = ?")
                        .bind(&guid[..])
                        .bind(aci_text(*aci))
                        .bind(i64::from(device.0))
                        .execute(&mut *tx)
                        .await?;
                    deleted += done.rows_affected();
                }
                if let Some(length) = lengths.get(&(*aci, *device)) {
                    lengths.pending.insert((*aci, *device), (length - deleted as i64).max(0));
                }
                Applied::Ack(deleted)
            }
            WriteOp::Claim { aci, device, .. } => Applied::Claim(claim_in(&mut tx, *aci, *device).await?),
        });
    }
    tx.commit().await?;
    let committed = std::mem::take(&mut lengths.pending);
    lengths.known.extend(committed);
    Ok(results)
}

async fn push_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    aci: Aci,
    items: &[(Recipient, NewEnvelope)],
    max_len: u32,
    lengths: &mut QueueLengths,
) -> StoreResult<PushOutcome> {
    let now = crate::domain::now_millis();
    let max = i64::from(max_len);
    for (recipient, _) in items {
        // A device removed (or replaced) since the sender looked: refuse rather than fail on the foreign
        // key, or worse, queue for a successor.
        let incarnation: Option<i64> =
            sqlx::query_scalar("SELECT incarnation FROM devices WHERE aci = ? AND device_id = ?")
                .bind(aci_text(aci))
                .bind(i64::from(recipient.device.0))
                .fetch_optional(&mut **tx)
                .await?;
        if incarnation != Some(recipient.incarnation.0) {
            return Ok(PushOutcome::Gone(recipient.device));
        }
    }
    for (recipient, _) in items {
        let device = &recipient.device;
        let key = (aci, *device);
        let queued = match lengths.get(&key) {
            Some(known) if known < max => known,
            // Unknown, or looks full: count (expired envelopes are invisible and do not count).
            _ => {
                let counted: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM messages WHERE aci = ? AND device_id = ? AND expires_at > ?",
                )
                .bind(aci_text(aci))
                .bind(i64::from(device.0))
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                lengths.pending.insert(key, counted);
                counted
            }
        };
        if queued >= max {
            return Ok(PushOutcome::Full(*device));
        }
    }
    for (recipient, _) in items {
        let key = (aci, recipient.device);
        let length = lengths.get(&key).unwrap_or(0);
        lengths.pending.insert(key, length + 1);
    }
    for (recipient, item) in items {
        sqlx::query("INSERT INTO messages (aci, device_id, guid, expires_at, envelope) VALUES (?, ?, ?, ?, ?)")
            .bind(aci_text(aci))
            .bind(i64::from(recipient.device.0))
            .bind(&item.guid[..])
            .bind(item.expires_at)
            .bind(&item.envelope)
            .execute(&mut **tx)
            .await?;
    }
    Ok(PushOutcome::Queued)
}

async fn claim_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    aci: Aci,
    device: DeviceId,
) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)> {
    // One DELETE … RETURNING per kind, inside the writer's transaction: the row a caller deletes is the
    // row it receives, and nobody else can.
    const CLAIM: &str = "DELETE FROM one_time_keys WHERE rowid = (
             SELECT rowid FROM one_time_keys WHERE aci = ? AND device_id = ? AND kind = ? ORDER BY key_id LIMIT 1)
         RETURNING key_id, public_key, signature";
    let ec = sqlx::query(CLAIM)
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .bind(KIND_EC)
        .fetch_optional(&mut **tx)
        .await?;
    let kem = sqlx::query(CLAIM)
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .bind(KIND_KEM)
        .fetch_optional(&mut **tx)
        .await?;
    let ec = ec
        .map(|row| {
            Ok::<_, StoreError>(EcOneTimeKey {
                key_id: row.try_get::<i64, _>("key_id")? as u32,
                public_key: ec_key(&row.try_get::<Vec<u8>, _>("public_key")?)?,
            })
        })
        .transpose()?;
    let kem = kem
        .map(|row| {
            let sig: Option<Vec<u8>> = row.try_get("signature")?;
            Ok::<_, StoreError>(SignedKemKey {
                key_id: row.try_get::<i64, _>("key_id")? as u32,
                public_key: kem_key(row.try_get("public_key")?)?,
                signature: signature(&sig.ok_or(StoreError::Corrupt("kem signature"))?)?,
            })
        })
        .transpose()?;
    Ok((ec, kem))
}

/// How often the background checkpoint copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Keeps the WAL short with PASSIVE checkpoints, which wait for nobody and block no writer, so the fsync
/// they need happens off every request's path.
/// It stops once the store is gone (its batch channel has no sender left).
async fn checkpoint_regularly(mut conn: sqlx::SqliteConnection, alive: tokio::sync::mpsc::WeakSender<WriteOp>) {
    let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if alive.upgrade().is_none() {
            break;
        }
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            tracing::warn!(error = %err, "WAL checkpoint failed");
        }
    }
}
