//! The server's background jobs: what runs, when, and under which lease. The runner itself (cron ticks,
//! the lease per tick, metrics) is the `sealpost-jobs` crate in `jobs/`; this module implements its
//! `Lease` with the storage lease (Redis `SET NX PX` with fencing tokens in scale-out, in memory embedded)
//! and its `Job` for each job below, and starts it on the server's `shutdown::Tasks`.
//!
//! | job | schedule setting | does |
//! | --- | --- | --- |
//! | `reap_envelopes` | `SEALPOST_JOB_REAP_SCHEDULE` | deletes expired envelopes and empty queues |
//! | `reap_codes` | `SEALPOST_JOB_REAP_SCHEDULE` | deletes expired invite and link codes |
//! | `reap_contact_tokens` | `SEALPOST_JOB_REAP_SCHEDULE` | deletes expired and revoked contact tokens |
//! | `reap_attachments` | `SEALPOST_JOB_REAP_SCHEDULE` | deletes expired attachments and abandoned uploads, objects first |
//! | `push_retries` | `SEALPOST_JOB_PUSH_RETRY_SCHEDULE` | sends the wakeups that are due for a retry |
//! | `remove_inactive_devices` | `SEALPOST_JOB_INACTIVE_DEVICES_SCHEDULE` | only with `SEALPOST_INACTIVE_DEVICE_DAYS` > 0 |
//!
//! Invariants: every job is idempotent and safe to stop at any await (a run is abandoned when its lease is
//! lost or the server stops; the next tick, here or elsewhere, finishes the work). Expired data is already
//! invisible to every read; the reapers only give its space back.
//! Never: logs or labels a metric with an account, device or token.

mod devices;
mod reapers;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sealpost_jobs::{Grant, Job, JobError, LeaseError, Runner};

use crate::push::wakeups::Wakeups;
use crate::state::App;

/// The storage lease, as the runner wants it.
struct StoreLease(Arc<dyn crate::storage::Lease>);

#[async_trait]
impl sealpost_jobs::Lease for StoreLease {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, LeaseError> {
        self.0.acquire(name, holder, ttl).await.map_err(|e| LeaseError(e.to_string()))
    }
    async fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> Result<bool, LeaseError> {
        self.0.renew(name, holder, token, ttl).await.map_err(|e| LeaseError(e.to_string()))
    }
    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<(), LeaseError> {
        self.0.release(name, holder, token).await.map_err(|e| LeaseError(e.to_string()))
    }
}

/// Sends the wakeups that are due for a retry.
struct PushRetries(Arc<Wakeups>);

#[async_trait]
impl Job for PushRetries {
    async fn run(&self, _grant: Grant) -> Result<(), JobError> {
        // One batch per tick: a backlog is worked off over the next ticks, not in one long run.
        self.0.retry_due().await?;
        Ok(())
    }
}

/// Schedules every job and starts the runner on the app's tasks.
pub fn start(app: &Arc<App>) -> Result<(), String> {
    let config = &app.config;
    let lease = Arc::new(StoreLease(app.storage.lease.clone()));
    let mut runner = Runner::new(lease, &app.instance, Duration::from_secs(config.job_lease_seconds));
    let storage = &app.storage;
    runner.add("reap_envelopes", &config.job_reap_schedule, Arc::new(reapers::Envelopes(storage.clone())))?;
    runner.add("reap_codes", &config.job_reap_schedule, Arc::new(reapers::Codes(storage.clone())))?;
    runner.add("reap_contact_tokens", &config.job_reap_schedule, Arc::new(reapers::ContactTokens(storage.clone())))?;
    runner.add("reap_attachments", &config.job_reap_schedule, Arc::new(reapers::Attachments(storage.clone())))?;
    runner.add("push_retries", &config.job_push_retry_schedule, Arc::new(PushRetries(app.wakeups.clone())))?;
    if config.inactive_device_days > 0 {
        let job = devices::Inactive { app: Arc::downgrade(app), days: config.inactive_device_days };
        runner.add("remove_inactive_devices", &config.job_inactive_devices_schedule, Arc::new(job))?;
    }
    // The jobs stop when the server begins to stop (the app's signal, before the stores' own tasks end),
    // so their leases are released while the lease store still answers and another instance can take
    // them at once; the tasks' signal covers an app that is dropped without serving.
    let mut stopping = app.shutdown.clone();
    app.tasks.spawn("jobs", |mut shutdown| async move {
        let stop = async move {
            tokio::select! {
                _ = shutdown.recv() => {}
                _ = async { let _ = stopping.wait_for(|stop| *stop).await.map(|_| ()); } => {}
            }
        };
        if let Err(err) = runner.run(stop).await {
            tracing::error!(error = %err, "the job runner could not start: no background job runs on this instance");
        }
    });
    Ok(())
}
