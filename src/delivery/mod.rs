//! Delivery: authenticated WebSockets that carry queued envelopes to a device and its acknowledgements back.
//!
//! Owns: the registry of this instance's open sockets ([`Hub`]), which also tells every instance which
//! devices are connected (presence), the per-socket delivery loop ([`websocket`]) and the wire framing
//! ([`proto`]).
//! Invariants: an envelope leaves its queue only when the device answers its request with a 2xx status;
//! a device has at most one socket across all instances (a newer one closes the older with 4409); a removed
//! device's socket is closed at once (4401).
//! Never: parses or logs envelope content, or logs which account or device is connected.

pub mod proto;
pub mod provisioning;
pub mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::domain::{Aci, DeviceId};
use crate::shutdown::Tasks;
use crate::storage::{Bus, BusEvent, BusMessage, Presence, Storage, StoreResult, WakeupState};

/// How long a connected device stays marked present without renewal; sockets renew it every
/// [`PRESENCE_RENEW`], so a crashed instance's devices count as offline again within this.
pub const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
pub const PRESENCE_RENEW: std::time::Duration = std::time::Duration::from_secs(20);

/// Events waiting for one socket; beyond this the socket is too slow and further wakes are dropped (the
/// socket re-reads its queue anyway once it catches up).
const SOCKET_EVENT_BUFFER: usize = 64;

type Sockets = HashMap<(Aci, DeviceId), Vec<(u64, mpsc::Sender<BusEvent>)>>;

/// This instance's open sockets, fed by the bus.
pub struct Hub {
    sockets: Mutex<Sockets>,
    /// Provisioning sockets by address: each waits for one message.
    provisioning: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Vec<u8>>>>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    /// Cleared when a device connects, so the next envelope after it leaves wakes it again.
    wakeups: Arc<dyn WakeupState>,
    /// Serialises subscribe/unsubscribe so a quick reconnect can never end unsubscribed.
    subscriptions: tokio::sync::Mutex<()>,
    last_connection_id: std::sync::atomic::AtomicU64,
}

/// A socket's place in the hub.
pub struct Registration {
    pub connection_id: u64,
    pub events: mpsc::Receiver<BusEvent>,
}

impl Hub {
    /// Creates the hub and starts dispatching the bus's events to local sockets (a task on `tasks`).
    pub fn start(storage: &Storage, directory: Arc<Directory>, tasks: &Tasks) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            sockets: Mutex::default(),
            provisioning: Mutex::default(),
            bus: storage.bus.clone(),
            presence: storage.presence.clone(),
            wakeups: storage.wakeups.clone(),
            subscriptions: Default::default(),
            last_connection_id: Default::default(),
        });
        if let Some(mut events) = storage.bus.events() {
            let weak = Arc::downgrade(&hub);
            tasks.spawn("delivery hub", |mut shutdown| async move {
                loop {
                    let message = tokio::select! {
                        message = events.recv() => message,
                        _ = shutdown.recv() => None,
                    };
                    let (Some(message), Some(hub)) = (message, weak.upgrade()) else { break };
                    match message {
                        BusMessage::Device(aci, device, event) => hub.dispatch(aci, device, event),
                        BusMessage::Provisioning(address, body) => hub.deliver_provisioning(&address, body),
                        BusMessage::Invalidate(aci) => directory.forget(aci),
                        BusMessage::WakeAll => hub.wake_all(),
                    }
                }
            });
        }
        hub
    }

    /// Marks the device present (any instance can see it) for another [`PRESENCE_TTL`].
    pub async fn renew_presence(&self, aci: Aci, device: DeviceId, connection_id: u64) -> StoreResult<()> {
        self.presence.connected(aci, device, connection_id, PRESENCE_TTL).await
    }

    /// Ids grow with time (milliseconds, then 16 random bits) and strictly within this instance, so a
    /// displacement notice that arrives late can tell which socket is newer and never closes the socket
    /// that replaced its sender.
    fn next_connection_id(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let candidate = ((crate::domain::now_millis() as u64) << 16) | u64::from(rand::random::<u16>());
        let mut previous = self.last_connection_id.load(Ordering::Relaxed);
        loop {
            let id = candidate.max(previous + 1);
            match self.last_connection_id.compare_exchange_weak(previous, id, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return id,
                Err(actual) => previous = actual,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a socket for the device, subscribes this instance to it and tells every other socket of
    /// the device (on any instance) to close.
    pub async fn register(&self, aci: Aci, device: DeviceId) -> StoreResult<Registration> {
        let connection_id = self.next_connection_id();
        let (sender, events) = mpsc::channel(SOCKET_EVENT_BUFFER);
        {
            let _guard = self.subscriptions.lock().await;
            let first = {
                let mut sockets = self.lock();
                let entry = sockets.entry((aci, device)).or_default();
                entry.push((connection_id, sender));
                entry.len() == 1
            };
            if first && let Err(err) = self.bus.subscribe(aci, device).await {
                self.forget(aci, device, connection_id);
                // Also drops the channel from those the bus resubscribes after a reconnect.
                let _ = self.bus.unsubscribe(aci, device).await;
                return Err(err);
            }
        }
        metrics::gauge!("sealpost_websockets_open").increment(1.0);
        let announced = async {
            self.presence.connected(aci, device, connection_id, PRESENCE_TTL).await?;
            self.bus.publish(aci, device, BusEvent::Displace(connection_id)).await
        };
        if let Err(err) = announced.await {
            self.unregister(aci, device, connection_id).await;
            return Err(err);
        }
        if let Err(err) = self.wakeups.clear(aci, device).await {
            tracing::debug!(error = %err, "wakeup note not cleared; it runs out after the quiet period");
        }
        Ok(Registration { connection_id, events })
    }

    /// Removes one socket from the local map; true when it was the device's last here.
    fn forget(&self, aci: Aci, device: DeviceId, connection_id: u64) -> bool {
        let mut sockets = self.lock();
        match sockets.get_mut(&(aci, device)) {
            Some(entry) => {
                entry.retain(|(id, _)| *id != connection_id);
                let empty = entry.is_empty();
                if empty {
                    sockets.remove(&(aci, device));
                }
                empty
            }
            None => false,
        }
    }

    pub async fn unregister(&self, aci: Aci, device: DeviceId, connection_id: u64) {
        let _guard = self.subscriptions.lock().await;
        let last = self.forget(aci, device, connection_id);
        if last && let Err(err) = self.bus.unsubscribe(aci, device).await {
            tracing::debug!(error = %err, "bus unsubscribe failed");
        }
        // A newer socket of the device (here or elsewhere) keeps it marked: only this connection's mark goes.
        if let Err(err) = self.presence.disconnected(aci, device, connection_id).await {
            tracing::debug!(error = %err, "presence could not be cleared; it expires by itself");
        }
        metrics::gauge!("sealpost_websockets_open").decrement(1.0);
    }

    fn dispatch(&self, aci: Aci, device: DeviceId, event: BusEvent) {
        let sockets = self.lock();
        let Some(entry) = sockets.get(&(aci, device)) else { return };
        for (id, sender) in entry {
            let event = match &event {
                BusEvent::Displace(newer) if newer <= id => continue,
                other => other.clone(),
            };
            // A full buffer means the socket is behind: dropping a wake is safe because the socket re-reads
            // its queue, and an `online` envelope is best effort by definition. A queued envelope left out
            // must still be read from the queue, so a wake goes after it, and a close order must arrive:
            // those wait for room.
            let must_arrive = match sender.try_send(event) {
                Err(mpsc::error::TrySendError::Full(BusEvent::Queued(_))) => Some(BusEvent::Wake),
                Err(mpsc::error::TrySendError::Full(event @ (BusEvent::Displace(_) | BusEvent::Revoke))) => Some(event),
                _ => None,
            };
            if let Some(event) = must_arrive {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _ = sender.send(event).await;
                });
            }
        }
    }

    /// Registers a provisioning socket under a fresh random address; the receiver yields the one message
    /// relayed to it.
    pub async fn register_provisioning(&self) -> StoreResult<(String, tokio::sync::oneshot::Receiver<Vec<u8>>)> {
        use base64::Engine;
        let address = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::crypto::random_bytes::<16>());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.provisioning.lock().unwrap_or_else(|p| p.into_inner()).insert(address.clone(), sender);
        if let Err(err) = self.bus.subscribe_provisioning(&address).await {
            self.unregister_provisioning(&address).await;
            return Err(err);
        }
        Ok((address, receiver))
    }

    pub async fn unregister_provisioning(&self, address: &str) {
        self.provisioning.lock().unwrap_or_else(|p| p.into_inner()).remove(address);
        if let Err(err) = self.bus.unsubscribe_provisioning(address).await {
            tracing::warn!(error = %err, "bus unsubscribe failed");
        }
    }

    fn deliver_provisioning(&self, address: &str, body: Vec<u8>) {
        if let Some(sender) = self.provisioning.lock().unwrap_or_else(|p| p.into_inner()).remove(address) {
            let _ = sender.send(body);
        }
    }

    fn wake_all(&self) {
        for entry in self.lock().values() {
            for (_, sender) in entry {
                let _ = sender.try_send(BusEvent::Wake);
            }
        }
    }

    /// Sockets open on this instance.
    pub fn open_sockets(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}
