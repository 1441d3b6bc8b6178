//! What the embedded deployment keeps in this process's memory: rate-limit buckets, the bus between the
//! store and the delivery hub, presence and leases.
//!
//! One process is the whole deployment, so memory is the truth here and nothing survives a restart, which
//! is harmless for all four: buckets refill, sockets reconnect, leases are taken again. Invariants: every
//! lock is a `std::sync::Mutex` held for a few operations and never across an `.await`; memory stays
//! bounded (idle buckets are dropped). The scale-out deployment must never use these: across instances
//! they would be wrong (each instance would see only itself).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::RateLimit;
use crate::domain::{Aci, DeviceId};
use crate::storage::{
    Bus, BusEvent, BusMessage, Lease, Presence, QueuedEnvelope, RateBucket, RateLimitStore, StoreResult,
};

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
    async fn take(
        &self,
        bucket: &str,
        key: &[u8; 16],
        limit: &RateLimit,
        cost: u32,
    ) -> StoreResult<Result<(), Duration>> {
        let cost = f64::from(cost);
        let now = Instant::now();
        let capacity = f64::from(limit.burst);
        let rate = limit.refill_per_second();
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity);
        }
        let entry = buckets.entry((bucket.to_owned(), *key)).or_insert((capacity, now));
        let tokens = (entry.0 + now.duration_since(entry.1).as_secs_f64() * rate).min(capacity);
        if tokens >= cost {
            *entry = (tokens - cost, now);
            Ok(Ok(()))
        } else {
            *entry = (tokens, now);
            Ok(Err(Duration::from_secs_f64((cost - tokens) / rate)))
        }
    }

    async fn peek(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> StoreResult<Result<(), Duration>> {
        let now = Instant::now();
        let capacity = f64::from(limit.burst);
        let rate = limit.refill_per_second();
        let buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tokens = buckets
            .get(&(bucket.to_owned(), *key))
            .map_or(capacity, |(tokens, at)| (tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity));
        Ok(if tokens >= 1.0 { Ok(()) } else { Err(Duration::from_secs_f64((1.0 - tokens) / rate)) })
    }

    async fn take_two(
        &self,
        first: &RateBucket,
        second: &RateBucket,
    ) -> StoreResult<Result<(), (&'static str, Duration)>> {
        for bucket in [first, second] {
            if let Err(wait) = self.take(bucket.name, &bucket.key, &bucket.limit, 1).await? {
                return Ok(Err((bucket.name, wait)));
            }
        }
        Ok(Ok(()))
    }
}

/// In-process bus: events go straight to this process's delivery hub.
pub struct LocalBus {
    subscribed: Mutex<HashSet<(Aci, DeviceId)>>,
    provisioning: Mutex<HashSet<String>>,
    sender: mpsc::UnboundedSender<BusMessage>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<BusMessage>>>,
}

impl LocalBus {
    pub fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        LocalBus {
            subscribed: Mutex::default(),
            provisioning: Mutex::default(),
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Hands a committed envelope to this process's socket of the device, if any: a socket that has read
    /// its queue up to here sends it at once, without reading it back.
    pub fn queued(&self, aci: Aci, device: DeviceId, envelope: QueuedEnvelope) {
        if self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).contains(&(aci, device)) {
            let _ = self.sender.send(BusMessage::Device(aci, device, BusEvent::Queued(Box::new(envelope))));
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
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

    fn events(&self) -> Option<mpsc::UnboundedReceiver<BusMessage>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
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
        let now = Instant::now();
        let mut connected = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        // A late renewal from a displaced socket must not hide the newer socket that replaced it.
        let newer_holds = connected.get(&(aci, device)).is_some_and(|(id, until)| *id > connection && *until > now);
        if !newer_holds {
            connected.insert((aci, device), (connection, now + ttl));
        }
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
    tokens: AtomicU64,
}

#[async_trait]
impl Lease for MemoryLease {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<u64>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if held.get(name).is_some_and(|(_, _, until)| *until > now) {
            return Ok(None);
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
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
