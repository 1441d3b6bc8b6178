//! The storage contract: what every backend's stores promise at the trait level, checked against each
//! backend through `Storage::connect`, without a server around them.
//!
//! Embedded: a fresh data directory. Scale-out: the shared Postgres (a schema of the test's own) and the
//! shared Redis (a key prefix of its own); where the promise is about instances, two `Storage`s share them.
//! Every test stops its stores' background tasks (they must all end on the signal) and removes what it
//! created.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sealpost::config::Config;
use sealpost::domain::{Aci, DeviceId, DeviceSlots, EcPublicKey, Incarnation, KemPublicKey, RegistrationId, Signature};
use sealpost::shutdown::Tasks;
use sealpost::storage::{
    AttachmentPart, EcOneTimeKey, NewAccount, NewAttachment, NewDevice, NewEnvelope, PushOutcome, RateBucket,
    Recipient, SignedKemKey, Storage, StoreError,
};

use crate::both_backends;
use crate::harness::*;

both_backends!(
    a_full_queue_refuses_the_whole_send,
    acknowledgements_are_idempotent,
    expired_envelopes_are_never_returned_and_are_reaped,
    a_push_naming_a_removed_device_is_gone,
    concurrent_claims_hand_out_each_one_time_key_once,
    a_lease_has_one_holder_and_growing_fencing_tokens,
    presence_is_seen_by_every_instance_and_expires,
    unique_keys_conflict,
    attachment_parts_race_for_an_offset_and_one_wins,
    a_cost_above_a_buckets_capacity_is_never_paid,
    a_second_bucket_pays_only_when_the_first_did,
);

/// The stores of one backend as a test holds them, with what is needed to stop and remove them.
pub struct Stores {
    pub storage: Storage,
    tasks: Tasks,
    /// A second instance on the same Postgres and Redis (scale-out only).
    other: Option<(Storage, Tasks)>,
    config: Config,
}

impl Stores {
    pub async fn open(backend: Backend) -> Stores {
        Stores::open_with(backend, |_| {}).await
    }

    /// As [`Stores::open`], with settings of the test's own.
    pub async fn open_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Stores {
        let mut config = test_config(backend);
        tweak(&mut config);
        let (storage, tasks) = connect(&config).await;
        let other = match backend {
            Backend::Embedded => None,
            Backend::ScaleOut => Some(connect(&config).await),
        };
        Stores { storage, tasks, other, config }
    }

    /// The second instance where there is one, else the first: what another instance would see.
    pub fn elsewhere(&self) -> &Storage {
        self.other.as_ref().map_or(&self.storage, |(storage, _)| storage)
    }

    /// Stops every background task of the stores (none may outlive the signal) and removes their data.
    pub async fn close(self) {
        for tasks in std::iter::once(&self.tasks).chain(self.other.as_ref().map(|(_, tasks)| tasks)) {
            let stuck = tasks.stop(Duration::from_secs(5)).await;
            assert!(stuck.is_empty(), "background tasks did not end on the stop signal: {stuck:?}");
            assert!(tasks.running().is_empty());
        }
        if let Some(schema) = &self.config.database_schema {
            drop_schema(schema).await;
        }
        if self.config.redis_url.is_some() {
            delete_prefix(&self.config.redis_key_prefix).await;
        }
        let _ = std::fs::remove_dir_all(&self.config.data_dir);
    }
}

async fn connect(config: &Config) -> (Storage, Tasks) {
    let tasks = Tasks::default();
    let storage = Storage::connect(config, &tasks).await.unwrap_or_else(|err| {
        panic!(
            "cannot connect the stores ({err}); scale-out needs SEALPOST_TEST_DATABASE_URL / SEALPOST_TEST_REDIS_URL"
        )
    });
    (storage, tasks)
}

fn ec_public() -> EcPublicKey {
    let mut key: [u8; 33] = sealpost::crypto::random_bytes();
    key[0] = EcPublicKey::TYPE;
    EcPublicKey(key)
}

/// An account with its primary device, as registration writes it; returns the account and device 1.
pub async fn account(storage: &Storage) -> (Aci, Recipient) {
    let aci = Aci::random();
    let incarnation = Incarnation::random();
    let account = NewAccount {
        aci,
        identity_key: ec_public(),
        registration_id: RegistrationId(7),
        incarnation,
        secret_salt: [1; 16],
        secret_hash: [2; 32],
        approved: true,
        created_at: sealpost::domain::now_millis(),
    };
    storage.accounts.create_account(&account, None, account.created_at).await.expect("storage").expect("created");
    (aci, Recipient { device: DeviceId::PRIMARY, incarnation })
}

/// Links a device; an id given up before now may be handed out again at once.
pub async fn link(storage: &Storage, aci: Aci) -> Recipient {
    let incarnation = Incarnation::random();
    let now = sealpost::domain::now_millis();
    let device = NewDevice {
        registration_id: RegistrationId(8),
        incarnation,
        secret_salt: [3; 16],
        secret_hash: [4; 32],
        name: None,
        created_at: now,
    };
    let slots = DeviceSlots { max_devices: 6, reuse_after: now + 1 };
    let id = storage.accounts.add_device(aci, &device, &slots).await.expect("storage").expect("linked");
    Recipient { device: id, incarnation }
}

fn envelope(expires_at: i64) -> NewEnvelope {
    NewEnvelope { guid: sealpost::crypto::random_bytes(), expires_at, envelope: b"ciphertext".to_vec() }
}

fn in_an_hour() -> i64 {
    sealpost::domain::now_millis() + 3_600_000
}

async fn push(storage: &Storage, aci: Aci, items: &[(Recipient, NewEnvelope)], max_len: u32) -> PushOutcome {
    storage.queue.push(aci, items, max_len, None).await.expect("push")
}

async fn queued(storage: &Storage, aci: Aci, device: DeviceId, now: i64) -> Vec<[u8; 16]> {
    let page = storage.queue.peek(aci, device, 0, 100, now).await.expect("peek");
    page.into_iter().map(|e| e.guid).collect()
}

async fn a_full_queue_refuses_the_whole_send(backend: Backend) {
    let stores = Stores::open(backend).await;
    let storage = &stores.storage;
    let (aci, primary) = account(storage).await;
    let second = link(storage, aci).await;
    for _ in 0..3 {
        assert_eq!(push(storage, aci, &[(second, envelope(in_an_hour()))], 3).await, PushOutcome::Queued);
    }
    let send = [(primary, envelope(in_an_hour())), (second, envelope(in_an_hour()))];
    assert_eq!(push(storage, aci, &send, 3).await, PushOutcome::Full(second.device));
    let now = sealpost::domain::now_millis();
    assert!(queued(storage, aci, primary.device, now).await.is_empty(), "a refused send queues for no device");
    assert_eq!(queued(storage, aci, second.device, now).await.len(), 3);
    // The primary's queue has room of its own: alone, the same envelope goes in.
    assert_eq!(push(storage, aci, &send[..1], 3).await, PushOutcome::Queued);
    assert_eq!(queued(storage, aci, primary.device, now).await, vec![send[0].1.guid]);
    stores.close().await;
}

async fn acknowledgements_are_idempotent(backend: Backend) {
    let stores = Stores::open(backend).await;
    let storage = &stores.storage;
    let (aci, primary) = account(storage).await;
    let (first, second) = (envelope(in_an_hour()), envelope(in_an_hour()));
    for item in [&first, &second] {
        assert_eq!(push(storage, aci, &[(primary, item.clone())], 10).await, PushOutcome::Queued);
    }
    let device = primary.device;
    assert!(storage.queue.ack(aci, device, first.guid).await.expect("ack"), "the first ack deletes");
    assert!(!storage.queue.ack(aci, device, first.guid).await.expect("ack"), "the second finds nothing");
    let unknown: [u8; 16] = sealpost::crypto::random_bytes();
    let guids = [first.guid, second.guid, unknown];
    assert_eq!(storage.queue.ack_many(aci, device, &guids).await.expect("ack many"), 1, "only one was still there");
    assert_eq!(storage.queue.ack_many(aci, device, &guids).await.expect("ack many"), 0);
    assert!(queued(storage, aci, device, sealpost::domain::now_millis()).await.is_empty());
    stores.close().await;
}

async fn expired_envelopes_are_never_returned_and_are_reaped(backend: Backend) {
    let stores = Stores::open(backend).await;
    let storage = &stores.storage;
    let (aci, primary) = account(storage).await;
    let second = link(storage, aci).await;
    let now = sealpost::domain::now_millis();
    let later = now + 120_000;
    let (brief, briefer, lasting) = (envelope(now + 60_000), envelope(now + 30_000), envelope(in_an_hour()));
    for item in [&brief, &briefer, &lasting] {
        assert_eq!(push(storage, aci, &[(primary, item.clone())], 10).await, PushOutcome::Queued);
    }
    assert_eq!(queued(storage, aci, primary.device, now).await.len(), 3, "nothing has expired yet");

    // The reaper may work through a bounded share of the store per run: give it a few.
    let mut reaped = 0;
    for _ in 0..20 {
        reaped += storage.queue.reap(later).await.expect("reap");
        if reaped >= 2 {
            break;
        }
    }
    assert_eq!(reaped, 2, "the reaper deletes the two expired envelopes and counts them");
    assert_eq!(
        queued(storage, aci, primary.device, now).await,
        vec![lasting.guid],
        "reaped envelopes are gone, not just hidden"
    );
    assert_eq!(storage.queue.reap(later).await.expect("reap"), 0, "nothing is reaped twice");

    // Without the reaper, reads never return an expired envelope either.
    assert_eq!(push(storage, aci, &[(second, envelope(now + 60_000))], 10).await, PushOutcome::Queued);
    assert_eq!(queued(storage, aci, second.device, now).await.len(), 1);
    assert!(queued(storage, aci, second.device, later).await.is_empty(), "an expired envelope is never returned");
    stores.close().await;
}

async fn a_push_naming_a_removed_device_is_gone(backend: Backend) {
    let stores = Stores::open(backend).await;
    let storage = &stores.storage;
    let (aci, primary) = account(storage).await;
    let removed = link(storage, aci).await;
    let before = envelope(in_an_hour());
    assert_eq!(push(storage, aci, &[(removed, before)], 10).await, PushOutcome::Queued);
    // Removing a device, as the service does it: the record, then its queue.
    let now = sealpost::domain::now_millis();
    assert!(storage.accounts.delete_device(aci, removed.device, now).await.expect("delete"));
    storage.queue.remove_device(aci, removed).await.expect("remove queue");
    assert!(queued(storage, aci, removed.device, now).await.is_empty(), "the removed device's queue is deleted");

    let send = [(primary, envelope(in_an_hour())), (removed, envelope(in_an_hour()))];
    assert_eq!(push(storage, aci, &send, 10).await, PushOutcome::Gone(removed.device));
    assert!(queued(storage, aci, primary.device, now).await.is_empty(), "a refused send queues for no device");

    // A later device that gets the same id is another incarnation: pushes naming it go through, pushes
    // naming the removed one still do not.
    let successor = link(storage, aci).await;
    assert_eq!(successor.device, removed.device, "the id was free again at once");
    assert_eq!(push(storage, aci, &[(removed, envelope(in_an_hour()))], 10).await, PushOutcome::Gone(removed.device));
    assert_eq!(push(storage, aci, &[(successor, envelope(in_an_hour()))], 10).await, PushOutcome::Queued);
    assert_eq!(queued(storage, aci, successor.device, now).await.len(), 1);
    stores.close().await;
}

async fn concurrent_claims_hand_out_each_one_time_key_once(backend: Backend) {
    let stores = Stores::open(backend).await;
    let (aci, primary) = account(&stores.storage).await;
    let device = primary.device;
    let ec: Vec<EcOneTimeKey> = (1..=100).map(|key_id| EcOneTimeKey { key_id, public_key: ec_public() }).collect();
    let kem: Vec<SignedKemKey> = (1001..=1100)
        .map(|key_id| {
            let mut public_key = vec![KemPublicKey::TYPE];
            public_key.extend_from_slice(&sealpost::crypto::random_bytes::<1568>());
            SignedKemKey { key_id, public_key: KemPublicKey(public_key), signature: Signature([9; 64]) }
        })
        .collect();
    stores.storage.pre_keys.replace(aci, device, Some(&ec), Some(&kem)).await.expect("replace");
    assert_eq!(stores.storage.pre_keys.counts(aci, device).await.expect("counts"), (100, 100));

    let pool = Arc::clone(&stores.storage.pre_keys);
    let claims: Vec<_> = (0..1000)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.claim(aci, device).await.expect("claim") })
        })
        .collect();
    let (mut ec_ids, mut kem_ids) = (Vec::new(), Vec::new());
    for claim in claims {
        let (ec_key, kem_key) = claim.await.expect("task");
        if let Some(key) = ec_key {
            assert!(ec.contains(&key), "a claimed key is one that was uploaded, intact");
            ec_ids.push(key.key_id);
        }
        if let Some(key) = kem_key {
            assert!(kem.contains(&key), "a claimed key is one that was uploaded, intact");
            kem_ids.push(key.key_id);
        }
    }
    assert_eq!(ec_ids.len(), 100, "every EC key was handed out");
    assert_eq!(ec_ids.iter().collect::<HashSet<_>>().len(), 100, "no EC key was handed out twice");
    assert_eq!(kem_ids.len(), 100, "every Kyber key was handed out");
    assert_eq!(kem_ids.iter().collect::<HashSet<_>>().len(), 100, "no Kyber key was handed out twice");
    assert_eq!(stores.storage.pre_keys.counts(aci, device).await.expect("counts"), (0, 0));
    stores.close().await;
}

async fn a_lease_has_one_holder_and_growing_fencing_tokens(backend: Backend) {
    let stores = Stores::open(backend).await;
    let (here, there) = (&stores.storage.lease, &stores.elsewhere().lease);
    let name = "contract-job";
    let short = Duration::from_millis(500);
    let first = here.acquire(name, "alpha", short).await.expect("acquire").expect("granted while free");
    assert_eq!(there.acquire(name, "beta", short).await.expect("acquire"), None, "one holder at a time");
    // Neither a stranger nor the holder under another token can release it.
    there.release(name, "beta", first).await.expect("release");
    here.release(name, "alpha", first + 1).await.expect("release");
    assert_eq!(there.acquire(name, "beta", short).await.expect("acquire"), None, "still held");
    assert!(here.renew(name, "alpha", first, Duration::from_millis(2000)).await.expect("renew"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(there.acquire(name, "beta", short).await.expect("acquire"), None, "the renewal extended it");

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let second = there.acquire(name, "beta", Duration::from_secs(30)).await.expect("acquire").expect("expired");
    assert!(second > first, "a later grant has a larger fencing token ({second} after {first})");
    assert!(!here.renew(name, "alpha", first, short).await.expect("renew"), "a lost lease cannot be renewed");
    here.release(name, "alpha", first).await.expect("release");
    assert_eq!(here.acquire(name, "gamma", short).await.expect("acquire"), None, "the late release freed nothing");
    there.release(name, "beta", second).await.expect("release");
    let third = here.acquire(name, "gamma", short).await.expect("acquire").expect("released");
    assert!(third > second);
    stores.close().await;
}

async fn presence_is_seen_by_every_instance_and_expires(backend: Backend) {
    let stores = Stores::open(backend).await;
    let (here, there) = (&stores.storage.presence, &stores.elsewhere().presence);
    let aci = Aci::random();
    let (device, other) = (DeviceId(1), DeviceId(2));
    let long = Duration::from_secs(30);
    assert!(!there.is_connected(aci, device).await.expect("presence"));
    here.connected(aci, device, 10, long).await.expect("connected");
    assert!(there.is_connected(aci, device).await.expect("presence"), "seen from another instance");
    assert!(!there.is_connected(aci, other).await.expect("presence"), "only the device marked");

    // A newer socket takes over; the older one's late goodbye must not unmark it.
    there.connected(aci, device, 20, long).await.expect("connected");
    // The older one's late renewal must not take the mark back, nor its late goodbye remove it.
    here.connected(aci, device, 10, long).await.expect("connected");
    here.disconnected(aci, device, 10).await.expect("disconnected");
    assert!(there.is_connected(aci, device).await.expect("presence"), "the newer connection stays marked");
    here.disconnected(aci, device, 20).await.expect("disconnected");
    assert!(!there.is_connected(aci, device).await.expect("presence"), "its own goodbye unmarks it");

    here.connected(aci, other, 30, Duration::from_millis(300)).await.expect("connected");
    assert!(there.is_connected(aci, other).await.expect("presence"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!there.is_connected(aci, other).await.expect("presence"), "an unrenewed mark expires");
    stores.close().await;
}

async fn unique_keys_conflict(backend: Backend) {
    let stores = Stores::open(backend).await;
    let storage = &stores.storage;
    let hash: [u8; 32] = sealpost::crypto::random_bytes();
    storage.accounts.create_invite(hash, in_an_hour()).await.expect("first invite");
    let again = storage.accounts.create_invite(hash, in_an_hour()).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "a duplicate invite is a conflict: {again:?}");

    let (aci, _) = account(storage).await;
    storage.accounts.create_link_code(hash, aci, in_an_hour()).await.expect("link code");
    let again = storage.accounts.create_link_code(hash, aci, in_an_hour()).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "a duplicate link code is a conflict: {again:?}");
    let orphan = storage.accounts.create_link_code(sealpost::crypto::random_bytes(), Aci::random(), in_an_hour()).await;
    assert!(matches!(orphan, Err(StoreError::Conflict(_))), "a code for no account is a conflict: {orphan:?}");
    // The first invite is untouched by the refused one: it still creates exactly one account.
    let now = sealpost::domain::now_millis();
    let mut new = NewAccount {
        aci: Aci::random(),
        identity_key: ec_public(),
        registration_id: RegistrationId(9),
        incarnation: Incarnation::random(),
        secret_salt: [5; 16],
        secret_hash: [6; 32],
        approved: true,
        created_at: now,
    };
    assert_eq!(storage.accounts.create_account(&new, Some(hash), now).await.expect("storage"), Ok(()));
    new.aci = Aci::random();
    let spent = storage.accounts.create_account(&new, Some(hash), now).await.expect("storage");
    assert_eq!(spent, Err(sealpost::storage::CreateAccountError::InvalidInvite), "an invite works once");
    stores.close().await;
}

async fn attachment_parts_race_for_an_offset_and_one_wins(backend: Backend) {
    let stores = Stores::open(backend).await;
    let now = sealpost::domain::now_millis();
    let id_hash: [u8; 32] = sealpost::crypto::random_bytes();
    let new = NewAttachment {
        id_hash,
        credential_hash: [7; 32],
        length: 30,
        created_at: now,
        upload_until: now + 60_000,
        expires_at: now + 120_000,
    };
    stores.storage.attachments.create_attachment(&new).await.expect("create");
    // Eight writers, on both instances where there are two, all try to store bytes 0..10.
    let writers = (0..8).map(|i| {
        let storage = if i % 2 == 0 { stores.storage.clone() } else { stores.elsewhere().clone() };
        async move {
            let part = AttachmentPart { start: 0, length: 10, object: format!("w{i}") };
            storage.attachments.add_part(id_hash, &part, now).await.expect("add part")
        }
    });
    let won = futures_util::future::join_all(writers).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "exactly one writer stores the part: {won:?}");
    // The rest go on from the new offset; one that would pass the declared length is refused.
    let part = |start, length, object: &str| AttachmentPart { start, length, object: object.into() };
    assert!(!stores.storage.attachments.add_part(id_hash, &part(10, 21, "long"), now).await.expect("add"));
    assert!(stores.storage.attachments.add_part(id_hash, &part(10, 20, "rest"), now + 5).await.expect("add"));
    let stored = stores.elsewhere().attachments.attachment(id_hash).await.expect("read").expect("there");
    assert_eq!(
        (stored.received, stored.completed_at),
        (30, Some(now + 5)),
        "complete when the offset reaches the length"
    );
    assert_eq!(stored.parts.iter().map(|p| (p.start, p.length)).collect::<Vec<_>>(), vec![(0, 10), (10, 20)]);
    assert!(!stores.storage.attachments.add_part(id_hash, &part(30, 1, "more"), now).await.expect("add"), "complete");
    // Due for deletion once expired; deleting takes the parts along.
    assert!(stores.storage.attachments.expired_attachments(now, 10).await.expect("due").is_empty());
    let due = stores.storage.attachments.expired_attachments(now + 120_000, 10).await.expect("due");
    assert_eq!(due, vec![id_hash]);
    assert_eq!(stores.storage.attachments.delete_attachments(&due).await.expect("delete"), 1);
    assert!(stores.elsewhere().attachments.attachment(id_hash).await.expect("read").is_none());
    stores.close().await;
}

async fn a_cost_above_a_buckets_capacity_is_never_paid(backend: Backend) {
    let stores = Stores::open(backend).await;
    let limit = limit("10/1h");
    let key = sealpost::crypto::random_bytes::<16>();
    let limits = &stores.storage.limits;
    assert!(limits.take("test_cost", &key, &limit, 11).await.expect("take").is_err(), "more than the capacity");
    assert!(limits.take("test_cost", &key, &limit, 7).await.expect("take").is_ok());
    let wait = limits.take("test_cost", &key, &limit, 4).await.expect("take").expect_err("only 3 left");
    // One token comes back every 6 minutes: the fourth is about 6 minutes away.
    assert!((300..=370).contains(&wait.as_secs()), "{wait:?}");
    assert!(limits.take("test_cost", &key, &limit, 3).await.expect("take").is_ok());
    assert!(limits.take("test_cost", &key, &limit, 1).await.expect("take").is_err());
    stores.close().await;
}

/// Two buckets taken in one call (a bundle fetch's per-requester and per-requester-and-target limits):
/// the second pays only when the first had a token, and the refusal names the bucket that refused. On a
/// Redis Cluster both live in one slot, or the script would be refused.
async fn a_second_bucket_pays_only_when_the_first_did(backend: Backend) {
    let stores = Stores::open(backend).await;
    let bucket = |name: &'static str, per: &str| RateBucket {
        name,
        key: sealpost::crypto::random_bytes::<16>(),
        limit: limit(per),
    };
    let limits = &stores.storage.limits;
    let refill = Duration::from_millis(1100);
    // The first bucket gets a token back every second, the second ones one an hour.
    let (first, second) = (bucket("test_first", "1/1s"), bucket("test_second", "1/1h"));
    assert!(limits.take_two(&first, &second).await.expect("take").is_ok());
    let (name, wait) = limits.take_two(&first, &second).await.expect("take").expect_err("the first is empty");
    assert_eq!(name, "test_first");
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
    tokio::time::sleep(refill).await;
    let (name, wait) = limits.take_two(&first, &second).await.expect("take").expect_err("the second is empty");
    assert_eq!(name, "test_second");
    assert!((3000..=3600).contains(&wait.as_secs()), "{wait:?}");
    // The first bucket has just paid, so it refuses now, and that takes nothing from a fresh second one.
    let fresh = bucket("test_second", "1/1h");
    assert_eq!(limits.take_two(&first, &fresh).await.expect("take").expect_err("the first is empty").0, "test_first");
    tokio::time::sleep(refill).await;
    assert!(limits.take_two(&first, &fresh).await.expect("take").is_ok(), "the second kept its token");
    stores.close().await;
}
