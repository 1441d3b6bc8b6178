//! The inactive-device sweep (off unless `SEALPOST_INACTIVE_DEVICE_DAYS` > 0): a linked device not seen for
//! that many days is unlinked; an account all of whose devices are that idle is deleted whole, as if its
//! primary had deleted it. "Seen" is the day the device last got a token (`last_seen_day`, a day's start).

use std::sync::Weak;

use async_trait::async_trait;
use sealpost_jobs::{Grant, Job, JobError};

use crate::accounts::service::{remove_account, remove_device};
use crate::domain::{now_millis, round_to_day};
use crate::error::ApiError;
use crate::state::App;

const DAY_MS: i64 = 86_400_000;
/// Devices looked at per store call, and calls per run: a large backlog is worked off over several runs.
const BATCH: u32 = 200;
const BATCHES_PER_RUN: usize = 50;

pub struct Inactive {
    /// Weak: the runner lives in the app's tasks, which must not keep the app alive.
    pub app: Weak<App>,
    pub days: u32,
}

#[async_trait]
impl Job for Inactive {
    async fn run(&self, _grant: Grant) -> Result<(), JobError> {
        let Some(app) = self.app.upgrade() else { return Ok(()) };
        // Last seen on the day `days` days before today, or earlier.
        let seen_before = round_to_day(now_millis()) - (i64::from(self.days) - 1) * DAY_MS;
        for _ in 0..BATCHES_PER_RUN {
            let idle = app.storage.accounts.idle_devices(seen_before, BATCH).await?;
            if idle.is_empty() {
                break;
            }
            for found in idle {
                let removed = if found.device.is_primary() {
                    remove_account(&app, found.aci).await.map(|()| "account")
                } else {
                    remove_device(&app, found.aci, found.device).await.map(|()| "device")
                };
                match removed {
                    Ok(what) => metrics::counter!("sealpost_inactive_removed_total", "kind" => what).increment(1),
                    // Gone already (its account went in this run, or a person removed it meanwhile).
                    Err(ApiError::NotFound) => {}
                    Err(err) => return Err(JobError(err.to_string())),
                }
            }
        }
        Ok(())
    }
}
