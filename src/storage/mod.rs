//! The storage seam: small traits, one implementation per deployment.
//!
//! * **Embedded** (`embedded`): SQLite for durable records, one-time prekey pools and message queues;
//!   in-process rate-limit buckets and bus. No service to run.
//! * **Scale-out** (`scaleout`): Postgres for durable records (accounts, devices, identity, signed and
//!   last-resort keys, invite and link codes); Redis or Redis Cluster for one-time prekey pools (atomic
//!   pop), message queues, rate-limit buckets and the pub/sub bus between instances.
//!
//! Handlers and capabilities only see the traits; which implementation runs is decided once, from the
//! configured URLs, in [`Storage::connect`]. Dialect differences stay inside the backend modules.

pub mod embedded;
pub mod guard;
mod migrate;
pub mod scaleout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Backend, Config, RateLimit};
use crate::domain::{AccessKey, Aci, DeviceId, EcPublicKey, Incarnation, KemPublicKey, RegistrationId, Signature};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time: the request may succeed if retried later.
    #[error("{store} unavailable: {reason}")]
    Unavailable { store: &'static str, reason: String },
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("redis: {0}")]
    Redis(fred::error::Error),
    #[error("migration: {0}")]
    Migration(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(&'static str),
    #[error("write failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the cause is an unreachable or unresponsive store, rather than a bug or bad data.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let unreachable = match &err {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => true,
            // Postgres: connection exceptions (08…), operator intervention (57…: shutting down, starting up).
            E::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
            _ => false,
        };
        if unreachable {
            StoreError::Unavailable { store: "database", reason: err.to_string() }
        } else {
            StoreError::Database(err)
        }
    }
}

impl From<fred::error::Error> for StoreError {
    fn from(err: fred::error::Error) -> Self {
        use fred::error::ErrorKind as K;
        let text = err.details();
        let unreachable = matches!(err.kind(), K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Cluster | K::Routing)
            // Replies of a Redis that is loading, failing over or without a quorum.
            || ["LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY"].iter().any(|p| text.starts_with(p))
            // A cluster whose nodes do not agree yet (just created, or a node rejoining).
            || text.contains("cluster state");
        if unreachable {
            StoreError::Unavailable { store: "redis", reason: err.to_string() }
        } else {
            StoreError::Redis(err)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What registration writes for a new account and its primary device.
pub struct NewAccount {
    pub aci: Aci,
    pub identity_key: EcPublicKey,
    pub registration_id: RegistrationId,
    /// Incarnation of the primary device.
    pub incarnation: Incarnation,
    pub secret_salt: [u8; 16],
    pub secret_hash: [u8; 32],
    pub approved: bool,
    pub created_at: i64,
}

/// Why an account could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateAccountError {
    InvalidInvite,
}

/// A device being linked to an existing account.
pub struct NewDevice {
    pub registration_id: RegistrationId,
    pub incarnation: Incarnation,
    pub secret_salt: [u8; 16],
    pub secret_hash: [u8; 32],
    /// Client-encrypted device name; opaque to the server.
    pub name: Option<Vec<u8>>,
    pub created_at: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddDeviceError {
    NoAccount,
    TooManyDevices,
}

/// The parts of an account other capabilities read.
#[derive(Debug, Clone)]
pub struct Account {
    pub aci: Aci,
    pub identity_key: EcPublicKey,
    pub access_key: Option<AccessKey>,
    pub unrestricted_access: bool,
    pub approved: bool,
}

/// What token issuance needs to check a device secret.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    pub incarnation: Incarnation,
    pub secret_salt: Vec<u8>,
    pub secret_hash: Vec<u8>,
    pub approved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub registration_id: RegistrationId,
    pub incarnation: Incarnation,
    pub created_at: i64,
    /// Start of the UTC day the device last obtained a token.
    pub last_seen_day: i64,
    /// Client-encrypted name, opaque to the server.
    pub name: Option<Vec<u8>>,
}

/// Accounts, devices and invite codes: durable records.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account with device 1; with `invite`, consumes that unexpired, unused invite hash in
    /// the same transaction (or creates nothing).
    async fn create_account(
        &self,
        account: &NewAccount,
        invite: Option<[u8; 32]>,
        now: i64,
    ) -> StoreResult<Result<(), CreateAccountError>>;
    async fn create_invite(&self, code_hash: [u8; 32], expires_at: i64) -> StoreResult<()>;
    /// Adds a device with the smallest free id, unless the account already has `max_devices`; serialised
    /// per account so two concurrent links cannot both take the last place. An id whose device was removed
    /// after `reuse_after` (milliseconds) is not free yet: a token of the removed device may still be alive.
    async fn add_device(
        &self,
        aci: Aci,
        device: &NewDevice,
        max_devices: u32,
        reuse_after: i64,
    ) -> StoreResult<Result<DeviceId, AddDeviceError>>;
    /// Marks an account approved; false when there is no such account.
    async fn approve(&self, aci: Aci) -> StoreResult<bool>;
    async fn account(&self, aci: Aci) -> StoreResult<Option<Account>>;
    async fn device_credentials(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<DeviceCredentials>>;
    async fn touch_device(&self, aci: Aci, device: DeviceId, day: i64) -> StoreResult<()>;
    async fn devices(&self, aci: Aci) -> StoreResult<Vec<Device>>;
    /// Removes a device and its durable keys and notes when its id was given up; false when it did not
    /// exist.
    async fn delete_device(&self, aci: Aci, device: DeviceId, now: i64) -> StoreResult<bool>;
    /// Removes the account and everything durable that belongs to it.
    async fn delete_account(&self, aci: Aci) -> StoreResult<bool>;
    async fn set_access(&self, aci: Aci, key: Option<AccessKey>, unrestricted: bool) -> StoreResult<bool>;
    async fn create_link_code(&self, code_hash: [u8; 32], aci: Aci, expires_at: i64) -> StoreResult<()>;
    /// Deletes an unexpired link code and returns its account: a code works once, whatever happens next.
    async fn consume_link_code(&self, code_hash: [u8; 32], now: i64) -> StoreResult<Option<Aci>>;
    /// Deletes expired invite and link codes; returns how many.
    async fn reap_codes(&self, now: i64) -> StoreResult<u64>;
    async fn ping(&self) -> StoreResult<()>;
}

/// A signed key as uploaded: EC signed prekey or Kyber key with the identity key's XEdDSA signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEcKey {
    pub key_id: u32,
    pub public_key: EcPublicKey,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKemKey {
    pub key_id: u32,
    pub public_key: KemPublicKey,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcOneTimeKey {
    pub key_id: u32,
    pub public_key: EcPublicKey,
}

/// One validated `PUT /v1/keys`: each part present replaces what the device had of that kind.
#[derive(Debug, Default)]
pub struct KeyUpload {
    pub signed_pre_key: Option<SignedEcKey>,
    pub pq_last_resort: Option<SignedKemKey>,
    pub pre_keys: Option<Vec<EcOneTimeKey>>,
    pub pq_pre_keys: Option<Vec<SignedKemKey>>,
}

/// The durable keys of one device.
#[derive(Debug, Clone)]
pub struct DeviceKeys {
    pub device: DeviceId,
    pub registration_id: RegistrationId,
    pub signed_pre_key: SignedEcKey,
    pub pq_last_resort: SignedKemKey,
}

/// One-time prekey pools: every key leaves the pool at most once.
#[async_trait]
pub trait PreKeyPool: Send + Sync {
    /// Replaces the device's unused EC one-time keys (`Some`) and/or Kyber ones.
    async fn replace(
        &self,
        aci: Aci,
        device: DeviceId,
        ec: Option<&[EcOneTimeKey]>,
        kem: Option<&[SignedKemKey]>,
    ) -> StoreResult<()>;
    async fn counts(&self, aci: Aci, device: DeviceId) -> StoreResult<(u32, u32)>;
    /// Takes at most one key of each kind, atomically: no other caller can ever receive the same key.
    async fn claim(&self, aci: Aci, device: DeviceId) -> StoreResult<(Option<EcOneTimeKey>, Option<SignedKemKey>)>;
    async fn remove_device(&self, aci: Aci, device: DeviceId) -> StoreResult<()>;
}

/// Signed and last-resort keys: durable.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn put_signed(
        &self,
        aci: Aci,
        device: DeviceId,
        signed: Option<&SignedEcKey>,
        last_resort: Option<&SignedKemKey>,
    ) -> StoreResult<()>;
    /// Devices of the account that have both a signed prekey and a last-resort key (all, or just `only`).
    async fn device_keys(&self, aci: Aci, only: Option<DeviceId>) -> StoreResult<Vec<DeviceKeys>>;
}

/// An envelope on its way into a device queue: already serialised, as it will be delivered.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    pub guid: [u8; 16],
    /// Milliseconds since the epoch after which the envelope is never delivered.
    pub expires_at: i64,
    pub envelope: Vec<u8>,
}

/// An envelope waiting in a device queue.
#[derive(Debug, Clone)]
pub struct QueuedEnvelope {
    /// Position in the device's queue: increases with every insert.
    pub seq: u64,
    pub guid: [u8; 16],
    pub expires_at: i64,
    pub envelope: Vec<u8>,
}

/// What a successful push did besides queuing.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The queue already told listening sockets (the Redis queue publishes in the same script), so the
    /// caller need not publish a wake itself.
    pub notified: bool,
}

/// A rate-limit bucket as storage sees it: a name, an opaque (pseudonymous) key and the limit.
#[derive(Debug, Clone)]
pub struct RateBucket {
    pub name: &'static str,
    pub key: [u8; 16],
    pub limit: RateLimit,
}

/// A device an envelope is queued for, in the incarnation the sender's view of the account names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipient {
    pub device: DeviceId,
    pub incarnation: Incarnation,
}

/// What a push did. Every outcome but `Queued` queued nothing for any device.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Queued(Pushed),
    /// This device's queue already holds the most envelopes allowed.
    Full(DeviceId),
    /// This device, in the incarnation named, has been removed (the sender's view was stale).
    Gone(DeviceId),
    /// The bucket was empty; a token is due after this long.
    Limited(Duration),
}

/// Per-device envelope queues with a TTL. An envelope stays until acknowledged or expired; expired ones are
/// never returned.
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Appends one envelope per listed device of `aci`, all or nothing: with a `bucket`, first takes one
    /// token from it (one storage round trip for a whole send); refuses when a queue already holds
    /// `max_len` envelopes, or when a listed device (in that incarnation) has been removed, so nothing
    /// meant for a removed device can ever reach a later device with the same id.
    async fn push(
        &self,
        aci: Aci,
        items: &[(Recipient, NewEnvelope)],
        max_len: u32,
        bucket: Option<&RateBucket>,
    ) -> StoreResult<PushOutcome>;
    /// Up to `limit` unexpired envelopes with `seq > after`, oldest first.
    async fn peek(
        &self,
        aci: Aci,
        device: DeviceId,
        after: u64,
        limit: usize,
        now: i64,
    ) -> StoreResult<Vec<QueuedEnvelope>>;
    /// Deletes one envelope; false when it was not there (already acknowledged, expired or never queued).
    async fn ack(&self, aci: Aci, device: DeviceId, guid: [u8; 16]) -> StoreResult<bool>;
    /// Deletes several envelopes in one storage call; returns how many were there.
    async fn ack_many(&self, aci: Aci, device: DeviceId, guids: &[[u8; 16]]) -> StoreResult<u64>;
    /// Deletes the device's queue; later pushes naming this incarnation are refused as `Gone`.
    async fn remove_device(&self, aci: Aci, device: Recipient) -> StoreResult<()>;
    /// Removes account-wide queue state once the account is gone (its devices are removed one by one).
    async fn remove_account(&self, _aci: Aci) -> StoreResult<()> {
        Ok(())
    }
    /// Deletes expired envelopes; returns how many. (Redis expires whole queues itself and filters on read.)
    async fn reap(&self, now: i64) -> StoreResult<u64>;
}

/// What travels between instances about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// New envelopes were queued: look at the queue.
    Wake,
    /// An envelope for connected sockets only (`online: true`): never stored.
    Ephemeral(Vec<u8>),
    /// A socket with this connection id opened: every older socket of the device must close (4409).
    Displace(u64),
    /// The device was removed: its sockets must close (4401).
    Revoke,
}

impl BusEvent {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BusEvent::Wake => vec![0],
            BusEvent::Ephemeral(bytes) => [&[1u8][..], bytes].concat(),
            BusEvent::Displace(id) => [&[2u8][..], &id.to_be_bytes()].concat(),
            BusEvent::Revoke => vec![3],
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<BusEvent> {
        match bytes.split_first()? {
            (0, []) => Some(BusEvent::Wake),
            (1, rest) => Some(BusEvent::Ephemeral(rest.to_vec())),
            (2, rest) => Some(BusEvent::Displace(u64::from_be_bytes(rest.try_into().ok()?))),
            (3, []) => Some(BusEvent::Revoke),
            _ => None,
        }
    }
}

/// What the bus hands to this instance's delivery hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    Device(Aci, DeviceId, BusEvent),
    /// A provisioning message for the socket holding this address.
    Provisioning(String, Vec<u8>),
    /// Cached facts about this account changed: forget them.
    Invalidate(Aci),
    /// Some events were lost on the way (the subscriber fell behind): every local socket re-reads its queue.
    WakeAll,
}

/// Fan-out of [`BusEvent`]s to whichever instance holds a device's sockets, and of provisioning messages
/// to whichever instance holds a provisioning socket.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Sends an event to every instance subscribed to the device; true when one is known to be (in a Redis
    /// Cluster only the receiving node's subscribers count, so false is not proof of absence there).
    async fn publish(&self, aci: Aci, device: DeviceId, event: BusEvent) -> StoreResult<bool>;
    /// Starts receiving the device's events on this instance (see [`Bus::events`]).
    async fn subscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()>;
    async fn unsubscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()>;
    /// Sends a provisioning message to the socket holding `address`; true when one was listening.
    async fn publish_provisioning(&self, address: &str, body: Vec<u8>) -> StoreResult<bool>;
    async fn subscribe_provisioning(&self, address: &str) -> StoreResult<()>;
    async fn unsubscribe_provisioning(&self, address: &str) -> StoreResult<()>;
    /// Tells every instance (this one excluded, which forgets on its own) that an account changed.
    async fn publish_invalidation(&self, aci: Aci) -> StoreResult<()>;
    /// The stream of messages for what this instance subscribed to. Taken once, by the delivery hub.
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<BusMessage>>;
}

/// Token buckets keyed by an opaque pseudonym (never a raw IP or id).
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Takes one token; `Err(wait)` tells how long until one is available.
    async fn take(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> StoreResult<Result<(), Duration>>;
}

/// The storage a running server uses.
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
    pub keys: Arc<dyn KeyStore>,
    pub pre_keys: Arc<dyn PreKeyPool>,
    pub limits: Arc<dyn RateLimitStore>,
    pub queue: Arc<dyn MessageQueue>,
    pub bus: Arc<dyn Bus>,
    /// Checks every configured store, for `/readyz`.
    pub probes: Vec<Arc<dyn Probe>>,
    /// Availability of each store as its calls see it.
    pub health: Vec<Arc<guard::StoreHealth>>,
    pub kind: &'static str,
}

/// A readiness check of one service.
#[async_trait]
pub trait Probe: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> StoreResult<()>;
}

impl Storage {
    /// Connects to the backend the configuration selects and applies pending migrations (under a lock).
    /// A store that cannot be reached yet is tried again for `SEALPOST_STORE_STARTUP_WAIT_SECONDS`, so
    /// sealpost may start before its database and Redis (as in a compose file).
    pub async fn connect(config: &Config) -> StoreResult<Storage> {
        connect_with_retries(config, Duration::from_secs(config.store_startup_wait_seconds)).await
    }

    /// Applies pending migrations only (for `sealpost migrate`).
    pub async fn migrate(config: &Config) -> StoreResult<usize> {
        match config.backend() {
            Backend::Embedded { database_url } => embedded::migrate_only(config, &database_url).await,
            Backend::ScaleOut { database_url, .. } => scaleout::migrate_only(config, &database_url).await,
            Backend::Invalid(reason) => Err(StoreError::Migration(reason)),
        }
    }
}

/// See [`Storage::connect`]: retries unreachable stores once a second until `wait` has passed.
pub async fn connect_with_retries(config: &Config, wait: Duration) -> StoreResult<Storage> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        let attempt = match config.backend() {
            Backend::Embedded { database_url } => embedded::connect(config, &database_url).await,
            Backend::ScaleOut { database_url, redis_url } => scaleout::connect(config, &database_url, &redis_url).await,
            Backend::Invalid(reason) => Err(StoreError::Migration(reason)),
        };
        match attempt {
            Err(err) if err.is_unavailable() && tokio::time::Instant::now() < deadline => {
                if !told {
                    tracing::warn!(error = %err, wait_seconds = wait.as_secs(), "a store is not reachable yet; retrying");
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err),
            Ok(storage) => {
                if told {
                    tracing::info!("every store is reachable");
                }
                return Ok(storage);
            }
        }
    }
}
