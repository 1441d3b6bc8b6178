//! Rate limiting in front of the storage's token buckets.
//!
//! Bucket keys are keyed hashes (HMAC with the server's pseudonym key) of the identifier being limited,
//! so neither an IP address nor an account id is ever kept in a bucket, in memory or in Redis.

use std::sync::Arc;

use crate::config::RateLimit;
use crate::crypto::pseudonym;
use crate::error::ApiError;
use crate::storage::RateLimitStore;

pub struct Limiter {
    store: Arc<dyn RateLimitStore>,
    key: [u8; 32],
}

impl Limiter {
    pub fn new(store: Arc<dyn RateLimitStore>, key: [u8; 32]) -> Self {
        Limiter { store, key }
    }

    /// Takes one token from `bucket` for `identity`, or answers `rate_limited` with the wait.
    pub async fn check(&self, bucket: &'static str, identity: &[u8], limit: &RateLimit) -> Result<(), ApiError> {
        let key = pseudonym(&self.key, bucket, identity);
        match self.store.take(bucket, &key, limit).await? {
            Ok(()) => Ok(()),
            Err(wait) => {
                metrics::counter!("sealpost_rate_limited_total", "bucket" => bucket).increment(1);
                Err(ApiError::RateLimited(wait))
            }
        }
    }
}
