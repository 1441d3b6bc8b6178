//! Background jobs of one instance: the reaper that deletes expired envelopes, invite codes, link codes,
//! contact tokens and attachments.
//!
//! Expired envelopes are already invisible (every read filters on expiry); the reaper only gives their
//! space back (in Redis, expired envelopes inside queues that are still alive).

use std::time::Duration;

use crate::config::Config;
use crate::storage::Storage;

pub fn start(storage: Storage, config: &Config, tasks: &crate::shutdown::Tasks) {
    let every = Duration::from_secs(config.reap_interval_seconds.max(1));
    tasks.spawn("reaper", |mut shutdown| async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.recv() => break,
            }
            match storage.queue.reap(crate::domain::now_millis()).await {
                Ok(0) => {}
                Ok(count) => {
                    metrics::counter!("sealpost_envelopes_expired_total").increment(count);
                    tracing::debug!(count, "reaped expired envelopes");
                }
                // An outage is logged once, where the store's health is tracked.
                Err(err) if err.is_unavailable() => tracing::debug!(error = %err, "reaper skipped"),
                Err(err) => tracing::warn!(error = %err, "reaper failed"),
            }
            match storage.accounts.reap_codes(crate::domain::now_millis()).await {
                Ok(_) => {}
                Err(err) if err.is_unavailable() => tracing::debug!(error = %err, "code reaper skipped"),
                Err(err) => tracing::warn!(error = %err, "code reaper failed"),
            }
            match storage.contacts.reap(crate::domain::now_millis()).await {
                Ok(_) => {}
                Err(err) if err.is_unavailable() => tracing::debug!(error = %err, "contact-token reaper skipped"),
                Err(err) => tracing::warn!(error = %err, "contact-token reaper failed"),
            }
            match crate::attachments::objects::reap(&storage, crate::domain::now_millis()).await {
                Ok(0) => {}
                Ok(count) => metrics::counter!("sealpost_attachments_deleted_total").increment(count),
                Err(err) if err.is_unavailable() => tracing::debug!(error = %err, "attachment reaper skipped"),
                Err(err) => tracing::warn!(error = %err, "attachment reaper failed"),
            }
        }
    });
}
