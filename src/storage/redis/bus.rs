//! Cross-instance fan-out over Redis pub/sub: one channel per device with an open socket somewhere, one
//! per open provisioning socket, and one on which every instance hears that an account changed.
//!
//! In a Redis Cluster, PUBLISH reaches every node but counts only the subscribers of the node that took
//! it, so "is anyone listening" cannot come from PUBLISH there: provisioning sockets also hold a presence
//! key, which `publish_provisioning` checks first.
//!
//! Invariants: the queues are the truth and the bus only wakes, so whenever wake-ups may have been lost (a
//! reconnect, a subscriber that fell behind) every local socket is told to re-read its queue; every
//! wanted channel is subscribed again after a reconnect. Its two loops (messages, resubscription) run
//! only as `shutdown::Tasks` and end on the stop signal, quitting the subscriber client. It never decides
//! anything about delivery: it carries [`BusMessage`]s to the hub.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, KeysInterface, Pool, PubsubInterface};
use fred::types::{Expiration, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use crate::domain::{Aci, DeviceId};
use crate::shutdown::{Shutdown, Tasks};
use crate::storage::redis::keys::Keys;
use crate::storage::redis::{builder, bytes_of};
use crate::storage::{Bus, BusEvent, BusMessage, StoreResult};

/// Pub/sub messages buffered between the Redis connection and the hub.
const SUBSCRIBER_BUFFER: usize = 65_536;

/// Every channel this instance wants, so all of them are subscribed again after a reconnect (the client
/// library only remembers subscriptions that succeeded).
type Wanted = Arc<Mutex<HashSet<String>>>;

pub struct RedisBus {
    publisher: Pool,
    subscriber: SubscriberClient,
    wanted: Wanted,
    keys: Keys,
    /// How long a provisioning socket's presence key lives (it is deleted when the socket closes).
    presence_ttl: Duration,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<BusMessage>>>,
}

impl RedisBus {
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        keys: Keys,
        publisher: Pool,
        presence_ttl: Duration,
        timeout: Duration,
        tasks: &Tasks,
    ) -> StoreResult<Self> {
        let mut builder = builder(url, ca_file, timeout)?;
        // fred hands pub/sub messages over a broadcast channel; its default of 32 loses messages under load.
        builder.with_performance_config(|performance| performance.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let subscriber = builder.build_subscriber_client()?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let wanted: Wanted = Arc::new(Mutex::new(HashSet::from([keys.invalidation_channel()])));
        // Both receivers exist before the first connection, which counts as a reconnection; the loops start
        // once it succeeded, so a failed attempt leaves nothing running.
        let (reconnects, messages) = (subscriber.reconnect_rx(), subscriber.message_rx());
        if let Err(err) = subscriber.init().await {
            let _ = subscriber.quit().await;
            return Err(err.into());
        }
        let (client, channels, waker) = (subscriber.clone(), wanted.clone(), sender.clone());
        tasks.spawn("redis bus resubscriber", move |shutdown| {
            resubscribe_on_reconnect(reconnects, client, channels, waker, shutdown)
        });
        let (client, names) = (subscriber.clone(), keys.clone());
        tasks.spawn("redis bus", move |shutdown| forward_messages(messages, client, names, sender, shutdown));
        Ok(RedisBus { publisher, subscriber, wanted, keys, presence_ttl, receiver: Mutex::new(Some(receiver)) })
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wants the channel (so it is subscribed again after any reconnect) and subscribes to it now.
    async fn subscribe_channel(&self, channel: String) -> StoreResult<()> {
        self.wanted().insert(channel.clone());
        self.subscriber.subscribe(channel).await?;
        Ok(())
    }

    async fn unsubscribe_channel(&self, channel: String) -> StoreResult<()> {
        self.wanted().remove(&channel);
        self.subscriber.unsubscribe(channel).await?;
        Ok(())
    }
}

/// Every (re)connection, the first included: subscribes to every wanted channel, then has every local
/// socket read its queue, since wake-ups published while the connection was down were lost.
async fn resubscribe_on_reconnect(
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    subscriber: SubscriberClient,
    wanted: Wanted,
    waker: mpsc::UnboundedSender<BusMessage>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            reconnected = reconnects.recv() => match reconnected {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            _ = shutdown.recv() => break,
        }
        let channels: Vec<String> = wanted.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        for channel in channels {
            if let Err(err) = subscriber.subscribe(channel).await {
                tracing::warn!(error = %err, "bus: subscribing again after a reconnect failed");
            }
        }
        if waker.send(BusMessage::WakeAll).is_err() {
            break;
        }
    }
}

/// Hands each pub/sub message to the hub as a [`BusMessage`], until the hub is gone or the server stops;
/// then quits the subscriber client, whose subscriptions nobody would read any more.
async fn forward_messages(
    mut messages: broadcast::Receiver<fred::types::Message>,
    subscriber: SubscriberClient,
    keys: Keys,
    sender: mpsc::UnboundedSender<BusMessage>,
    mut shutdown: Shutdown,
) {
    let invalidations = keys.invalidation_channel();
    loop {
        let received = tokio::select! {
            received = messages.recv() => received,
            _ = shutdown.recv() => break,
        };
        let forwarded = match received {
            Ok(message) => {
                let body = bytes_of(&message.value);
                let channel = &*message.channel;
                if channel == invalidations {
                    match body.and_then(|b| uuid::Uuid::from_slice(b).ok()) {
                        Some(aci) => sender.send(BusMessage::Invalidate(Aci(aci))),
                        None => continue,
                    }
                } else if let Some(address) = keys.parse_provisioning_channel(channel) {
                    let body = body.map(<[u8]>::to_vec).unwrap_or_default();
                    sender.send(BusMessage::Provisioning(address.to_owned(), body))
                } else {
                    let Some((aci, device)) = keys.parse_device_channel(channel) else { continue };
                    let Some(event) = body.and_then(BusEvent::decode) else { continue };
                    sender.send(BusMessage::Device(aci, device, event))
                }
            }
            Err(RecvError::Lagged(missed)) => {
                // Lost wakes would strand envelopes until the next one: wake everyone instead.
                tracing::warn!(missed, "bus subscriber lagged; waking every local socket");
                sender.send(BusMessage::WakeAll)
            }
            Err(RecvError::Closed) => break,
        };
        if forwarded.is_err() {
            break;
        }
    }
    if let Err(err) = subscriber.quit().await {
        tracing::debug!(error = %err, "bus: quitting the subscriber failed");
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, aci: Aci, device: DeviceId, event: BusEvent) -> StoreResult<bool> {
        let channel = self.keys.device_channel(aci, device);
        let receivers: i64 =
            self.publisher.next_connected().publish(channel, Value::Bytes(event.encode().into())).await?;
        Ok(receivers > 0)
    }

    async fn subscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.subscribe_channel(self.keys.device_channel(aci, device)).await
    }

    async fn unsubscribe(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.unsubscribe_channel(self.keys.device_channel(aci, device)).await
    }

    async fn publish_provisioning(&self, address: &str, body: Vec<u8>) -> StoreResult<bool> {
        let present: i64 = self.publisher.next_connected().exists(self.keys.provisioning_presence(address)).await?;
        if present == 0 {
            return Ok(false);
        }
        let channel = self.keys.provisioning_channel(address);
        let _: i64 = self.publisher.next_connected().publish(channel, Value::Bytes(body.into())).await?;
        Ok(true)
    }

    async fn subscribe_provisioning(&self, address: &str) -> StoreResult<()> {
        self.subscribe_channel(self.keys.provisioning_channel(address)).await?;
        let ttl = Expiration::PX(self.presence_ttl.as_millis() as i64);
        let presence = self.keys.provisioning_presence(address);
        let _: () = self.publisher.next_connected().set(presence, 1, Some(ttl), None, false).await?;
        Ok(())
    }

    async fn unsubscribe_provisioning(&self, address: &str) -> StoreResult<()> {
        let _: i64 = self.publisher.next_connected().del(self.keys.provisioning_presence(address)).await?;
        self.unsubscribe_channel(self.keys.provisioning_channel(address)).await
    }

    async fn publish_invalidation(&self, aci: Aci) -> StoreResult<()> {
        let channel = self.keys.invalidation_channel();
        let body = Value::Bytes(aci.0.as_bytes().to_vec().into());
        let _: i64 = self.publisher.next().publish(channel, body).await?;
        Ok(())
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<BusMessage>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
