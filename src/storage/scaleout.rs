//! Scale-out deployment: Postgres for durable records, Redis (or Redis Cluster, same code path through
//! fred's cluster configuration) for one-time prekey pools, message queues, rate-limit buckets and the
//! pub/sub bus. Any number of sealpost instances can share them.
//!
//! Redis keys all start with the configured prefix. Keys that a script touches together share a hash tag
//! (`{aci.device}`), so every script runs on one cluster slot.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, KeysInterface, Pool as RedisPool};
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Row};

use super::guard::{Guarded, StoreHealth};
use super::*;
use crate::config::{Config, RateLimit};
use crate::domain::{AccessKey, EcPublicKey, Incarnation, KemPublicKey, RegistrationId, Signature};
use crate::domain::{Aci, DeviceId, DeviceSlots};

const KIND_EC: i16 = 1;
const KIND_KEM: i16 = 2;

async fn pg_options(config: &Config, database_url: &str) -> StoreResult<PgConnectOptions> {
    let options = PgConnectOptions::from_str(database_url)?;
    let Some(schema) = &config.database_schema else { return Ok(options) };
    // The schema name was checked to be [a-z0-9_]+ by Config::validate, so quoting it is safe.
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    let created = sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).execute(&mut conn).await;
    if let Err(err) = created {
        // Two replicas creating the schema at the same moment: the loser sees a unique violation.
        let duplicate = err.as_database_error().and_then(|e| e.code()).is_some_and(|c| c == "23505" || c == "42P06");
        if !duplicate {
            return Err(err.into());
        }
    }
    conn.close().await?;
    Ok(options.options([("search_path", schema.as_str())]))
}

pub async fn migrate_only(config: &Config, database_url: &str) -> StoreResult<usize> {
    let options = pg_options(config, database_url).await?;
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    let ran = super::migrate::postgres(&mut conn).await?;
    conn.close().await?;
    Ok(ran)
}

pub async fn connect(
    config: &Config,
    database_url: &str,
    redis_url: &str,
    _tasks: &crate::shutdown::Tasks,
) -> StoreResult<Storage> {
    let options = pg_options(config, database_url).await?;
    {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        super::migrate::postgres(&mut conn).await?;
        conn.close().await?;
    }
    let timeout = Duration::from_millis(config.store_timeout_ms);
    // A request waits for a pooled connection no longer than for any other store call.
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections.max(1))
        .acquire_timeout(timeout)
        .connect_with(options)
        .await?;
    let postgres = Arc::new(Postgres { pool });
    let redis = Arc::new(Redis::connect(redis_url, &config.redis_key_prefix, timeout).await?);
    warn_without_append_only_file(&redis.pool).await;
    let presence_ttl = Duration::from_secs(config.provisioning_timeout_seconds + 60);
    let bus = RedisBus::connect(redis_url, &config.redis_key_prefix, redis.pool.clone(), presence_ttl, timeout).await?;
    let (pg_health, redis_health) = (StoreHealth::new("postgres", timeout), StoreHealth::new("redis", timeout));
    Ok(Storage {
        accounts: Guarded::<dyn AccountStore>::new(postgres.clone(), pg_health.clone()),
        keys: Guarded::<dyn KeyStore>::new(postgres.clone(), pg_health.clone()),
        pre_keys: Guarded::<dyn PreKeyPool>::new(redis.clone(), redis_health.clone()),
        queue: Guarded::<dyn MessageQueue>::new(redis.clone(), redis_health.clone()),
        bus: Guarded::<dyn Bus>::new(Arc::new(bus), redis_health.clone()),
        presence: Arc::new(super::embedded::MemoryPresence::default()),
        lease: Arc::new(super::embedded::MemoryLease::default()),
        limits: Guarded::<dyn RateLimitStore>::new(redis.clone(), redis_health.clone()),
        probes: vec![
            Guarded::<dyn Probe>::new(postgres, pg_health.clone()),
            Guarded::<dyn Probe>::new(redis, redis_health.clone()),
        ],
        health: vec![pg_health, redis_health],
        kind: "scale-out",
    })
}

/// Queued envelopes and one-time prekeys exist only in Redis: without its append-only file, a restart of
/// Redis loses them all, silently for clients. Say so loudly at start-up.
async fn warn_without_append_only_file(pool: &RedisPool) {
    let info: Result<String, _> = pool.next_connected().info(Some(fred::types::InfoKind::Persistence)).await;
    match info {
        Ok(info) if info.lines().any(|l| l.trim() == "aof_enabled:0") => tracing::warn!(
            "REDIS HAS NO APPEND-ONLY FILE (appendonly no): a restart of Redis loses every queued message and \
             one-time prekey; run Redis with appendonly yes (docs/operations.md, Durability)"
        ),
        Ok(_) => {}
        Err(err) => tracing::info!(error = %err, "could not check Redis persistence (INFO persistence)"),
    }
}

/// The Postgres store of durable records.
pub struct Postgres {
    pool: PgPool,
}

fn ec_key(bytes: &[u8]) -> StoreResult<EcPublicKey> {
    EcPublicKey::from_bytes("stored", bytes).map_err(|_| StoreError::Corrupt("ec key"))
}

fn signature(bytes: &[u8]) -> StoreResult<Signature> {
    Ok(Signature(bytes.try_into().map_err(|_| StoreError::Corrupt("signature"))?))
}

fn registration_id(value: i32) -> StoreResult<RegistrationId> {
    RegistrationId::new(i64::from(value)).map_err(|_| StoreError::Corrupt("registration id"))
}

fn device_param(device: DeviceId) -> i32 {
    device.0 as i32
}

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
            if !expires_at.is_some_and(|at| crate::domain::is_live(at, now)) {
                return Ok(Err(CreateAccountError::InvalidInvite));
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
        let ids: Vec<i32> =
            sqlx::query_scalar("SELECT device_id FROM devices WHERE aci = $1").bind(aci.0).fetch_all(&mut *tx).await?;
        let given_up: Vec<(i32, i64)> =
            sqlx::query_as("SELECT device_id, removed_at FROM removed_devices WHERE aci = $1")
                .bind(aci.0)
                .fetch_all(&mut *tx)
                .await?;
        let taken: Vec<DeviceId> = ids.iter().map(|id| DeviceId(*id as u32)).collect();
        let given_up: Vec<(DeviceId, i64)> = given_up.into_iter().map(|(id, at)| (DeviceId(id as u32), at)).collect();
        let Some(DeviceId(id)) = slots.pick(&taken, &given_up) else {
            return Ok(Err(AddDeviceError::TooManyDevices));
        };
        let id = id as i32;
        sqlx::query(
            "INSERT INTO devices (aci, device_id, registration_id, incarnation, secret_salt, secret_hash, name, created_at,
                                  last_seen_day)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(aci.0)
        .bind(id)
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
        Ok(Ok(DeviceId(id as u32)))
    }

    async fn approve(&self, aci: Aci) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE accounts SET approved = TRUE WHERE aci = $1").bind(aci.0).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn account(&self, aci: Aci) -> StoreResult<Option<Account>> {
        let row =
            sqlx::query("SELECT identity_key, access_key, unrestricted_access, approved FROM accounts WHERE aci = $1")
                .bind(aci.0)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let access: Option<Vec<u8>> = row.try_get("access_key")?;
        Ok(Some(Account {
            aci,
            identity_key: ec_key(&row.try_get::<Vec<u8>, _>("identity_key")?)?,
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
             WHERE d.aci = $1 AND d.device_id = $2",
        )
        .bind(aci.0)
        .bind(device_param(device))
        .fetch_optional(&self.pool)
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
        sqlx::query("UPDATE devices SET last_seen_day = $1 WHERE aci = $2 AND device_id = $3 AND last_seen_day < $1")
            .bind(day)
            .bind(aci.0)
            .bind(device_param(device))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn devices(&self, aci: Aci) -> StoreResult<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT device_id, registration_id, incarnation, created_at, last_seen_day, name FROM devices
             WHERE aci = $1 ORDER BY device_id",
        )
        .bind(aci.0)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Device {
                    id: DeviceId(row.try_get::<i32, _>("device_id")? as u32),
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
        let row = sqlx::query("DELETE FROM link_codes WHERE code_hash = $1 RETURNING aci, expires_at")
            .bind(&code_hash[..])
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((Aci(row.try_get("aci")?), row.try_get("expires_at")?)))
    }

    async fn reap_codes(&self, now: i64) -> StoreResult<u64> {
        let links = sqlx::query("DELETE FROM link_codes WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        let invites = sqlx::query("DELETE FROM invites WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        Ok(links.rows_affected() + invites.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

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
        let parts = [
            signed.map(|k| (KIND_EC, k.key_id, k.public_key.0.to_vec(), k.signature.0)),
            last_resort.map(|k| (KIND_KEM, k.key_id, k.public_key.0.clone(), k.signature.0)),
        ];
        for (kind, key_id, public_key, signature) in parts.into_iter().flatten() {
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
        let rows = sqlx::query(
            "SELECT d.device_id, d.registration_id,
                    e.key_id AS ec_id, e.public_key AS ec_key, e.signature AS ec_sig,
                    k.key_id AS kem_id, k.public_key AS kem_key, k.signature AS kem_sig
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
        rows.into_iter()
            .map(|row| {
                let kem: Vec<u8> = row.try_get("kem_key")?;
                if kem.len() != KemPublicKey::LEN {
                    return Err(StoreError::Corrupt("kem key"));
                }
                Ok(DeviceKeys {
                    device: DeviceId(row.try_get::<i32, _>("device_id")? as u32),
                    registration_id: registration_id(row.try_get("registration_id")?)?,
                    signed_pre_key: SignedEcKey {
                        key_id: row.try_get::<i32, _>("ec_id")? as u32,
                        public_key: ec_key(&row.try_get::<Vec<u8>, _>("ec_key")?)?,
                        signature: signature(&row.try_get::<Vec<u8>, _>("ec_sig")?)?,
                    },
                    pq_last_resort: SignedKemKey {
                        key_id: row.try_get::<i32, _>("kem_id")? as u32,
                        public_key: KemPublicKey(kem),
                        signature: signature(&row.try_get::<Vec<u8>, _>("kem_sig")?)?,
                    },
                })
            })
            .collect()
    }
}

#[async_trait]
impl Probe for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    async fn check(&self) -> StoreResult<()> {
        self.ping().await
    }
}

/// Redis: one-time prekey pools, message queues and rate-limit buckets.
pub struct Redis {
    pool: RedisPool,
    prefix: String,
    claim: Script,
    replace: Script,
    counts: Script,
    take_token: Script,
    push: Script,
    peek: Script,
    ack: Script,
    remove_queue: Script,
}

/// A Redis client builder for `url` that never gives up: it reconnects with backoff (to every node of a
/// cluster) for as long as the process runs, and bounds every command by `timeout`, so that a Redis that is
/// down or frozen costs a caller that long and no more. A command issued while disconnected waits for the
/// reconnect within the same bound. Start-up retries are the caller's (`init` fails at once when Redis is
/// not there, see [`super::connect_with_retries`]).
fn redis_builder(url: &str, timeout: Duration) -> StoreResult<Builder> {
    use fred::types::config::{ReconnectPolicy, TcpConfig, UnresponsiveConfig};
    let mut config = RedisConfig::from_url(url)?;
    config.fail_fast = true;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // A cluster redirect (MOVED, ASK) is a second attempt.
            c.max_command_attempts = 3;
            c.unresponsive = UnresponsiveConfig { max_timeout: Some(timeout), interval: Duration::from_millis(500) };
            c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
        })
        .with_performance_config(|p| p.default_command_timeout = timeout);
    Ok(builder)
}

/// Pops one key from each pool of a device in one round trip. Each LPOP is atomic, so a key is never
/// returned to two callers, on one Redis or a cluster (both lists share the slot of their hash tag).
const CLAIM_LUA: &str = r#"
local ec = redis.call('LPOP', KEYS[1])
local kem = redis.call('LPOP', KEYS[2])
return {ec or '', kem or ''}
"#;

/// Replaces one pool with the given entries.
const REPLACE_LUA: &str = r#"
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 500 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return #ARGV
"#;

const COUNTS_LUA: &str = r#"
return {redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2])}
"#;

/// Token bucket: ARGV = capacity, refill per millisecond, expiry in ms. Returns 0 when a token was taken,
/// else the milliseconds until one will be available. Uses the Redis clock so instances need not agree.
const TOKEN_BUCKET_LUA: &str = r#"
local function take_token(key, cap, rate, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  cap = tonumber(cap)
  rate = tonumber(rate)
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens = tonumber(state[1]) or cap
  local at = tonumber(state[2]) or now
  tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
  redis.call('HSET', key, 't', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', key, ttl)
  return wait
end
"#;

const TAKE_TOKEN_LUA: &str = r#"
return take_token(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"#;

/// Queues: per account a sequence counter, per device a sorted set (score = seq, member = expiry ‖ guid ‖
/// envelope) and a hash guid → seq for acknowledgements. All keys of an account share the hash tag
/// `{aci}`, so one script call takes the sender's rate-limit token (its bucket carries the same tag),
/// queues for every device of the recipient atomically, and publishes the wake-up on each device's bus
/// channel: one round trip per send.
///
/// KEYS: counter, rate bucket (ignored when ARGV[4] is empty), then (zset, index, removal mark) per device.
/// ARGV: max length, queue ttl ms, counter ttl ms, bucket capacity (or ''), refill per ms, bucket ttl ms,
/// then (member, guid, channel) per device, then the wake-up payload.
/// Returns {0, 0} when queued, {1, wait ms} when rate limited, {2, i} when the i-th device's queue is full,
/// {3, i} when the i-th device (in the incarnation its removal mark names) was removed; in every case but
/// the first nothing is queued. A queue at its limit is first purged of expired envelopes (members start
/// with their big-endian expiry), so expired envelopes never make a sender see `queue_full`.
const PUSH_LUA: &str = r#"
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = (#KEYS - 2) / 3
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + 3 * i]) == 1 then return {3, i} end
end
if ARGV[4] ~= '' then
  local wait = take_token(KEYS[2], ARGV[4], ARGV[5], ARGV[6])
  if wait > 0 then return {1, wait} end
end
local function purge_expired(zkey, ikey)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, m in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
    local expiry = 0
    for k = 1, 8 do expiry = expiry * 256 + string.byte(m, k) end
    if expiry <= now then
      redis.call('ZREM', zkey, m)
      redis.call('HDEL', ikey, string.sub(m, 9, 24))
    end
  end
end
for i = 1, n do
  if redis.call('ZCARD', KEYS[3 * i]) >= max then
    purge_expired(KEYS[3 * i], KEYS[1 + 3 * i])
    if redis.call('ZCARD', KEYS[3 * i]) >= max then return {2, i} end
  end
end
for i = 1, n do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[3 * i], seq, ARGV[4 + 3 * i])
  redis.call('HSET', KEYS[1 + 3 * i], ARGV[5 + 3 * i], seq)
  if redis.call('PTTL', KEYS[3 * i]) < ttl then
    redis.call('PEXPIRE', KEYS[3 * i], ttl)
    redis.call('PEXPIRE', KEYS[1 + 3 * i], ttl)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
for i = 1, n do
  redis.call('PUBLISH', ARGV[6 + 3 * i], ARGV[7 + 3 * n])
end
return {0, 0}
"#;

const PEEK_LUA: &str = r#"
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
"#;

/// Deletes the envelopes whose guids are in ARGV; returns how many were there.
const ACK_LUA: &str = r#"
local deleted = 0
for _, guid in ipairs(ARGV) do
  local seq = redis.call('HGET', KEYS[2], guid)
  if seq then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], seq, seq)
    redis.call('HDEL', KEYS[2], guid)
    deleted = deleted + 1
  end
end
return deleted
"#;

/// Deletes a removed device's queue (KEYS 1, 2) and marks it removed (KEYS 3) in one step, so a push either
/// ran before (and its envelopes are deleted here) or runs after (and sees the mark). The mark outlives
/// any stale view of the account a sender could still act on.
const REMOVE_QUEUE_LUA: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], '1', 'PX', 86400000)
return 1
"#;

/// A short word whose cluster slot is the one of `{aci}`, so a key can share the slot of an account's keys
/// without naming the account. The words are the decimal numbers, first found for each of the 16384 slots.
fn slot_tag(aci: Aci) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        let mut n: u64 = 0;
        while missing > 0 {
            let word = n.to_string();
            let slot = usize::from(fred::util::redis_keyslot(word.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = word;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(fred::util::redis_keyslot(aci.to_string().as_bytes()))]
}

impl Redis {
    fn queue_counter(&self, aci: Aci) -> String {
        format!("{}q:{{{aci}}}:seq", self.prefix)
    }

    fn queue_keys(&self, aci: Aci, device: DeviceId) -> [String; 2] {
        let base = format!("{}q:{{{aci}}}:{device}", self.prefix);
        [format!("{base}:z"), format!("{base}:i")]
    }

    /// Set when a device is removed, and checked by every push that names that device and incarnation.
    fn removal_mark(&self, aci: Aci, recipient: Recipient) -> String {
        format!("{}q:{{{aci}}}:{}:gone:{}", self.prefix, recipient.device, recipient.incarnation.0)
    }

    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> StoreResult<Self> {
        let pool = redis_builder(url, timeout)?.build_pool(2)?;
        pool.init().await?;
        Ok(Redis {
            pool,
            prefix: prefix.to_owned(),
            claim: Script::from_lua(CLAIM_LUA),
            replace: Script::from_lua(REPLACE_LUA),
            counts: Script::from_lua(COUNTS_LUA),
            take_token: Script::from_lua(format!("{TOKEN_BUCKET_LUA}{TAKE_TOKEN_LUA}")),
            push: Script::from_lua(format!("{TOKEN_BUCKET_LUA}{PUSH_LUA}")),
            peek: Script::from_lua(PEEK_LUA),
            ack: Script::from_lua(ACK_LUA),
            remove_queue: Script::from_lua(REMOVE_QUEUE_LUA),
        })
    }

    fn pool_keys(&self, aci: Aci, device: DeviceId) -> Vec<String> {
        let tag = format!("{}pk:{{{}.{}}}", self.prefix, aci, device);
        vec![format!("{tag}:ec"), format!("{tag}:kem")]
    }
}

fn encode_ec(key: &EcOneTimeKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 33);
    out.extend_from_slice(&key.key_id.to_be_bytes());
    out.extend_from_slice(&key.public_key.0);
    out
}

fn decode_ec(bytes: &[u8]) -> StoreResult<EcOneTimeKey> {
    if bytes.len() != 4 + 33 {
        return Err(StoreError::Corrupt("pooled ec key"));
    }
    Ok(EcOneTimeKey {
        key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        public_key: ec_key(&bytes[4..])?,
    })
}

fn encode_kem(key: &SignedKemKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 64 + KemPublicKey::LEN);
    out.extend_from_slice(&key.key_id.to_be_bytes());
    out.extend_from_slice(&key.signature.0);
    out.extend_from_slice(&key.public_key.0);
    out
}

fn decode_kem(bytes: &[u8]) -> StoreResult<SignedKemKey> {
    if bytes.len() != 4 + 64 + KemPublicKey::LEN {
        return Err(StoreError::Corrupt("pooled kem key"));
    }
    Ok(SignedKemKey {
        key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        signature: signature(&bytes[4..68])?,
        public_key: KemPublicKey(bytes[68..].to_vec()),
    })
}

fn bytes_of(value: &RedisValue) -> Option<&[u8]> {
    match value {
        RedisValue::Bytes(b) if !b.is_empty() => Some(b),
        RedisValue::String(s) if !s.is_empty() => Some(s.as_bytes()),
        _ => None,
    }
}

#[async_trait]
impl PreKeyPool for Redis {
    async fn replace(
        &self,
        aci: Aci,
        device: DeviceId,
        ec: Option<&[EcOneTimeKey]>,
        kem: Option<&[SignedKemKey]>,
    ) -> StoreResult<()> {
        let keys = self.pool_keys(aci, device);
        let client = self.pool.next_connected();
        if let Some(ec) = ec {
            let values: Vec<RedisValue> = ec.iter().map(|k| RedisValue::Bytes(encode_ec(k).into())).collect();
            let _: i64 = self.replace.evalsha_with_reload(client, vec![keys[0].clone()], values).await?;
        }
        if let Some(kem) = kem {
            let values: Vec<RedisValue> = kem.iter().map(|k| RedisValue::Bytes(encode_kem(k).into())).collect();
            let _: i64 = self.replace.evalsha_with_reload(client, vec![keys[1].clone()], values).await?;
        }
        Ok(())
    }

    async fn counts(&self, aci: Aci, device: DeviceId) -> StoreResult<(u32, u32)> {
        let counts: Vec<i64> =
            self.counts.evalsha_with_reload(self.pool.next_connected(), self.pool_keys(aci, device), ()).await?;
        match counts.as_slice() {
            [ec, kem] => Ok((*ec as u32, *kem as u32)),
            _ => Err(StoreError::Corrupt("pool counts")),
        }
    }

    async fn claim(&self, aci: Aci, device: DeviceId) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)> {
        let popped: Vec<RedisValue> =
            self.claim.evalsha_with_reload(self.pool.next_connected(), self.pool_keys(aci, device), ()).await?;
        let [ec, kem] = popped.as_slice() else { return Err(StoreError::Corrupt("claim reply")) };
        Ok((bytes_of(ec).map(decode_ec).transpose()?, bytes_of(kem).map(decode_kem).transpose()?))
    }

    async fn remove_device(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        // Separate DELs: in a cluster a multi-key DEL must stay in one slot, and these do, but one call
        // per key keeps the command valid whatever the key layout becomes.
        for key in self.pool_keys(aci, device) {
            let _: i64 = self.pool.next_connected().del(key).await?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

/// Capacity, refill per millisecond and expiry of a token bucket, as the scripts take them.
fn bucket_args(limit: &RateLimit) -> (String, String, String) {
    let per_ms = limit.refill_per_second() / 1000.0;
    let ttl_ms = limit.period.as_millis().max(1000);
    (limit.burst.to_string(), format!("{per_ms:.12}"), ttl_ms.to_string())
}

/// Pub/sub messages buffered between the Redis connection and the hub.
const SUBSCRIBER_BUFFER: usize = 65_536;

/// The bus channel of one device (the queue's push script publishes on it too).
fn device_channel(prefix: &str, aci: Aci, device: DeviceId) -> String {
    format!("{prefix}dev:{aci}.{device}")
}

/// How long a device's sequence counter outlives its last push: longer than any envelope can live, so a
/// counter never restarts under a connected socket's cursor.
const COUNTER_TTL_MS: i64 = 400 * 86_400_000;

#[async_trait]
impl MessageQueue for Redis {
    async fn push(
        &self,
        aci: Aci,
        items: &[(Recipient, NewEnvelope)],
        max_len: u32,
        bucket: Option<&RateBucket>,
    ) -> StoreResult<PushOutcome> {
        self.push_script(aci, items, max_len, bucket).await
    }

    async fn peek(
        &self,
        aci: Aci,
        device: DeviceId,
        after: u64,
        limit: usize,
        now: i64,
    ) -> StoreResult<Vec<QueuedEnvelope>> {
        let [zset, _] = self.queue_keys(aci, device);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut expired = Vec::new();
        let mut cursor = after;
        // Expired envelopes met on the way are skipped, and the page is refilled past them, so a short
        // page always means the end of the queue.
        while out.len() < limit {
            let wanted = limit - out.len();
            let reply: Vec<RedisValue> = self
                .peek
                .evalsha_with_reload(
                    self.pool.next_connected(),
                    vec![zset.clone()],
                    vec![cursor.to_string(), wanted.to_string()],
                )
                .await?;
            let fetched = reply.len() / 2;
            self.sort_page(&reply, now, &mut cursor, &mut out, &mut expired)?;
            if fetched < wanted {
                break;
            }
        }
        // Expired envelopes are dropped as they are met; whole queues also expire with their last envelope.
        if !expired.is_empty() {
            self.ack_many(aci, device, &expired).await?;
        }
        Ok(out)
    }

    async fn ack(&self, aci: Aci, device: DeviceId, guid: [u8; 16]) -> StoreResult<bool> {
        Ok(self.ack_many(aci, device, &[guid]).await? == 1)
    }

    async fn ack_many(&self, aci: Aci, device: DeviceId, guids: &[[u8; 16]]) -> StoreResult<u64> {
        let keys = self.queue_keys(aci, device).to_vec();
        let args: Vec<RedisValue> = guids.iter().map(|g| RedisValue::Bytes(g.to_vec().into())).collect();
        let removed: i64 = self.ack.evalsha_with_reload(self.pool.next_connected(), keys, args).await?;
        Ok(removed.max(0) as u64)
    }

    async fn remove_device(&self, aci: Aci, device: Recipient) -> StoreResult<()> {
        let [zset, index] = self.queue_keys(aci, device.device);
        let mark = self.removal_mark(aci, device);
        let _: i64 =
            self.remove_queue.evalsha_with_reload(self.pool.next_connected(), vec![zset, index, mark], ()).await?;
        Ok(())
    }

    async fn remove_account(&self, aci: Aci) -> StoreResult<()> {
        let _: i64 = self.pool.next_connected().del(self.queue_counter(aci)).await?;
        Ok(())
    }

    async fn reap(&self, _now: i64) -> StoreResult<u64> {
        Ok(0)
    }
}

impl Redis {
    async fn push_script(
        &self,
        aci: Aci,
        items: &[(Recipient, NewEnvelope)],
        max_len: u32,
        bucket: Option<&RateBucket>,
    ) -> StoreResult<PushOutcome> {
        let now = crate::domain::now_millis();
        let ttl = items.iter().map(|(_, e)| e.expires_at - now).max().unwrap_or(1).max(1);
        // The bucket must sit in the recipient's cluster slot so one script can touch it and the queues,
        // but its name must not carry the recipient's aci: its hash tag is a neutral word of that slot.
        let rate_key = match bucket {
            Some(bucket) => {
                format!("{}rl:{}:{{{}}}:{}", self.prefix, bucket.name, slot_tag(aci), hex(&bucket.key))
            }
            None => self.queue_counter(aci),
        };
        let mut keys = vec![self.queue_counter(aci), rate_key];
        let mut args: Vec<RedisValue> = vec![i64::from(max_len).into(), ttl.into(), COUNTER_TTL_MS.into()];
        match bucket {
            Some(bucket) => {
                let (cap, per_ms, ttl_ms) = bucket_args(&bucket.limit);
                args.extend([cap.into(), per_ms.into(), ttl_ms.into()]);
            }
            None => args.extend(["".into(), "".into(), "".into()]),
        }
        for (recipient, item) in items {
            keys.extend(self.queue_keys(aci, recipient.device));
            keys.push(self.removal_mark(aci, *recipient));
            let mut member = Vec::with_capacity(24 + item.envelope.len());
            member.extend_from_slice(&item.expires_at.to_be_bytes());
            member.extend_from_slice(&item.guid);
            member.extend_from_slice(&item.envelope);
            args.push(RedisValue::Bytes(member.into()));
            args.push(RedisValue::Bytes(item.guid.to_vec().into()));
            args.push(device_channel(&self.prefix, aci, recipient.device).into());
        }
        args.push(RedisValue::Bytes(BusEvent::Wake.encode().into()));
        let reply: Vec<i64> = self.push.evalsha_with_reload(self.pool.next_connected(), keys, args).await?;
        match reply.as_slice() {
            [0, _] => Ok(PushOutcome::Queued),
            [1, wait] => Ok(PushOutcome::Limited(Duration::from_millis((*wait).max(1) as u64))),
            [code @ (2 | 3), index] => {
                let device = items.get((*index - 1).max(0) as usize).map(|(r, _)| r.device);
                let device = device.ok_or(StoreError::Corrupt("push reply"))?;
                Ok(if *code == 2 { PushOutcome::Full(device) } else { PushOutcome::Gone(device) })
            }
            _ => Err(StoreError::Corrupt("push reply")),
        }
    }

    /// Splits a ZRANGEBYSCORE … WITHSCORES reply into live and expired envelopes, advancing the cursor.
    fn sort_page(
        &self,
        reply: &[RedisValue],
        now: i64,
        cursor: &mut u64,
        out: &mut Vec<QueuedEnvelope>,
        expired: &mut Vec<[u8; 16]>,
    ) -> StoreResult<()> {
        for pair in reply.chunks(2) {
            let [member, score] = pair else { return Err(StoreError::Corrupt("peek reply")) };
            let member = bytes_of(member).ok_or(StoreError::Corrupt("queue member"))?;
            let seq: u64 = match score {
                RedisValue::String(s) => s.parse::<f64>().map_err(|_| StoreError::Corrupt("queue score"))? as u64,
                RedisValue::Bytes(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or(StoreError::Corrupt("queue score"))? as u64,
                RedisValue::Integer(i) => *i as u64,
                RedisValue::Double(d) => *d as u64,
                _ => return Err(StoreError::Corrupt("queue score")),
            };
            if member.len() < 24 {
                return Err(StoreError::Corrupt("queue member"));
            }
            let expires_at = i64::from_be_bytes(member[..8].try_into().map_err(|_| StoreError::Corrupt("expiry"))?);
            let guid: [u8; 16] = member[8..24].try_into().map_err(|_| StoreError::Corrupt("guid"))?;
            *cursor = (*cursor).max(seq);
            if expires_at <= now {
                expired.push(guid);
                continue;
            }
            out.push(QueuedEnvelope { seq, guid, expires_at, envelope: member[24..].to_vec() });
        }
        Ok(())
    }
}

#[async_trait]
impl RateLimitStore for Redis {
    async fn take(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> StoreResult<Result<(), Duration>> {
        let name = format!("{}rl:{bucket}:{}", self.prefix, hex(key));
        let (cap, per_ms, ttl_ms) = bucket_args(limit);
        let wait: i64 = self
            .take_token
            .evalsha_with_reload(self.pool.next_connected(), vec![name], vec![cap, per_ms, ttl_ms])
            .await?;
        Ok(if wait <= 0 { Ok(()) } else { Err(Duration::from_millis(wait as u64)) })
    }
}

#[async_trait]
impl Probe for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> StoreResult<()> {
        let _: String = self.pool.next_connected().ping(None).await?;
        Ok(())
    }
}

/// Cross-instance fan-out over Redis pub/sub: one channel per device with an open socket somewhere, and
/// one per open provisioning socket.
///
/// In a Redis Cluster, PUBLISH reaches every node but counts only the subscribers of the node that took
/// it, so "is anyone listening" cannot come from PUBLISH there: provisioning sockets also hold a presence
/// key, which `publish_provisioning` checks first.
pub struct RedisBus {
    publisher: RedisPool,
    subscriber: fred::clients::SubscriberClient,
    /// Every channel this instance wants, so all of them are subscribed again after a reconnect (the client
    /// library only remembers subscriptions that succeeded).
    wanted: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    channel_prefix: String,
    provisioning_prefix: String,
    presence_prefix: String,
    presence_ttl: Duration,
    invalidation_channel: String,
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<BusMessage>>>,
}

impl RedisBus {
    pub async fn connect(
        url: &str,
        prefix: &str,
        publisher: RedisPool,
        presence_ttl: Duration,
        timeout: Duration,
    ) -> StoreResult<Self> {
        use fred::prelude::EventInterface;
        let mut builder = redis_builder(url, timeout)?;
        // fred hands pub/sub messages over a broadcast channel; its default of 32 loses messages under load.
        builder.with_performance_config(|performance| performance.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let subscriber = builder.build_subscriber_client()?;
        let channel_prefix = format!("{prefix}dev:");
        let provisioning_prefix = format!("{prefix}prov:");
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = subscriber.message_rx();
        let strip = channel_prefix.clone();
        let strip_provisioning = provisioning_prefix.clone();
        let invalidations = Self::invalidation_channel(prefix);
        let wanted = Arc::new(std::sync::Mutex::new(std::collections::HashSet::from([invalidations.clone()])));
        // Every (re)connection, the first included: subscribe to every wanted channel, then have every local
        // socket read its queue, since wake-ups published while the connection was down were lost (the
        // queues are the truth; the bus only wakes).
        let mut reconnects = subscriber.reconnect_rx();
        let (resubscriber, still_wanted, waker) = (subscriber.clone(), wanted.clone(), sender.clone());
        tokio::spawn(async move {
            use fred::prelude::PubsubInterface;
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match reconnects.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
                let channels: Vec<String> =
                    still_wanted.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
                for channel in channels {
                    if let Err(err) = resubscriber.subscribe(channel).await {
                        tracing::warn!(error = %err, "bus: subscribing again after a reconnect failed");
                    }
                }
                if waker.send(BusMessage::WakeAll).is_err() {
                    break;
                }
            }
        });
        subscriber.init().await?;
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        if message.channel == invalidations.as_str() {
                            let aci = bytes_of(&message.value).and_then(|b| uuid::Uuid::from_slice(b).ok()).map(Aci);
                            if let Some(aci) = aci
                                && sender.send(BusMessage::Invalidate(aci)).is_err()
                            {
                                break;
                            }
                            continue;
                        }
                        if let Some(address) = message.channel.strip_prefix(strip_provisioning.as_str()) {
                            let body = bytes_of(&message.value).map(<[u8]>::to_vec).unwrap_or_default();
                            if sender.send(BusMessage::Provisioning(address.to_owned(), body)).is_err() {
                                break;
                            }
                            continue;
                        }
                        let Some((aci, device)) = message
                            .channel
                            .strip_prefix(strip.as_str())
                            .and_then(|rest| rest.split_once('.'))
                            .and_then(|(aci, device)| Some((Aci::parse(aci)?, DeviceId::parse(device)?)))
                        else {
                            continue;
                        };
                        let Some(event) = bytes_of(&message.value).and_then(BusEvent::decode) else { continue };
                        if sender.send(BusMessage::Device(aci, device, event)).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        // Lost wakes would strand envelopes until the next one: wake everyone instead.
                        tracing::warn!(missed, "bus subscriber lagged; waking every local socket");
                        if sender.send(BusMessage::WakeAll).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(RedisBus {
            publisher,
            subscriber,
            wanted,
            channel_prefix,
            provisioning_prefix,
            presence_prefix: format!("{prefix}provpresence:"),
            invalidation_channel: Self::invalidation_channel(prefix),
            presence_ttl,
            receiver: std::sync::Mutex::new(Some(receiver)),
        })
    }

    fn channel(&self, aci: Aci, device: DeviceId) -> String {
        format!("{}{aci}.{device}", self.channel_prefix)
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wants the channel (so it is subscribed again after any reconnect) and subscribes to it now.
    async fn subscribe_channel(&self, channel: String) -> StoreResult<()> {
        use fred::prelude::PubsubInterface;
        self.wanted().insert(channel.clone());
        self.subscriber.subscribe(channel).await?;
        Ok(())
    }

    async fn unsubscribe_channel(&self, channel: String) -> StoreResult<()> {
        use fred::prelude::PubsubInterface;
        self.wanted().remove(&channel);
        self.subscriber.unsubscribe(channel).await?;
        Ok(())
    }

    fn invalidation_channel(prefix: &str) -> String {
        format!("{prefix}invalidate")
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, aci: Aci, device: DeviceId, event: BusEvent) -> StoreResult<bool> {
        use fred::prelude::PubsubInterface;
        let receivers: i64 = self
            .publisher
            .next_connected()
            .publish(self.channel(aci, device), RedisValue::Bytes(event.encode().into()))
            .await?;
        Ok(receivers > 0)
    }

    async fn subscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.subscribe_channel(self.channel(aci, device)).await
    }

    async fn unsubscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.unsubscribe_channel(self.channel(aci, device)).await
    }

    async fn publish_provisioning(&self, address: &str, body: Vec<u8>) -> StoreResult<bool> {
        use fred::prelude::PubsubInterface;
        let present: i64 = self.publisher.next_connected().exists(format!("{}{address}", self.presence_prefix)).await?;
        if present == 0 {
            return Ok(false);
        }
        let channel = format!("{}{address}", self.provisioning_prefix);
        let _: i64 = self.publisher.next_connected().publish(channel, RedisValue::Bytes(body.into())).await?;
        Ok(true)
    }

    async fn subscribe_provisioning(&self, address: &str) -> StoreResult<()> {
        use fred::types::Expiration;
        self.subscribe_channel(format!("{}{address}", self.provisioning_prefix)).await?;
        let ttl = Expiration::PX(self.presence_ttl.as_millis() as i64);
        let _: () = self
            .publisher
            .next_connected()
            .set(format!("{}{address}", self.presence_prefix), 1, Some(ttl), None, false)
            .await?;
        Ok(())
    }

    async fn unsubscribe_provisioning(&self, address: &str) -> StoreResult<()> {
        let _: i64 = self.publisher.next_connected().del(format!("{}{address}", self.presence_prefix)).await?;
        self.unsubscribe_channel(format!("{}{address}", self.provisioning_prefix)).await
    }

    async fn publish_invalidation(&self, aci: Aci) -> StoreResult<()> {
        use fred::prelude::PubsubInterface;
        let _: i64 = self
            .publisher
            .next()
            .publish(self.invalidation_channel.clone(), RedisValue::Bytes(aci.0.as_bytes().to_vec().into()))
            .await?;
        Ok(())
    }

    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<BusMessage>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
