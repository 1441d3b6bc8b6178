//! Every call into a store, bounded in time and watched.
//!
//! A store that is down, restarting or frozen must cost a request a short, clear wait, never a hang: each
//! call gets `SEALPOST_STORE_TIMEOUT_MS`, and one that does not answer in time, or cannot reach its store,
//! fails with [`StoreError::Unavailable`] (503 `unavailable` with `Retry-After` at the API). [`StoreHealth`]
//! logs the first failure of an outage and the first success after it, once each, and keeps the
//! `sealpost_store_up{store}` gauge.
//!
//! A call that timed out may still take effect later (a frozen Redis runs what it had received once it
//! thaws): callers treat `Unavailable` as "unknown outcome", which is why a client retries a send that got
//! a 503 and why sends are safe to repeat (clients drop duplicates by their own message ids).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::config::RateLimit;
use crate::domain::{AccessKey, Aci, DeviceId, DeviceSlots};

/// Availability of one store, as its calls see it.
pub struct StoreHealth {
    name: &'static str,
    up: AtomicBool,
    /// Outages seen since start-up (an outage begins with the first failing call).
    outages: std::sync::atomic::AtomicU64,
    timeout: Duration,
}

impl StoreHealth {
    pub fn new(name: &'static str, timeout: Duration) -> Arc<Self> {
        metrics::gauge!("sealpost_store_up", "store" => name).set(1.0);
        Arc::new(StoreHealth { name, up: AtomicBool::new(true), outages: Default::default(), timeout })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// Runs one store call under the timeout and records what it says about the store.
    pub async fn run<T>(&self, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        self.run_within(self.timeout, call).await
    }

    /// As [`StoreHealth::run`], with a timeout of its own.
    pub async fn run_within<T>(&self, timeout: Duration, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable {
                store: self.name,
                reason: format!("no answer within {} ms", timeout.as_millis()),
            }),
        };
        match &result {
            Err(err) if err.is_unavailable() => self.mark_down(err),
            // Any other answer, even an error about the data, means the store is reachable.
            _ => self.mark_up(),
        }
        result
    }

    fn mark_down(&self, err: &StoreError) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(store = self.name, error = %err, "store unavailable: requests that need it get 503 until it answers again");
            metrics::gauge!("sealpost_store_up", "store" => self.name).set(0.0);
        }
        metrics::counter!("sealpost_store_unavailable_total", "store" => self.name).increment(1);
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(store = self.name, "store available again");
            metrics::gauge!("sealpost_store_up", "store" => self.name).set(1.0);
        }
    }
}

/// A store behind [`StoreHealth::run`].
pub struct Guarded<T: ?Sized> {
    inner: Arc<T>,
    health: Arc<StoreHealth>,
}

impl<T: ?Sized> Guarded<T> {
    pub fn new(inner: Arc<T>, health: Arc<StoreHealth>) -> Arc<Self> {
        Arc::new(Guarded { inner, health })
    }
}

/// How long the reapers' bulk deletes may take: they are not on any request's path, and a large backlog
/// can take longer than a request's store timeout.
const REAP_TIMEOUT: Duration = Duration::from_secs(120);

/// Implements a store trait for [`Guarded`] by running every listed method of the inner store under the
/// health check; `unguarded { … }` holds methods written out by hand.
macro_rules! guard_trait {
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )* } $( unguarded { $($extra:tt)* } )?) => {
        #[async_trait]
        impl $trait for Guarded<dyn $trait> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> StoreResult<$ret> {
                    self.health.run(self.inner.$name($($arg),*)).await
                }
            )*
            $( $($extra)* )?
        }
    };
}

guard_trait!(AccountStore {
    fn create_account(&self, account: &NewAccount, invite: Option<[u8; 32]>, now: i64) -> Result<(), CreateAccountError>;
    fn create_invite(&self, code_hash: [u8; 32], expires_at: i64) -> ();
    fn add_device(&self, aci: Aci, device: &NewDevice, slots: &DeviceSlots) -> Result<DeviceId, AddDeviceError>;
    fn approve(&self, aci: Aci) -> bool;
    fn account(&self, aci: Aci) -> Option<Account>;
    fn device_credentials(&self, aci: Aci, device: DeviceId) -> Option<DeviceCredentials>;
    fn touch_device(&self, aci: Aci, device: DeviceId, day: i64) -> ();
    fn devices(&self, aci: Aci) -> Vec<Device>;
    fn delete_device(&self, aci: Aci, device: DeviceId, now: i64) -> bool;
    fn delete_account(&self, aci: Aci) -> bool;
    fn set_access(&self, aci: Aci, key: Option<AccessKey>, unrestricted: bool) -> bool;
    fn create_link_code(&self, code_hash: [u8; 32], aci: Aci, expires_at: i64) -> ();
    fn consume_link_code(&self, code_hash: [u8; 32]) -> Option<(Aci, i64)>;
    fn ping(&self) -> ();
} unguarded {
    async fn reap_codes(&self, now: i64) -> StoreResult<u64> {
        self.health.run_within(REAP_TIMEOUT, self.inner.reap_codes(now)).await
    }
    async fn idle_devices(&self, seen_before: i64, limit: u32) -> StoreResult<Vec<IdleDevice>> {
        self.health.run_within(REAP_TIMEOUT, self.inner.idle_devices(seen_before, limit)).await
    }
});

guard_trait!(KeyStore {
    fn put_signed(&self, aci: Aci, device: DeviceId, signed: Option<&SignedEcKey>, last_resort: Option<&SignedKemKey>) -> ();
    fn device_keys(&self, aci: Aci, only: Option<DeviceId>) -> Vec<DeviceKeys>;
});

guard_trait!(PreKeyPool {
    fn replace(&self, aci: Aci, device: DeviceId, ec: Option<&[EcOneTimeKey]>, kem: Option<&[SignedKemKey]>) -> ();
    fn counts(&self, aci: Aci, device: DeviceId) -> (u32, u32);
    fn claim(&self, aci: Aci, device: DeviceId) -> (Option<EcOneTimeKey>, Option<SignedKemKey>);
    fn remove_device(&self, aci: Aci, device: DeviceId) -> ();
});

guard_trait!(MessageQueue {
    fn push(&self, aci: Aci, items: &[(Recipient, NewEnvelope)], max_len: u32, bucket: Option<&RateBucket>) -> PushOutcome;
    fn peek(&self, aci: Aci, device: DeviceId, after: u64, limit: usize, now: i64) -> Vec<QueuedEnvelope>;
    fn ack(&self, aci: Aci, device: DeviceId, guid: [u8; 16]) -> bool;
    fn ack_many(&self, aci: Aci, device: DeviceId, guids: &[[u8; 16]]) -> u64;
    fn remove_device(&self, aci: Aci, device: Recipient) -> ();
    fn remove_account(&self, aci: Aci) -> ();
} unguarded {
    async fn reap(&self, now: i64) -> StoreResult<u64> {
        self.health.run_within(REAP_TIMEOUT, self.inner.reap(now)).await
    }
});

guard_trait!(Bus {
    fn publish(&self, aci: Aci, device: DeviceId, event: BusEvent) -> bool;
    fn subscribe(&self, aci: Aci, device: DeviceId) -> ();
    fn unsubscribe(&self, aci: Aci, device: DeviceId) -> ();
    fn publish_provisioning(&self, address: &str, body: Vec<u8>) -> bool;
    fn subscribe_provisioning(&self, address: &str) -> ();
    fn unsubscribe_provisioning(&self, address: &str) -> ();
    fn publish_invalidation(&self, aci: Aci) -> ();
} unguarded {
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<BusMessage>> {
        self.inner.events()
    }
});

guard_trait!(RateLimitStore {
    fn take(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit, cost: u32) -> Result<(), Duration>;
    fn peek(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> Result<(), Duration>;
    fn take_two(&self, first: &RateBucket, second: &RateBucket) -> Result<(), (&'static str, Duration)>;
});

guard_trait!(Probe {
    fn check(&self) -> ();
} unguarded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
});

guard_trait!(Presence {
    fn connected(&self, aci: Aci, device: DeviceId, connection: u64, ttl: Duration) -> ();
    fn disconnected(&self, aci: Aci, device: DeviceId, connection: u64) -> ();
    fn is_connected(&self, aci: Aci, device: DeviceId) -> bool;
});

guard_trait!(Lease {
    fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Option<u64>;
    fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> bool;
    fn release(&self, name: &str, holder: &str, token: u64) -> ();
});

guard_trait!(AttachmentStore {
    fn create_attachment(&self, attachment: &NewAttachment) -> ();
    fn attachment(&self, id_hash: [u8; 32]) -> Option<Attachment>;
    fn add_part(&self, id_hash: [u8; 32], part: &AttachmentPart, now: i64) -> bool;
    fn delete_attachments(&self, id_hashes: &[[u8; 32]]) -> u64;
} unguarded {
    async fn expired_attachments(&self, now: i64, limit: usize) -> StoreResult<Vec<[u8; 32]>> {
        self.health.run_within(REAP_TIMEOUT, self.inner.expired_attachments(now, limit)).await
    }
});

guard_trait!(ContactTokens {
    fn create(&self, token: &NewContactToken, cap: &ContactCap) -> bool;
    fn list(&self, owner: Aci) -> Vec<ContactToken>;
    fn revoke(&self, owner: Aci, id: [u8; 16]) -> bool;
    fn find(&self, token_hash: [u8; 32]) -> Option<ContactToken>;
    fn count_use(&self, id: [u8; 16], requester: [u8; 16]) -> bool;
} unguarded {
    async fn reap(&self, now: i64) -> StoreResult<u64> {
        self.health.run_within(REAP_TIMEOUT, self.inner.reap(now)).await
    }
});

guard_trait!(PushSubscriptions {
    fn put_subscription(&self, aci: Aci, device: DeviceId, endpoint: &str, now: i64) -> bool;
    fn subscription(&self, aci: Aci, device: DeviceId) -> Option<String>;
    fn delete_subscription(&self, aci: Aci, device: DeviceId, only: Option<&str>) -> bool;
});

guard_trait!(WakeupState {
    fn mark(&self, aci: Aci, device: DeviceId, urgent: bool, quiet: Duration) -> bool;
    fn clear(&self, aci: Aci, device: DeviceId) -> ();
    fn schedule_retry(&self, retry: &WakeupRetry) -> ();
    fn take_due(&self, now: i64, limit: usize) -> Vec<WakeupRetry>;
});
