//! Redis fixed windows (Tier 2), shared by every instance: key `appstrate:rl:<window>:<key>`.
//!
//! One Lua script per hit, so the count, the window's start and its remaining time are read atomically:
//! `INCR`, `PEXPIRE` on the first hit of a window (the window starts at the first hit, as in memory), then
//! `PTTL`. The result feeds the shared [`decide`] arithmetic, so headers and verdicts match the in-memory
//! limiter exactly.
//!
//! A Redis error is returned to the caller, which lets the request through (fail-open), logs a warning
//! and increments `appstrate_rate_limiter_errors_total` (see `http::middleware` and `runs::create`): an
//! unavailable Redis degrades rate limiting, never the API.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{decide, RateDecision, RateLimiter};
use crate::infra::redis_client::Redis;

const HIT: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  -- A key without expiry (left by something else): start a window now rather than block forever.
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
";

pub struct RedisRateLimiter {
    redis: Redis,
    script: Script,
}

impl RedisRateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            script: Script::new(HIT),
        }
    }
}

/// The Redis key of `key` for windows of `window`.
pub fn redis_key(key: &str, window: Duration) -> String {
    format!("appstrate:rl:{}:{key}", window.as_secs().max(1))
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn hit(&self, key: &str, limit: u32, window: Duration) -> anyhow::Result<RateDecision> {
        let mut conn = self.redis.conn();
        let window_ms = window.as_millis().max(1) as u64;
        // EVALSHA, falling back to EVAL when the script cache is empty (e.g. after a Redis restart).
        let (count, ttl): (u64, i64) = self
            .script
            .key(redis_key(key, window))
            .arg(window_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(decide(count, limit, ttl.max(0) as u64, window))
    }
}
