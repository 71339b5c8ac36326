//! The `RateLimiter` concern: fixed windows that start at the first hit (§10). Memory at Tier 0/1, Redis
//! at Tier 2+, both through [`decide`], so the arithmetic cannot drift between backends.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryRateLimiter;
pub use redis::RedisRateLimiter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets, rounded up.
    pub reset_secs: u64,
    pub window_secs: u64,
}

impl RateDecision {
    /// `RateLimit: limit=N, remaining=R, reset=S`
    pub fn header(&self) -> String {
        format!(
            "limit={}, remaining={}, reset={}",
            self.limit, self.remaining, self.reset_secs
        )
    }
    /// `RateLimit-Policy: N;w=W`
    pub fn policy(&self) -> String {
        format!("{};w={}", self.limit, self.window_secs)
    }
}

/// The decision for the `count`-th hit of a window with `ms_left` milliseconds to run.
pub fn decide(count: u64, limit: u32, ms_left: u64, window: Duration) -> RateDecision {
    RateDecision {
        allowed: count <= limit as u64,
        limit,
        remaining: (limit as u64).saturating_sub(count) as u32,
        reset_secs: ms_left.div_ceil(1000).max(1),
        window_secs: window.as_secs().max(1),
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// `memory` or `redis`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    /// Counts one hit on `key` and says whether it is within `limit` for its window.
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> anyhow::Result<RateDecision>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let w = Duration::from_secs(60);
        let d = decide(1, 20, 60_000, w);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_secs), (19, 60));
        let d = decide(20, 20, 1_001, w);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_secs), (0, 2));
        let d = decide(21, 20, 59_999, w);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.header(), "limit=20, remaining=0, reset=60");
        assert_eq!(d.policy(), "20;w=60");
    }
}
