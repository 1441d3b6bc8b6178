//! The wakeup dispatcher: decides, off the send path, which devices a send should wake, and wakes them.
//!
//! The send path hands it the devices it queued for ([`Wakeups::envelopes_queued`]) without waiting: a
//! bounded channel, and a full channel drops the wakeup (counted) rather than slow a send. A background
//! task (on `shutdown::Tasks`) then, per device: skips it when it has a socket on any instance
//! (presence); notes the wakeup for the quiet period and skips it when one went lately (so a burst of
//! envelopes makes one wakeup, and an urgent envelope still wakes after a normal wakeup); looks the
//! subscription up; and sends. The push service's answer decides what follows: 404/410 deletes the
//! subscription, 400/413 is counted and logged without identifiers, 429/5xx/no answer schedules a retry
//! with backoff, which the push-retry job sends ([`Wakeups::retry_due`]), at most
//! `SEALPOST_PUSH_MAX_ATTEMPTS` sends in all and never after the envelopes' TTL.
//!
//! Never: delays or fails a send; logs or labels a metric with an account, device or endpoint.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::domain::{Aci, DeviceId, now_millis};
use crate::push::sender::{Delivery, EndpointError, PushSender};
use crate::shutdown::Tasks;
use crate::storage::{Presence, PushSubscriptions, Storage, StoreResult, WakeupRetry, WakeupState};

/// The devices of one send.
struct Queued {
    aci: Aci,
    devices: Vec<DeviceId>,
    urgent: bool,
    expires_at: i64,
}

/// The handle the send path and the jobs use.
pub struct Wakeups {
    queue: mpsc::Sender<Queued>,
    dispatch: Arc<Dispatch>,
}

/// What sending a wakeup needs.
struct Dispatch {
    presence: Arc<dyn Presence>,
    subscriptions: Arc<dyn PushSubscriptions>,
    state: Arc<dyn WakeupState>,
    sender: PushSender,
    quiet: Duration,
    max_attempts: u32,
    retry_base: Duration,
    retry_max: Duration,
    concurrency: usize,
    /// Due retries one run of the push-retry job takes.
    retry_batch: usize,
}

fn count(outcome: &'static str) {
    metrics::counter!("sealpost_push_wakeups_total", "outcome" => outcome).increment(1);
}

fn failed(reason: &'static str) {
    metrics::counter!("sealpost_push_failures_total", "reason" => reason).increment(1);
}

impl Wakeups {
    /// Starts the dispatcher task on `tasks`.
    pub fn start(storage: &Storage, sender: PushSender, config: &Config, tasks: &Tasks) -> Arc<Wakeups> {
        let (queue, mut incoming) = mpsc::channel::<Queued>(config.push_backlog.max(1));
        let dispatch = Arc::new(Dispatch {
            presence: storage.presence.clone(),
            subscriptions: storage.push.clone(),
            state: storage.wakeups.clone(),
            sender,
            quiet: Duration::from_secs(config.push_quiet_seconds),
            max_attempts: config.push_max_attempts.max(1),
            retry_base: Duration::from_secs(config.push_retry_base_seconds.max(1)),
            retry_max: Duration::from_secs(config.push_retry_max_seconds.max(1)),
            concurrency: config.push_concurrency.max(1),
            retry_batch: config.push_retry_batch.max(1),
        });
        let worker = dispatch.clone();
        tasks.spawn("push wakeups", |mut shutdown| async move {
            let mut running = JoinSet::new();
            'receive: loop {
                let queued = tokio::select! {
                    queued = incoming.recv() => match queued { Some(queued) => queued, None => break },
                    Some(_) = running.join_next(), if !running.is_empty() => continue,
                    _ = shutdown.recv() => break,
                };
                for device in queued.devices {
                    while running.len() >= worker.concurrency {
                        tokio::select! {
                            _ = running.join_next() => {}
                            _ = shutdown.recv() => break 'receive,
                        }
                    }
                    let worker = worker.clone();
                    running
                        .spawn(async move { worker.wake(queued.aci, device, queued.urgent, queued.expires_at).await });
                }
            }
            // Wakeups are best effort: the ones still on their way are dropped with the server.
            running.shutdown().await;
        });
        Arc::new(Wakeups { queue, dispatch })
    }

    /// Envelopes were queued for `devices` of `aci`: wake those that have no socket. Never waits.
    pub fn envelopes_queued(&self, aci: Aci, devices: Vec<DeviceId>, urgent: bool, ttl_seconds: u64) {
        let expires_at = now_millis() + (ttl_seconds as i64).saturating_mul(1000);
        if self.queue.try_send(Queued { aci, devices, urgent, expires_at }).is_err() {
            count("dropped");
        }
    }

    /// The VAPID public key, for clients' `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        self.dispatch.sender.public_key()
    }

    /// Checks an endpoint a device wants to be woken at.
    pub async fn check_endpoint(&self, endpoint: &str) -> Result<(), EndpointError> {
        self.dispatch.sender.check_endpoint(endpoint).await.map(|_| ())
    }

    /// Sends the retries that are due (the push-retry job); returns how many were taken.
    pub async fn retry_due(&self) -> StoreResult<usize> {
        let due = self.dispatch.state.take_due(now_millis(), self.dispatch.retry_batch).await?;
        let taken = due.len();
        let dispatch = &self.dispatch;
        futures_util::stream::iter(due)
            .for_each_concurrent(dispatch.concurrency, |retry| async move { dispatch.retry(retry).await })
            .await;
        Ok(taken)
    }
}

impl Dispatch {
    async fn wake(&self, aci: Aci, device: DeviceId, urgent: bool, expires_at: i64) {
        match self.decide(aci, device, urgent).await {
            Ok(Some(endpoint)) => self.send(aci, device, &endpoint, urgent, expires_at, 1).await,
            Ok(None) => {}
            Err(err) => {
                failed("store_unavailable");
                tracing::debug!(error = %err, "wakeup skipped: a store is unavailable");
            }
        }
    }

    /// The endpoint to wake the device at, or `None` when it is connected, was woken lately or has none.
    async fn decide(&self, aci: Aci, device: DeviceId, urgent: bool) -> StoreResult<Option<String>> {
        if self.presence.is_connected(aci, device).await? {
            metrics::counter!("sealpost_push_skipped_total", "reason" => "connected").increment(1);
            return Ok(None);
        }
        // Noted before the subscription is looked up, so a burst costs the database one read, not one per
        // envelope.
        if !self.state.mark(aci, device, urgent, self.quiet).await? {
            count("coalesced");
            return Ok(None);
        }
        let endpoint = self.subscriptions.subscription(aci, device).await?;
        if endpoint.is_none() {
            metrics::counter!("sealpost_push_skipped_total", "reason" => "no_subscription").increment(1);
        }
        Ok(endpoint)
    }

    async fn retry(&self, retry: WakeupRetry) {
        let decided = async {
            if self.presence.is_connected(retry.aci, retry.device).await? {
                return Ok(None);
            }
            self.subscriptions.subscription(retry.aci, retry.device).await
        };
        match decided.await {
            Ok(Some(endpoint)) => {
                self.send(retry.aci, retry.device, &endpoint, retry.urgent, retry.expires_at, retry.attempt + 1).await
            }
            Ok(None) => metrics::counter!("sealpost_push_skipped_total", "reason" => "retry_unneeded").increment(1),
            Err(err) => {
                failed("store_unavailable");
                tracing::debug!(error = %err, "wakeup retry skipped: a store is unavailable");
            }
        }
    }

    /// Sends one wakeup (the `attempt`-th of it) and acts on the push service's answer.
    async fn send(&self, aci: Aci, device: DeviceId, endpoint: &str, urgent: bool, expires_at: i64, attempt: u32) {
        let now = now_millis();
        if expires_at <= now {
            failed("expired");
            return;
        }
        let ttl_seconds = ((expires_at - now) as u64).div_ceil(1000);
        match self.sender.send(endpoint, urgent, ttl_seconds).await {
            Delivery::Sent => count("sent"),
            Delivery::Gone => {
                failed("gone");
                tracing::info!("a push service says a subscription is gone; it is removed");
                if let Err(err) = self.subscriptions.delete_subscription(aci, device, Some(endpoint)).await {
                    tracing::debug!(error = %err, "removing a gone subscription failed; the next wakeup tries again");
                }
            }
            Delivery::Rejected(status) => {
                failed("rejected");
                tracing::warn!(status, "a push service refused a wakeup; not retried");
            }
            Delivery::Retry(_) if attempt >= self.max_attempts => failed("gave_up"),
            Delivery::Retry(wait) => {
                failed("unavailable");
                let backoff = self.retry_base.saturating_mul(1 << (attempt - 1).min(16));
                let delay = backoff.max(wait.unwrap_or_default()).min(self.retry_max);
                let retry = WakeupRetry {
                    aci,
                    device,
                    urgent,
                    expires_at,
                    attempt,
                    due_at: now_millis() + delay.as_millis() as i64,
                };
                match self.state.schedule_retry(&retry).await {
                    Ok(()) => count("retry_scheduled"),
                    Err(err) => tracing::debug!(error = %err, "a wakeup retry could not be scheduled"),
                }
            }
        }
    }
}
