//! One-time prekeys taken from the database ahead of demand, for devices whose bundle is fetched often.
//!
//! A claim that finds its device's reserve empty asks the batch writer for the next key, or, when the
//! device was claimed from less than [`BUSY_WINDOW`] ago, for up to twice as many as last time (at most
//! `SEALPOST_PREKEY_RESERVE_MAX`): the writer deletes them durably in one statement, the caller gets the
//! first and the rest wait here, so the next claims are a pop under a lock and cost no write. A device
//! fetched now and then never holds a reserve.
//!
//! Invariants: a key enters a reserve only after the DELETE that took it from the table committed, and
//! leaves it only by a pop, so no key is handed out twice, even after a crash (a crash loses what the
//! reserves held; a stop returns it to the table, see `writer.rs`). Whatever replaces or removes a
//! device's keys calls [`Reserves::forget`] (or [`Reserves::forget_account`]) before and after its
//! transaction: after it, so no key reserved from the old pool survives; before it, so keys returned at a
//! stop cannot land in the new pool. Each forget moves an epoch; keys fetched while their epoch moved are
//! dropped, never reserved.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{Aci, DeviceId};
use crate::storage::{EcOneTimeKey, SignedKemKey};

/// Claims this close together make a device's next fetch from the table take more keys at once.
const BUSY_WINDOW: Duration = Duration::from_secs(1);
/// Epoch slots; a forget drops the keys in flight of the devices in its slot only.
const SLOTS: usize = 32;
/// Claims between two sweeps of devices whose reserve is empty and whose last claim is old.
const SWEEP_EVERY: u32 = 4096;

/// A claim's one-time keys: each kind, if the pool had one.
pub type Claimed = (Option<EcOneTimeKey>, Option<SignedKemKey>);

/// The keys the batch writer took for one claim, in key-id order, and how many of each it was asked for.
pub struct Taken {
    pub ec: Vec<EcOneTimeKey>,
    pub kem: Vec<SignedKemKey>,
}

/// A claim's outcome at the reserve.
pub enum Claim {
    /// Served from the reserve (or an emptied pool): no write needed.
    Ready(Claimed),
    /// The table must be asked; settle with [`Reserves::settle`] (or [`Reserves::put_back`] on failure).
    Fetch(Fetch),
    /// The table must be asked, but only by one claim of the device at a time: take this turn, then claim
    /// again. Otherwise a claim could find the table empty while the keys another fetch took are on their
    /// way into the reserve, and hand out no key although the device has some.
    Queue(Arc<tokio::sync::Mutex<()>>),
}

/// What a claim must fetch from the table, and what it already holds from the reserve.
pub struct Fetch {
    /// Keys of each kind to take from the table (0: this kind is settled without the table).
    pub ec: usize,
    pub kem: usize,
    held: Claimed,
    slot: usize,
    epoch: u64,
}

/// Every device's reserve; see the module documentation.
pub struct Reserves {
    inner: Mutex<Inner>,
    /// Keys of one kind a device may hold at most (0: never reserve).
    max_keys: usize,
    /// Devices with a reserve (or a recent claim) at most; beyond it claims take one key at a time.
    max_devices: usize,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<(Aci, DeviceId), Reserve>,
    epochs: [u64; SLOTS],
    since_sweep: u32,
    /// Set by [`Reserves::drain`]: the server is stopping and nothing is reserved any more.
    closed: bool,
}

struct Reserve {
    ec: Kind<EcOneTimeKey>,
    kem: Kind<SignedKemKey>,
    /// `None` until the first claim settles nothing about how busy the device is.
    last_claim: Option<Instant>,
    /// Keys of each kind the next fetch from the table takes.
    batch: usize,
    /// Held by the one claim of the device that fetches from the table.
    turn: Arc<tokio::sync::Mutex<()>>,
}

struct Kind<K> {
    keys: VecDeque<K>,
    /// The table had fewer keys of this kind than the last fetch asked for: it has none left.
    empty: bool,
}

impl<K> Default for Kind<K> {
    fn default() -> Self {
        Kind { keys: VecDeque::new(), empty: false }
    }
}

impl<K> Kind<K> {
    /// Whether a claim gets this kind's answer without the table.
    fn ready(&self) -> bool {
        !self.keys.is_empty() || self.empty
    }

    /// The next key, or `Err(())` when the table must be asked.
    fn pop(&mut self) -> Result<Option<K>, ()> {
        match self.keys.pop_front() {
            Some(key) => Ok(Some(key)),
            None if self.empty => Ok(None),
            None => Err(()),
        }
    }

    fn refill(&mut self, asked: usize, got: Vec<K>, keep: bool) -> Option<K> {
        if asked == 0 {
            return None;
        }
        self.empty = got.len() < asked;
        let mut got = got.into_iter();
        let first = got.next();
        if keep {
            self.keys.extend(got);
        }
        first
    }
}

fn slot(aci: Aci, device: DeviceId) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (aci, device).hash(&mut hasher);
    (hasher.finish() % SLOTS as u64) as usize
}

impl Reserves {
    pub fn new(max_keys: usize, max_devices: usize) -> Reserves {
        Reserves { inner: Mutex::new(Inner::default()), max_keys, max_devices }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can panic while holding the lock; should it, the reserve is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A claim's keys straight from the reserve, or what it must fetch from the table (and the keys it
    /// already took from the reserve, to go with the fetched ones in [`Reserves::settle`]). `has_turn`: the
    /// caller holds the device's turn from an earlier [`Claim::Queue`].
    pub fn claim(&self, aci: Aci, device: DeviceId, has_turn: bool) -> Claim {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.since_sweep += 1;
        if inner.since_sweep >= SWEEP_EVERY {
            inner.since_sweep = 0;
            inner.devices.retain(|_, r| {
                !r.ec.keys.is_empty() || !r.kem.keys.is_empty() || r.last_claim.is_some_and(|t| now - t < BUSY_WINDOW)
            });
        }
        let slot = slot(aci, device);
        let epoch = inner.epochs[slot];
        let room = !inner.closed && self.max_keys > 1 && inner.devices.len() < self.max_devices;
        let reserve = match inner.devices.get_mut(&(aci, device)) {
            Some(reserve) => reserve,
            None if room => inner.devices.entry((aci, device)).or_insert(Reserve {
                ec: Kind::default(),
                kem: Kind::default(),
                last_claim: None,
                batch: 1,
                turn: Arc::default(),
            }),
            None => return Claim::Fetch(Fetch { ec: 1, kem: 1, held: (None, None), slot, epoch }),
        };
        let ready = reserve.ec.ready() && reserve.kem.ready();
        if !has_turn && !ready {
            return Claim::Queue(reserve.turn.clone());
        }
        let busy = reserve.last_claim.is_some_and(|t| now - t < BUSY_WINDOW);
        reserve.last_claim = Some(now);
        let (ec, kem) = match (reserve.ec.pop(), reserve.kem.pop()) {
            (Ok(ec), Ok(kem)) => return Claim::Ready((ec, kem)),
            pair => pair,
        };
        reserve.batch = if busy { (reserve.batch * 2).min(self.max_keys) } else { 1 };
        let batch = reserve.batch;
        Claim::Fetch(Fetch {
            ec: if ec.is_err() { batch } else { 0 },
            kem: if kem.is_err() { batch } else { 0 },
            held: (ec.unwrap_or(None), kem.unwrap_or(None)),
            slot,
            epoch,
        })
    }

    /// The claim's keys once the table answered `fetch` with `taken`; the rest of `taken` is reserved unless
    /// a forget moved the epoch meanwhile (then it is dropped: lost, never handed out twice).
    pub fn settle(&self, aci: Aci, device: DeviceId, fetch: Fetch, taken: Taken) -> Claimed {
        let mut inner = self.lock();
        let keep = inner.epochs[fetch.slot] == fetch.epoch && !inner.closed;
        let dropped = |asked: usize, got: usize| if keep || asked == 0 { 0 } else { got.saturating_sub(1) };
        let lost = dropped(fetch.ec, taken.ec.len()) + dropped(fetch.kem, taken.kem.len());
        if lost > 0 {
            metrics::counter!("sealpost_prekeys_reserve_dropped_total").increment(lost as u64);
        }
        let (mut ec, mut kem) = fetch.held;
        match inner.devices.get_mut(&(aci, device)) {
            Some(reserve) => {
                ec = ec.or(reserve.ec.refill(fetch.ec, taken.ec, keep));
                kem = kem.or(reserve.kem.refill(fetch.kem, taken.kem, keep));
            }
            None => {
                ec = ec.or(taken.ec.into_iter().next());
                kem = kem.or(taken.kem.into_iter().next());
            }
        }
        (ec, kem)
    }

    /// A fetch that failed: the keys it took from the reserve go back (unless a forget came meanwhile).
    pub fn put_back(&self, aci: Aci, device: DeviceId, fetch: Fetch) {
        let mut inner = self.lock();
        if inner.epochs[fetch.slot] != fetch.epoch {
            return;
        }
        if let Some(reserve) = inner.devices.get_mut(&(aci, device)) {
            let (ec, kem) = fetch.held;
            reserve.ec.keys.extend(ec);
            reserve.kem.keys.extend(kem);
        }
    }

    /// Keys of each kind the device's reserve holds.
    pub fn held(&self, aci: Aci, device: DeviceId) -> (usize, usize) {
        self.lock().devices.get(&(aci, device)).map(|r| (r.ec.keys.len(), r.kem.keys.len())).unwrap_or((0, 0))
    }

    /// The device's keys are being replaced or removed: drop its reserve and whatever is in flight.
    pub fn forget(&self, aci: Aci, device: DeviceId) {
        let mut inner = self.lock();
        inner.epochs[slot(aci, device)] += 1;
        inner.devices.remove(&(aci, device));
    }

    /// The account is being deleted: drop the reserves of all its devices and whatever is in flight.
    pub fn forget_account(&self, aci: Aci) {
        let mut inner = self.lock();
        for epoch in inner.epochs.iter_mut() {
            *epoch += 1;
        }
        inner.devices.retain(|(owner, _), _| *owner != aci);
    }

    /// The server is stopping: every reserved key with its device and epoch, for the writer to put back
    /// into the table; nothing is reserved from now on.
    pub fn drain(&self) -> Vec<Returned> {
        let mut inner = self.lock();
        inner.closed = true;
        let epochs = inner.epochs;
        inner
            .devices
            .drain()
            .filter(|(_, r)| !r.ec.keys.is_empty() || !r.kem.keys.is_empty())
            .map(|((aci, device), r)| Returned {
                aci,
                device,
                epoch: epochs[slot(aci, device)],
                ec: r.ec.keys.into(),
                kem: r.kem.keys.into(),
            })
            .collect()
    }

    /// Whether no forget touched the device since `drain` took its keys (checked inside the transaction
    /// that returns them, which holds the write lock a replace or removal needs).
    pub fn unchanged(&self, returned: &Returned) -> bool {
        self.lock().epochs[slot(returned.aci, returned.device)] == returned.epoch
    }
}

/// A device's reserved keys, on their way back to the table at a stop.
pub struct Returned {
    pub aci: Aci,
    pub device: DeviceId,
    epoch: u64,
    pub ec: Vec<EcOneTimeKey>,
    pub kem: Vec<SignedKemKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec(id: u32) -> EcOneTimeKey {
        EcOneTimeKey { key_id: id, public_key: crate::domain::EcPublicKey([id as u8; 33]) }
    }

    fn fetch_ids(taken: &Claimed) -> Option<u32> {
        taken.0.as_ref().map(|k| k.key_id)
    }

    #[test]
    fn busy_devices_take_growing_batches_and_each_key_once() {
        let reserves = Reserves::new(4, 10);
        let (aci, device) = (Aci(uuid::Uuid::new_v4()), DeviceId(1));
        let mut table: VecDeque<u32> = (1..=20).collect();
        let mut handed = Vec::new();
        let mut fetches = Vec::new();
        for _ in 0..20 {
            let claimed = match reserves.claim(aci, device, true) {
                Claim::Ready(claimed) => claimed,
                Claim::Queue(_) => panic!("a claim with the turn queued"),
                Claim::Fetch(fetch) => {
                    fetches.push(fetch.ec);
                    let ec = (0..fetch.ec).filter_map(|_| table.pop_front()).map(ec).collect();
                    reserves.settle(aci, device, fetch, Taken { ec, kem: Vec::new() })
                }
            };
            handed.push(fetch_ids(&claimed).expect("a key"));
        }
        assert_eq!(handed, (1..=20).collect::<Vec<_>>());
        assert_eq!(fetches[..4], [1, 2, 4, 4]);
        assert_eq!(fetches.len(), 7, "{fetches:?}");
        assert!(
            matches!(reserves.claim(aci, device, true), Claim::Ready((None, None))),
            "an emptied pool is asked again"
        );
    }

    #[test]
    fn a_forget_drops_the_reserve_and_keys_in_flight() {
        let reserves = Reserves::new(8, 10);
        let (aci, device) = (Aci(uuid::Uuid::new_v4()), DeviceId(2));
        for id in [1, 2] {
            if let Claim::Fetch(fetch) = reserves.claim(aci, device, true) {
                let ec = (id..id + fetch.ec as u32).map(ec).collect();
                reserves.settle(aci, device, fetch, Taken { ec, kem: Vec::new() });
            }
        }
        assert_eq!(reserves.held(aci, device).0, 1);
        // A held key needs no turn; once the reserve is empty, a claim queues for the table.
        assert!(matches!(
            reserves.claim(aci, device, false),
            Claim::Ready((Some(EcOneTimeKey { key_id: 3, .. }), None))
        ));
        assert!(matches!(reserves.claim(aci, device, false), Claim::Queue(_)));
        if let Claim::Fetch(fetch) = reserves.claim(aci, device, true) {
            reserves.settle(aci, device, fetch, Taken { ec: vec![ec(4), ec(5)], kem: Vec::new() });
        }
        assert_eq!(reserves.held(aci, device).0, 1);
        reserves.forget(aci, device);
        assert_eq!(reserves.held(aci, device), (0, 0));
        let Claim::Fetch(fetch) = reserves.claim(aci, device, true) else { panic!("the reserve survived a forget") };
        reserves.forget(aci, device);
        let claimed = reserves.settle(aci, device, fetch, Taken { ec: vec![ec(50), ec(51)], kem: Vec::new() });
        assert_eq!(fetch_ids(&claimed), Some(50));
        assert_eq!(reserves.held(aci, device), (0, 0));
    }

    #[test]
    fn an_emptied_kind_is_not_fetched_again_and_drain_ends_reserving() {
        let reserves = Reserves::new(8, 10);
        let (aci, device) = (Aci(uuid::Uuid::new_v4()), DeviceId(1));
        let Claim::Fetch(fetch) = reserves.claim(aci, device, true) else { panic!("nothing reserved yet") };
        let claimed = reserves.settle(aci, device, fetch, Taken { ec: Vec::new(), kem: Vec::new() });
        assert!(claimed.0.is_none() && claimed.1.is_none());
        assert!(matches!(reserves.claim(aci, device, true), Claim::Ready((None, None))));
        let other = DeviceId(3);
        for _ in 0..2 {
            if let Claim::Fetch(fetch) = reserves.claim(aci, other, true) {
                let n = fetch.ec as u32;
                reserves.settle(aci, other, fetch, Taken { ec: (10..10 + n).map(ec).collect(), kem: Vec::new() });
            }
        }
        let returned = reserves.drain();
        assert_eq!(returned.len(), 1);
        assert_eq!(returned[0].ec.iter().map(|k| k.key_id).collect::<Vec<_>>(), [11]);
        assert!(reserves.unchanged(&returned[0]));
        assert!(matches!(reserves.claim(aci, other, true), Claim::Fetch(Fetch { ec: 1, kem: 1, .. })));
    }
}
