//! The storage seams: one small trait per concern, each implemented once per backend. Handlers and
//! services see only these; the rules (which id a new device gets, when a code has expired) live above
//! them, in `domain` and the services, once.

use std::time::Duration;

use async_trait::async_trait;

use super::error::StoreResult;
use super::model::*;
use crate::config::RateLimit;
use crate::domain::{AccessKey, Aci, DeviceId, DeviceSlots};

/// Accounts, devices and invite codes: durable records.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account with device 1; with `invite`, consumes that invite in the same transaction,
    /// or creates nothing when it is unknown or no longer live (`domain::is_live` at `now`).
    async fn create_account(
        &self,
        account: &NewAccount,
        invite: Option<[u8; 32]>,
        now: i64,
    ) -> StoreResult<Result<(), CreateAccountError>>;
    async fn create_invite(&self, code_hash: [u8; 32], expires_at: i64) -> StoreResult<()>;
    /// Adds a device under the id `slots` picks from the ids in use and those given up (with when), or
    /// refuses when it picks none; serialised per account so two concurrent links cannot both take the
    /// last place.
    async fn add_device(
        &self,
        aci: Aci,
        device: &NewDevice,
        slots: &DeviceSlots,
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
    /// Deletes a link code and returns its account and expiry: a code works once, whatever happens next
    /// (the caller decides whether it was still live).
    async fn consume_link_code(&self, code_hash: [u8; 32]) -> StoreResult<Option<(Aci, i64)>>;
    /// Deletes expired invite and link codes; returns how many.
    async fn reap_codes(&self, now: i64) -> StoreResult<u64>;
    /// Up to `limit` devices last seen before the day `seen_before` (ms, a day's start), leaving out
    /// primaries of accounts that have a device seen since: an account is idle only when all of it is.
    async fn idle_devices(&self, seen_before: i64, limit: u32) -> StoreResult<Vec<IdleDevice>>;
    async fn ping(&self) -> StoreResult<()>;
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

/// Per-device envelope queues with a TTL. An envelope stays until acknowledged or expired; expired ones are
/// never returned.
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Appends one envelope per listed device of `aci`, all or nothing, and wakes the sockets listening
    /// for those devices (on any instance): callers never publish a wake-up themselves. With a `bucket`,
    /// first takes one token from it (one storage round trip for a whole send); refuses when a queue
    /// already holds `max_len` envelopes, or when a listed device (in that incarnation) has been removed,
    /// so nothing meant for a removed device can ever reach a later device with the same id.
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
    /// Takes `cost` tokens (1 for a request); `Err(wait)` tells how long until that many are there. A cost
    /// above the bucket's capacity can never be paid.
    async fn take(
        &self,
        bucket: &str,
        key: &[u8; 16],
        limit: &RateLimit,
        cost: u32,
    ) -> StoreResult<Result<(), Duration>>;
    /// As [`RateLimitStore::take`], but takes nothing: whether a token is there now.
    async fn peek(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> StoreResult<Result<(), Duration>>;
    /// Takes a token from `first` and, only when it had one, from `second`, in one call to the store;
    /// `Err` names the bucket that refused and the wait. A `second` bucket belongs with one `first` (the
    /// pair bucket with its requester's): a store may keep it beside that one, so taken with another
    /// `first` it may be another bucket.
    async fn take_two(
        &self,
        first: &RateBucket,
        second: &RateBucket,
    ) -> StoreResult<Result<(), (&'static str, Duration)>>;
}

/// A readiness check of one service.
#[async_trait]
pub trait Probe: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> StoreResult<()>;
}

/// Which devices have a socket open, on any instance: so a wake-up can go by push to a device that has
/// none. Entries expire unless renewed, so a crashed instance leaves nothing behind for long.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Marks the device connected through `connection` (ids grow with time) for `ttl`; the socket renews
    /// it well before it runs out.
    async fn connected(&self, aci: Aci, device: DeviceId, connection: u64, ttl: Duration) -> StoreResult<()>;
    /// Unmarks the device, unless another connection marked it since.
    async fn disconnected(&self, aci: Aci, device: DeviceId, connection: u64) -> StoreResult<()>;
    async fn is_connected(&self, aci: Aci, device: DeviceId) -> StoreResult<bool>;
}

/// Named leases, so that a job runs on one instance at a time. A grant carries a fencing token that grows
/// with every grant of the name, so work done under a lease that was lost can be told from newer work.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Takes the lease for `ttl` unless someone holds it; `Some(fencing token)` when granted.
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<u64>>;
    /// Extends a lease still held under this token; false when it expired (and may be another's now).
    async fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> StoreResult<bool>;
    /// Gives the lease up if still held under this token.
    async fn release(&self, name: &str, holder: &str, token: u64) -> StoreResult<()>;
}

/// Contact tokens: durable, in the database beside the accounts they belong to.
#[async_trait]
pub trait ContactTokens: Send + Sync {
    /// Stores a new token if `cap` allows one more beside the owner's (serialised per owner); false when
    /// the owner is at the cap.
    async fn create(&self, token: &NewContactToken, cap: &ContactCap) -> StoreResult<bool>;
    /// The owner's tokens, newest first.
    async fn list(&self, owner: Aci) -> StoreResult<Vec<ContactToken>>;
    /// Revokes one of the owner's tokens; false when the owner has no such token.
    async fn revoke(&self, owner: Aci, id: [u8; 16]) -> StoreResult<bool>;
    /// The token with this keyed hash, whatever its state.
    async fn find(&self, token_hash: [u8; 32]) -> StoreResult<Option<ContactToken>>;
    /// Counts `requester` (a keyed hash) as a user of the token, once: true when it was counted now or
    /// before, false when it is new and the token has no room (`ContactToken::has_room`) or is gone.
    async fn count_use(&self, id: [u8; 16], requester: [u8; 16]) -> StoreResult<bool>;
    /// Deletes revoked tokens and those expired at `now`; returns how many.
    async fn reap(&self, now: i64) -> StoreResult<u64>;
}

/// Attachment records: durable, beside the accounts. The bytes are in [`Blobs`].
#[async_trait]
pub trait AttachmentStore: Send + Sync {
    async fn create_attachment(&self, attachment: &NewAttachment) -> StoreResult<()>;
    /// The attachment with this id hash, with its parts in order.
    async fn attachment(&self, id_hash: [u8; 32]) -> StoreResult<Option<Attachment>>;
    /// Records `part`, which begins at the upload's offset, if the offset is still `part.start`: moves the
    /// offset past it and, when that reaches the length, marks the upload complete at `now`. False when
    /// the offset moved meanwhile (another writer won) or the attachment is gone; nothing is changed then.
    async fn add_part(&self, id_hash: [u8; 32], part: &AttachmentPart, now: i64) -> StoreResult<bool>;
    /// Up to `limit` attachments to delete at `now`: expired ones, and uploads whose window closed unfinished.
    async fn expired_attachments(&self, now: i64, limit: usize) -> StoreResult<Vec<[u8; 32]>>;
    /// Deletes these records and their parts (once their objects are gone); returns how many went.
    async fn delete_attachments(&self, id_hashes: &[[u8; 32]]) -> StoreResult<u64>;
}

/// Bytes as they arrive from an object store.
pub type BlobStream = futures_util::stream::BoxStream<'static, StoreResult<bytes::Bytes>>;

/// Opaque objects by name: a directory in the embedded deployment, an S3-compatible bucket in scale-out.
#[async_trait]
pub trait Blobs: Send + Sync {
    /// Stores an object whole (it appears at once or not at all).
    async fn put(&self, name: &str, bytes: bytes::Bytes) -> StoreResult<()>;
    /// Bytes `range` of an object, streamed.
    async fn get(&self, name: &str, range: std::ops::Range<u64>) -> StoreResult<BlobStream>;
    /// Deletes one object (no error when it is already gone).
    async fn delete(&self, name: &str) -> StoreResult<()>;
    /// Deletes every object under the folder `prefix` (whole path segments); returns how many.
    async fn delete_prefix(&self, prefix: &str) -> StoreResult<u64>;
}

/// Web Push subscriptions: durable, one per device, gone with the device.
#[async_trait]
pub trait PushSubscriptions: Send + Sync {
    /// Stores (or replaces) the device's endpoint; false when there is no such device.
    async fn put_subscription(&self, aci: Aci, device: DeviceId, endpoint: &str, now: i64) -> StoreResult<bool>;
    async fn subscription(&self, aci: Aci, device: DeviceId) -> StoreResult<Option<String>>;
    /// Deletes the device's subscription; with `only`, only while it still is that endpoint (a push service's
    /// 410 must not remove the subscription a device renewed meanwhile). True when one was deleted.
    async fn delete_subscription(&self, aci: Aci, device: DeviceId, only: Option<&str>) -> StoreResult<bool>;
}

/// What the wakeups keep for a short while: which devices were woken lately (so a burst of envelopes
/// makes one wakeup) and the wakeups waiting to be sent again. Ephemeral: losing it costs at most a
/// repeated or a missed retry of a wakeup, never a message.
#[async_trait]
pub trait WakeupState: Send + Sync {
    /// Notes a wakeup of the device for `quiet`, unless one of the same or a higher urgency was noted and
    /// has not run out (an urgent wakeup still goes after a normal one); true when the caller should send.
    async fn mark(&self, aci: Aci, device: DeviceId, urgent: bool, quiet: Duration) -> StoreResult<bool>;
    /// Forgets the device's note: it connected, so the next envelope after it leaves may wake it again.
    async fn clear(&self, aci: Aci, device: DeviceId) -> StoreResult<()>;
    async fn schedule_retry(&self, retry: &WakeupRetry) -> StoreResult<()>;
    /// Removes and returns up to `limit` retries due at `now`, each to exactly one caller.
    async fn take_due(&self, now: i64, limit: usize) -> StoreResult<Vec<WakeupRetry>>;
}
