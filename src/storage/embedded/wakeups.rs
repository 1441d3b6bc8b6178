//! The wakeups' short-lived notes in this process's memory (embedded deployment): which devices were woken
//! lately, and the wakeups waiting to be sent again.
//!
//! One process is the whole deployment, so memory is the truth; a restart forgets the notes, which costs at
//! most one extra wakeup or one lost retry. Invariants: the lock is a `std::sync::Mutex` never held across
//! an `.await`; memory stays bounded (expired notes are dropped as new ones come, and the retry list has a
//! cap, beyond which the oldest-due retries are given up).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{Aci, DeviceId};
use crate::storage::{StoreResult, WakeupRetry, WakeupState};

/// Above this many notes, expired ones are dropped.
const MAX_MARKS: usize = 100_000;

/// Retries by (due, sequence), so they come out in due order; and the last sequence number given.
type Retries = (BTreeMap<(i64, u64), WakeupRetry>, u64);

pub struct MemoryWakeups {
    /// Device → (urgent, until).
    marks: Mutex<HashMap<(Aci, DeviceId), (bool, Instant)>>,
    retries: Mutex<Retries>,
    /// Retries kept at most (`SEALPOST_PUSH_RETRY_BACKLOG`); beyond, new ones are dropped: the push service
    /// is failing for everyone, and the devices will connect on their own eventually.
    max_retries: usize,
}

impl MemoryWakeups {
    pub fn new(max_retries: usize) -> Self {
        MemoryWakeups { marks: Mutex::default(), retries: Mutex::default(), max_retries }
    }
}

#[async_trait]
impl WakeupState for MemoryWakeups {
    async fn mark(&self, aci: Aci, device: DeviceId, urgent: bool, quiet: Duration) -> StoreResult<bool> {
        let now = Instant::now();
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks.len() >= MAX_MARKS {
            marks.retain(|_, (_, until)| *until > now);
        }
        let covered =
            marks.get(&(aci, device)).is_some_and(|(was_urgent, until)| *until > now && *was_urgent >= urgent);
        if !covered {
            marks.insert((aci, device), (urgent, now + quiet));
        }
        Ok(!covered)
    }

    async fn clear(&self, aci: Aci, device: DeviceId) -> StoreResult<()> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).remove(&(aci, device));
        Ok(())
    }

    async fn schedule_retry(&self, retry: &WakeupRetry) -> StoreResult<()> {
        let mut guard = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        let (retries, sequence) = &mut *guard;
        if retries.len() < self.max_retries {
            *sequence += 1;
            retries.insert((retry.due_at, *sequence), *retry);
        }
        Ok(())
    }

    async fn take_due(&self, now: i64, limit: usize) -> StoreResult<Vec<WakeupRetry>> {
        let mut guard = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        let (retries, _) = &mut *guard;
        let due: Vec<(i64, u64)> = retries.range(..=(now, u64::MAX)).take(limit).map(|(key, _)| *key).collect();
        Ok(due.into_iter().filter_map(|key| retries.remove(&key)).collect())
    }
}
