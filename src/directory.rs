//! A per-instance cache of what every request asks about accounts: whether a device may act, the
//! recipient's access key and identity key, which devices (with registration ids) can receive; and, kept
//! apart because only bundle fetches need it, their signed and last-resort keys.
//!
//! Why: these checks run on every authenticated request and every send; reading them from the durable
//! store each time would cost several database round trips per message. The keys are a cache of their own
//! because a last-resort Kyber key alone is 1.6 kB: every connected account has an entry, and few of them
//! have their bundle fetched.
//!
//! Invariant: every write that changes an entry or its keys (device added or removed, keys that make a
//! device ready, access key, approval, account deletion) calls [`Directory::invalidate`], which drops both
//! here at once and tells every other instance over the bus. Entries also expire after a short TTL, which
//! bounds how long a lost invalidation (a bus outage) can keep stale data alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{Aci, DeviceId, Incarnation, RegistrationId};
use crate::storage::{Account, DeviceKeys, Storage, StoreResult};

/// What is known about one account (or its absence).
#[derive(Debug)]
pub struct Entry {
    pub account: Option<Account>,
    /// Every device of the account, with its incarnation.
    pub devices: Vec<(DeviceId, Incarnation)>,
    /// Devices that can receive messages, with their registration ids.
    pub ready: Vec<(DeviceId, RegistrationId)>,
}

impl Entry {
    /// Whether the device exists, in this incarnation, in an approved account.
    pub fn device_active(&self, device: DeviceId, incarnation: Incarnation) -> bool {
        self.account.as_ref().is_some_and(|a| a.approved) && self.devices.contains(&(device, incarnation))
    }

    /// The current incarnation of a device of the account.
    pub fn incarnation(&self, device: DeviceId) -> Option<Incarnation> {
        self.devices.iter().find(|(id, _)| *id == device).map(|(_, incarnation)| *incarnation)
    }
}

/// Above this many entries a cache drops its expired ones; it never grows without bound.
const MAX_ENTRIES: usize = 200_000;

/// One cache: values by account, each with when it was loaded.
struct Cache<V>(Mutex<HashMap<Aci, (Instant, Arc<V>)>>);

impl<V> Cache<V> {
    fn new() -> Self {
        Cache(Mutex::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Aci, (Instant, Arc<V>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, aci: Aci, ttl: Duration) -> Option<Arc<V>> {
        let map = self.lock();
        let (loaded, value) = map.get(&aci)?;
        (loaded.elapsed() < ttl).then(|| value.clone())
    }

    fn insert(&self, aci: Aci, value: V, ttl: Duration) -> Arc<V> {
        let value = Arc::new(value);
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (loaded, _)| now.duration_since(*loaded) < ttl);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(aci, (now, value.clone()));
        value
    }

    fn remove(&self, aci: Aci) {
        self.lock().remove(&aci);
    }
}

pub struct Directory {
    storage: Storage,
    entries: Cache<Entry>,
    keys: Cache<Vec<DeviceKeys>>,
    ttl: Duration,
}

impl Directory {
    pub fn new(storage: Storage, ttl: Duration) -> Self {
        Directory { storage, entries: Cache::new(), keys: Cache::new(), ttl }
    }

    pub async fn get(&self, aci: Aci) -> StoreResult<Arc<Entry>> {
        if let Some(entry) = self.entries.fresh(aci, self.ttl) {
            return Ok(entry);
        }
        let account = self.storage.accounts.account(aci).await?;
        let (devices, ready) = if account.is_some() {
            let devices =
                self.storage.accounts.devices(aci).await?.into_iter().map(|d| (d.id, d.incarnation)).collect();
            let keys = self.storage.keys.device_keys(aci, None).await?;
            (devices, keys.iter().map(|k| (k.device, k.registration_id)).collect())
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(self.entries.insert(aci, Entry { account, devices, ready }, self.ttl))
    }

    /// The signed and last-resort keys of every device of `aci` that can receive, for bundles.
    pub async fn keys(&self, aci: Aci) -> StoreResult<Arc<Vec<DeviceKeys>>> {
        if let Some(keys) = self.keys.fresh(aci, self.ttl) {
            return Ok(keys);
        }
        let keys = self.storage.keys.device_keys(aci, None).await?;
        Ok(self.keys.insert(aci, keys, self.ttl))
    }

    /// Forgets the account here and on every other instance.
    pub async fn invalidate(&self, aci: Aci) -> StoreResult<()> {
        self.forget(aci);
        self.storage.bus.publish_invalidation(aci).await
    }

    /// Forgets the account on this instance only (an invalidation that arrived over the bus).
    pub fn forget(&self, aci: Aci) {
        self.entries.remove(aci);
        self.keys.remove(aci);
    }
}

/// Shared handle, as the app and the hub hold it.
pub type SharedDirectory = Arc<Directory>;
