//! In-memory fixed windows, per process (counters reset on restart).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{decide, RateDecision, RateLimiter};

#[derive(Default)]
pub struct MemoryRateLimiter {
    windows: Mutex<HashMap<String, (Instant, Duration, u64)>>,
    hits: AtomicU64,
}

impl MemoryRateLimiter {
    fn hit_at(&self, key: &str, limit: u32, window: Duration, now: Instant) -> RateDecision {
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        // Drop expired windows now and then so idle keys do not accumulate.
        if self.hits.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            map.retain(|_, (start, w, _)| now < *start + *w);
        }
        let entry = map.entry(key.to_string()).or_insert((now, window, 0));
        if now >= entry.0 + entry.1 {
            *entry = (now, window, 0);
        }
        entry.2 += 1;
        let ms_left = (entry.0 + entry.1)
            .saturating_duration_since(now)
            .as_millis() as u64;
        decide(entry.2, limit, ms_left, window)
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn hit(&self, key: &str, limit: u32, window: Duration) -> anyhow::Result<RateDecision> {
        Ok(self.hit_at(key, limit, window, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_at_first_hit_and_resets() {
        let rl = MemoryRateLimiter::default();
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 1..=3 {
            let d = rl.hit_at("k", 3, w, t0 + Duration::from_millis(i));
            assert!(d.allowed);
            assert_eq!(d.remaining, 3 - i as u32);
            assert_eq!(d.reset_secs, 60);
        }
        let d = rl.hit_at("k", 3, w, t0 + Duration::from_millis(30_001));
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 30);
        // Another identity has its own bucket.
        assert!(
            rl.hit_at("other", 3, w, t0 + Duration::from_secs(30))
                .allowed
        );
        // A new window after the old one ends.
        let d = rl.hit_at("k", 3, w, t0 + Duration::from_millis(60_001));
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }
}
