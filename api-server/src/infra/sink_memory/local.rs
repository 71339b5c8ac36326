//! In-process sink memory (Tier 0/1: one API instance).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{SinkLock, SinkMemory, LOCK_WAIT};

#[derive(Default)]
struct RunMemory {
    /// `webhook-id` → end of its window.
    seen: HashMap<String, Instant>,
    buffer: BTreeMap<i64, String>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl RunMemory {
    fn idle(&self, now: Instant) -> bool {
        self.buffer.is_empty()
            && self.seen.values().all(|until| *until <= now)
            && Arc::strong_count(&self.lock) == 1
    }
}

#[derive(Default)]
pub struct LocalSinkMemory {
    runs: Mutex<HashMap<String, RunMemory>>,
    writes: std::sync::atomic::AtomicU64,
}

impl LocalSinkMemory {
    fn with<T>(&self, run_id: &str, f: impl FnOnce(&mut RunMemory) -> T) -> T {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        f(runs.entry(run_id.to_string()).or_default())
    }

    /// Every 1024 writes, forgets runs with nothing left to remember.
    fn prune(&self) {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 1024 != 1023 {
            return;
        }
        let now = Instant::now();
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.retain(|_, m| {
            m.seen.retain(|_, until| *until > now);
            !m.idle(now)
        });
    }
}

#[async_trait]
impl SinkMemory for LocalSinkMemory {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn seen(&self, run_id: &str, webhook_id: &str) -> anyhow::Result<bool> {
        let now = Instant::now();
        Ok(self.with(run_id, |m| {
            m.seen.get(webhook_id).is_some_and(|until| *until > now)
        }))
    }

    async fn remember(
        &self,
        run_id: &str,
        webhook_id: &str,
        window: Duration,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        self.with(run_id, |m| match m.seen.get(webhook_id) {
            Some(until) if *until > now => {}
            _ => {
                m.seen.insert(webhook_id.to_string(), now + window);
            }
        });
        self.prune();
        Ok(())
    }

    async fn buffer(
        &self,
        run_id: &str,
        sequence: i64,
        event: &str,
        max: usize,
    ) -> anyhow::Result<bool> {
        Ok(self.with(run_id, |m| {
            if m.buffer.len() >= max && !m.buffer.contains_key(&sequence) {
                return false;
            }
            m.buffer.insert(sequence, event.to_string());
            true
        }))
    }

    async fn take(&self, run_id: &str, sequence: i64) -> anyhow::Result<Option<String>> {
        Ok(self.with(run_id, |m| m.buffer.remove(&sequence)))
    }

    async fn take_all(&self, run_id: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.with(run_id, |m| {
            std::mem::take(&mut m.buffer).into_values().collect()
        }))
    }

    async fn lock(&self, run_id: &str) -> anyhow::Result<SinkLock> {
        let lock = self.with(run_id, |m| m.lock.clone());
        let guard = tokio::time::timeout(LOCK_WAIT, lock.lock_owned())
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for the run's event lock"))?;
        Ok(SinkLock::local(guard))
    }
}
