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

    /// The storage-level bucket for `identity`, for storage calls that take a token themselves.
    pub fn bucket(&self, bucket: &'static str, identity: &[u8], limit: &RateLimit) -> crate::storage::RateBucket {
        crate::storage::RateBucket { name: bucket, key: pseudonym(&self.key, bucket, identity), limit: *limit }
    }

    /// The answer for a request whose bucket was empty.
    pub fn refused(bucket: &'static str, wait: std::time::Duration) -> ApiError {
        metrics::counter!("sealpost_rate_limited_total", "bucket" => bucket).increment(1);
        ApiError::RateLimited(wait)
    }

    /// Takes one token from `bucket` for `identity`, or answers `rate_limited` with the wait.
    pub async fn check(&self, bucket: &'static str, identity: &[u8], limit: &RateLimit) -> Result<(), ApiError> {
        self.check_cost(bucket, identity, limit, 1).await
    }

    /// Takes `cost` tokens from `bucket` for `identity` (a bucket counting bytes rather than requests),
    /// or answers `rate_limited` with the wait.
    pub async fn check_cost(
        &self,
        bucket: &'static str,
        identity: &[u8],
        limit: &RateLimit,
        cost: u32,
    ) -> Result<(), ApiError> {
        let key = pseudonym(&self.key, bucket, identity);
        match self.store.take(bucket, &key, limit, cost).await? {
            Ok(()) => Ok(()),
            Err(wait) => Err(Self::refused(bucket, wait)),
        }
    }

    /// Takes one token for `first` and, only when it had one, one for `second` (each a bucket, an identity
    /// and a limit), in one call to the store: as two [`Limiter::check`]s in a row, one round trip.
    pub async fn check_two(
        &self,
        first: (&'static str, &[u8], &RateLimit),
        second: (&'static str, &[u8], &RateLimit),
    ) -> Result<(), ApiError> {
        let (first, second) = (self.bucket(first.0, first.1, first.2), self.bucket(second.0, second.1, second.2));
        match self.store.take_two(&first, &second).await? {
            Ok(()) => Ok(()),
            Err((bucket, wait)) => Err(Self::refused(bucket, wait)),
        }
    }

    /// Refuses, as [`Limiter::check`] would, when the bucket is empty, but takes nothing: for buckets that
    /// count only some outcomes (failures), checked before the outcome is known.
    pub async fn check_not_exhausted(
        &self,
        bucket: &'static str,
        identity: &[u8],
        limit: &RateLimit,
    ) -> Result<(), ApiError> {
        let key = pseudonym(&self.key, bucket, identity);
        match self.store.peek(bucket, &key, limit).await? {
            Ok(()) => Ok(()),
            Err(wait) => Err(Self::refused(bucket, wait)),
        }
    }
}
