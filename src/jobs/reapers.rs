//! The reapers: expired envelopes and empty queues, expired invite and link codes, expired or revoked
//! contact tokens, expired attachments and abandoned uploads. Each is a bulk delete in its store (bounded by
//! the store's own reap timeout); attachments delete their objects first, in batches.

use async_trait::async_trait;
use sealpost_jobs::{Grant, Job, JobError};

use crate::domain::now_millis;
use crate::storage::Storage;

pub struct Envelopes(pub Storage);

#[async_trait]
impl Job for Envelopes {
    async fn run(&self, _grant: Grant) -> Result<(), JobError> {
        let count = self.0.queue.reap(now_millis()).await?;
        metrics::counter!("sealpost_envelopes_expired_total").increment(count);
        Ok(())
    }
}

pub struct Codes(pub Storage);

#[async_trait]
impl Job for Codes {
    async fn run(&self, _grant: Grant) -> Result<(), JobError> {
        let count = self.0.accounts.reap_codes(now_millis()).await?;
        metrics::counter!("sealpost_codes_expired_total").increment(count);
        Ok(())
    }
}

pub struct ContactTokens(pub Storage);

#[async_trait]
impl Job for ContactTokens {
    async fn run(&self, _grant: Grant) -> Result<(), JobError> {
        let count = self.0.contacts.reap(now_millis()).await?;
        metrics::counter!("sealpost_contact_tokens_reaped_total").increment(count);
        Ok(())
    }
}

pub struct Attachments(pub Storage);

#[async_trait]
impl Job for Attachments {
    async fn run(&self, _grant: Grant) -> Result<(), JobError> {
        let count = crate::attachments::objects::reap(&self.0, now_millis()).await?;
        metrics::counter!("sealpost_attachments_deleted_total").increment(count);
        Ok(())
    }
}
