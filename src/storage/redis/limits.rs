//! Rate-limit token buckets in Redis, shared by every instance.
//!
//! Owns the token-bucket script (also run inside the queue's push script, so a send takes its token in
//! the same round trip) and how a limit is handed to it. Invariants: the refill is computed on the Redis
//! clock, so instances need not agree on the time; an idle bucket expires once it would be full again.
//! A bucket is keyed by an opaque pseudonym and must never name an account or an address.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::Pool;
use fred::types::scripts::Script;

use crate::config::RateLimit;
use crate::storage::redis::keys::Keys;
use crate::storage::{RateBucket, RateLimitStore, StoreError, StoreResult};

/// Redis: token buckets.
pub struct RedisLimits {
    pool: Pool,
    keys: Keys,
    take_token: Script,
    peek_token: Script,
    take_two_tokens: Script,
}

impl RedisLimits {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        let take_token =
            Script::from_lua(concat!(include_str!("scripts/token_bucket.lua"), include_str!("scripts/take_token.lua")));
        let peek_token =
            Script::from_lua(concat!(include_str!("scripts/token_bucket.lua"), include_str!("scripts/peek_token.lua")));
        let take_two_tokens = Script::from_lua(concat!(
            include_str!("scripts/token_bucket.lua"),
            include_str!("scripts/take_two_tokens.lua")
        ));
        RedisLimits { pool, keys, take_token, peek_token, take_two_tokens }
    }
}

/// Capacity, refill per millisecond and expiry of a token bucket, as the scripts take them.
pub fn bucket_args(limit: &RateLimit) -> [String; 3] {
    let per_ms = limit.refill_per_second() / 1000.0;
    let ttl_ms = limit.period.as_millis().max(1000);
    [limit.burst.to_string(), format!("{per_ms:.12}"), ttl_ms.to_string()]
}

#[async_trait]
impl RateLimitStore for RedisLimits {
    async fn take(
        &self,
        bucket: &str,
        key: &[u8; 16],
        limit: &RateLimit,
        cost: u32,
    ) -> StoreResult<Result<(), Duration>> {
        let name = self.keys.rate_bucket(bucket, key);
        let mut args = bucket_args(limit).to_vec();
        args.push(cost.to_string());
        let wait: i64 = self.take_token.evalsha_with_reload(self.pool.next_connected(), vec![name], args).await?;
        Ok(if wait <= 0 { Ok(()) } else { Err(Duration::from_millis(wait as u64)) })
    }

    async fn peek(&self, bucket: &str, key: &[u8; 16], limit: &RateLimit) -> StoreResult<Result<(), Duration>> {
        let name = self.keys.rate_bucket(bucket, key);
        let [cap, per_ms, _] = bucket_args(limit);
        let wait: i64 =
            self.peek_token.evalsha_with_reload(self.pool.next_connected(), vec![name], vec![cap, per_ms]).await?;
        Ok(if wait <= 0 { Ok(()) } else { Err(Duration::from_millis(wait as u64)) })
    }

    async fn take_two(
        &self,
        first: &RateBucket,
        second: &RateBucket,
    ) -> StoreResult<Result<(), (&'static str, Duration)>> {
        let first_name = self.keys.rate_bucket(first.name, &first.key);
        let second_name = self.keys.rate_bucket_in_slot_of(second.name, &second.key, &first_name);
        let args: Vec<String> = bucket_args(&first.limit).into_iter().chain(bucket_args(&second.limit)).collect();
        let reply: Vec<i64> = self
            .take_two_tokens
            .evalsha_with_reload(self.pool.next_connected(), vec![first_name, second_name], args)
            .await?;
        match reply.as_slice() {
            [0, _] => Ok(Ok(())),
            [1, wait] => Ok(Err((first.name, Duration::from_millis((*wait).max(0) as u64)))),
            [2, wait] => Ok(Err((second.name, Duration::from_millis((*wait).max(0) as u64)))),
            _ => Err(StoreError::Corrupt("take_two_tokens reply")),
        }
    }
}
