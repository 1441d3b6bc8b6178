//! The runner of sealpost's background jobs: cron schedules (tokio-cron-scheduler), and a lease so that in
//! a cluster each tick of a job runs on one instance only.
//!
//! This crate knows nothing of sealpost's storage or capabilities: the server implements [`Lease`] with its
//! lease store and each job as a [`Job`], and hands them to a [`Runner`]. That keeps the dependency one way
//! (the server uses the runner, never the reverse).
//!
//! How a tick runs: every instance's scheduler fires at the same wall-clock instants (cron, UTC). On a tick
//! an instance renews the job's lease if it holds it, else tries to take it (`SET NX PX` with a fencing token
//! in Redis); only the holder runs the job, renewing the lease every third of its lifetime while the run
//! lasts. The holder keeps the lease between ticks (it renews on the next one), so ticks fired a few hundred
//! milliseconds apart on two instances never both run. A holder that crashes stops renewing: its lease
//! expires and the next tick of another instance takes it, so a job moves within one lease period plus one
//! tick. A holder that stops gracefully gives its leases up at once.
//!
//! Invariants: at most one run of a job at a time per instance (a tick that comes while the last run still
//! goes is skipped and counted); a run whose lease is lost (not renewed in time, or taken by another
//! instance after a pause) is abandoned at its next await, so two instances never keep running the same job
//! knowingly; every run is counted and timed. Jobs must be safe to stop at any await and to run again (the
//! next tick, or another instance, picks up where an abandoned run stopped).
//! Never: puts anything but the job's name into a metric label or a log line.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Why a lease call failed (the store is unreachable, say); the outcome of the call is unknown.
#[derive(Debug)]
pub struct LeaseError(pub String);

/// Named leases with fencing tokens, as the server's store provides them.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Takes the lease for `ttl` unless someone holds it; `Some(fencing token)` when granted.
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, LeaseError>;
    /// Extends a lease still held under this token; false when it expired (and may be another's now).
    async fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> Result<bool, LeaseError>;
    /// Gives the lease up if still held under this token.
    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<(), LeaseError>;
}

/// The grant a run works under: its fencing token grows with every grant of the job's lease, so work
/// stamped with it can be told from work of a later holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub fencing_token: u64,
}

/// A failed run, in words that name no user (they go to the log).
#[derive(Debug)]
pub struct JobError(pub String);

impl<E: std::fmt::Display> From<E> for JobError {
    fn from(err: E) -> Self {
        JobError(err.to_string())
    }
}

/// One background job.
#[async_trait]
pub trait Job: Send + Sync {
    /// Does one tick's work.
    async fn run(&self, grant: Grant) -> Result<(), JobError>;
}

/// Checks a cron schedule as the runner reads it: six fields, `sec min hour day-of-month month
/// day-of-week`, in UTC (e.g. `0 */5 * * * *`: every five minutes).
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    tokio_cron_scheduler::Job::new_async(schedule, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| format!("{schedule:?} is not a cron schedule of six fields (sec min hour day month weekday)"))
}

struct Scheduled {
    name: &'static str,
    schedule: String,
    job: Arc<dyn Job>,
}

/// The jobs of one instance, with the lease that spreads their ticks over the cluster.
pub struct Runner {
    lease: Arc<dyn Lease>,
    holder: Arc<str>,
    lease_ttl: Duration,
    jobs: Vec<Scheduled>,
}

impl Runner {
    /// `holder` names this instance in the leases (any string unique among the instances); `lease_ttl` is
    /// how long a lease lasts without renewal: how long a crashed instance keeps its jobs from the others.
    pub fn new(lease: Arc<dyn Lease>, holder: &str, lease_ttl: Duration) -> Runner {
        Runner { lease, holder: holder.into(), lease_ttl: lease_ttl.max(Duration::from_millis(300)), jobs: Vec::new() }
    }

    /// Adds a job under `name` (its lease's name and its metric label) on a cron `schedule`.
    pub fn add(&mut self, name: &'static str, schedule: &str, job: Arc<dyn Job>) -> Result<(), String> {
        check_schedule(schedule)?;
        self.jobs.push(Scheduled { name, schedule: schedule.to_owned(), job });
        Ok(())
    }

    /// Runs the jobs until `stop` completes; then abandons running runs, gives the leases up and returns.
    pub async fn run(self, stop: impl Future<Output = ()> + Send) -> Result<(), String> {
        let mut scheduler =
            tokio_cron_scheduler::JobScheduler::new().await.map_err(|e| format!("job scheduler: {e}"))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        for entry in self.jobs {
            let (ticks_tx, ticks) = mpsc::channel::<()>(1);
            let name = entry.name;
            let cron = tokio_cron_scheduler::Job::new_async(entry.schedule.as_str(), move |_, _| {
                let ticks_tx = ticks_tx.clone();
                Box::pin(async move {
                    if ticks_tx.try_send(()).is_err() {
                        skipped(name, "still_running");
                    }
                })
            })
            .map_err(|e| format!("job {name}: {e}"))?;
            scheduler.add(cron).await.map_err(|e| format!("job {name}: {e}"))?;
            let worker = Worker {
                name,
                job: entry.job,
                lease: self.lease.clone(),
                holder: self.holder.clone(),
                ttl: self.lease_ttl,
            };
            loops.spawn(worker.run(ticks, stop_rx.clone()));
        }
        scheduler.start().await.map_err(|e| format!("job scheduler: {e}"))?;
        stop.await;
        let _ = stop_tx.send(true);
        if let Err(err) = scheduler.shutdown().await {
            tracing::debug!(error = %err, "job scheduler did not shut down cleanly");
        }
        while loops.join_next().await.is_some() {}
        Ok(())
    }
}

/// Completes once the stop signal is given (at once if it was).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await; an error means the runner is gone.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

fn skipped(job: &'static str, reason: &'static str) {
    metrics::counter!("sealpost_job_skipped_total", "job" => job, "reason" => reason).increment(1);
}

/// How a run ended.
enum Ended {
    Finished(Result<(), JobError>),
    LeaseLost,
    Stopped,
}

/// One job's loop: waits for ticks, holds the lease, runs.
struct Worker {
    name: &'static str,
    job: Arc<dyn Job>,
    lease: Arc<dyn Lease>,
    holder: Arc<str>,
    ttl: Duration,
}

impl Worker {
    async fn run(self, mut ticks: mpsc::Receiver<()>, mut stop: watch::Receiver<bool>) {
        let mut held: Option<u64> = None;
        // Failures are logged once per streak (a store outage would otherwise log on every tick).
        let mut failing = false;
        loop {
            tokio::select! {
                tick = ticks.recv() => if tick.is_none() { break },
                _ = stopped(&mut stop) => break,
            }
            let Some(token) = self.take_lease(&mut held).await else { continue };
            match self.run_once(token, &mut stop).await {
                Ended::Finished(Ok(())) => {
                    metrics::counter!("sealpost_job_runs_total", "job" => self.name, "outcome" => "ok").increment(1);
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                    metrics::gauge!("sealpost_job_last_success_timestamp_seconds", "job" => self.name)
                        .set(now.as_secs_f64());
                    if std::mem::take(&mut failing) {
                        tracing::info!(job = self.name, "job succeeded again");
                    }
                }
                Ended::Finished(Err(err)) => {
                    metrics::counter!("sealpost_job_runs_total", "job" => self.name, "outcome" => "failed")
                        .increment(1);
                    if std::mem::replace(&mut failing, true) {
                        tracing::debug!(job = self.name, error = %err.0, "job failed again");
                    } else {
                        tracing::warn!(job = self.name, error = %err.0, "job failed; the next ticks try again");
                    }
                }
                Ended::LeaseLost => {
                    metrics::counter!("sealpost_job_runs_total", "job" => self.name, "outcome" => "lease_lost")
                        .increment(1);
                    tracing::warn!(job = self.name, "job abandoned: its lease could not be renewed in time");
                    self.let_go(&mut held);
                }
                Ended::Stopped => break,
            }
            // Ticks that came while the run went are not made up for: the next tick comes on schedule.
            while ticks.try_recv().is_ok() {
                skipped(self.name, "still_running");
            }
        }
        if let Some(token) = held.take() {
            if let Err(err) = self.lease.release(self.name, &self.holder, token).await {
                tracing::debug!(job = self.name, error = %err.0, "lease not released; it expires by itself");
            }
            metrics::gauge!("sealpost_job_lease_held", "job" => self.name).set(0.0);
        }
    }

    fn let_go(&self, held: &mut Option<u64>) {
        *held = None;
        metrics::gauge!("sealpost_job_lease_held", "job" => self.name).set(0.0);
    }

    /// Keeps or takes the job's lease; the token to run under, or `None` when this tick is not ours.
    async fn take_lease(&self, held: &mut Option<u64>) -> Option<u64> {
        if let Some(token) = *held {
            match self.lease.renew(self.name, &self.holder, token, self.ttl).await {
                Ok(true) => return Some(token),
                Ok(false) => {
                    tracing::info!(job = self.name, "lease expired; another instance may run the job now");
                    self.let_go(held);
                }
                Err(err) => {
                    // Unknown whether it is still ours: do not run; the next tick asks again.
                    tracing::debug!(job = self.name, error = %err.0, "lease store unavailable");
                    skipped(self.name, "lease_unavailable");
                    return None;
                }
            }
        }
        match self.lease.acquire(self.name, &self.holder, self.ttl).await {
            Ok(Some(token)) => {
                tracing::info!(job = self.name, "took the job's lease: this instance runs it");
                metrics::gauge!("sealpost_job_lease_held", "job" => self.name).set(1.0);
                *held = Some(token);
                Some(token)
            }
            Ok(None) => {
                skipped(self.name, "lease_held_elsewhere");
                None
            }
            Err(err) => {
                tracing::debug!(job = self.name, error = %err.0, "lease store unavailable");
                skipped(self.name, "lease_unavailable");
                None
            }
        }
    }

    /// Runs the job once under `token`, renewing the lease while it runs.
    async fn run_once(&self, token: u64, stop: &mut watch::Receiver<bool>) -> Ended {
        let started = Instant::now();
        let work = self.job.run(Grant { fencing_token: token });
        tokio::pin!(work);
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + self.ttl / 3, self.ttl / 3);
        let mut renewed = Instant::now();
        let ended = loop {
            tokio::select! {
                result = &mut work => break Ended::Finished(result),
                _ = renewals.tick() => match self.lease.renew(self.name, &self.holder, token, self.ttl).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break Ended::LeaseLost,
                    // Unknown: the lease lasts at most `ttl` after the last renewal that worked.
                    Err(_) if renewed.elapsed() >= self.ttl * 2 / 3 => break Ended::LeaseLost,
                    Err(_) => {}
                },
                _ = stopped(stop) => break Ended::Stopped,
            }
        };
        metrics::histogram!("sealpost_job_duration_seconds", "job" => self.name)
            .record(started.elapsed().as_secs_f64());
        ended
    }
}

#[cfg(test)]
mod tests;
