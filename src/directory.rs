//! A per-instance cache of what every request asks about accounts: whether a device may act, the
//! recipient's access key and identity key, which devices (with registration ids) can receive, and their
//! signed and last-resort keys.
//!
//! Why: these checks run on every authenticated request and every send; reading them from the durable
//! store each time would cost several database round trips per message.
//!
//! Invariant: every write that changes an entry (device added or removed, keys that make a device ready,
//! access key, approval, account deletion) calls [`Directory::invalidate`], which drops the entry here at
//! once and tells every other instance over the bus. Entries also expire after a short TTL, which bounds
//! how long a lost invalidation (a bus outage) can keep stale data alive.

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
    /// Signed and last-resort keys of those devices, for bundles.
    pub keys: Vec<DeviceKeys>,
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

/// Above this many entries, expired ones are dropped; a cache never grows without bound.
const MAX_ENTRIES: usize = 200_000;

pub struct Directory {
    storage: Storage,
    entries: Mutex<HashMap<Aci, (Instant, Arc<Entry>)>>,
    ttl: Duration,
}

impl Directory {
    pub fn new(storage: Storage, ttl: Duration) -> Self {
        Directory { storage, entries: Mutex::default(), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Aci, (Instant, Arc<Entry>)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn get(&self, aci: Aci) -> StoreResult<Arc<Entry>> {
        let now = Instant::now();
        if let Some((loaded, entry)) = self.lock().get(&aci)
            && now.duration_since(*loaded) < self.ttl
        {
            return Ok(entry.clone());
        }
        let account = self.storage.accounts.account(aci).await?;
        let (devices, keys) = if account.is_some() {
            let devices =
                self.storage.accounts.devices(aci).await?.into_iter().map(|d| (d.id, d.incarnation)).collect();
            (devices, self.storage.keys.device_keys(aci, None).await?)
        } else {
            (Vec::new(), Vec::new())
        };
        let ready = keys.iter().map(|k| (k.device, k.registration_id)).collect();
        let entry = Arc::new(Entry { account, devices, ready, keys });
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (loaded, _)| now.duration_since(*loaded) < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(aci, (now, entry.clone()));
        Ok(entry)
    }

    /// Forgets the account here and on every other instance.
    pub async fn invalidate(&self, aci: Aci) -> StoreResult<()> {
        self.forget(aci);
        self.storage.bus.publish_invalidation(aci).await
    }

    /// Forgets the account on this instance only (an invalidation that arrived over the bus).
    pub fn forget(&self, aci: Aci) {
        self.lock().remove(&aci);
    }
}

/// Shared handle, as the app and the hub hold it.
pub type SharedDirectory = Arc<Directory>;
