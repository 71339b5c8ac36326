//! The `SinkMemory` concern: what the event sink (§12.3) must remember between requests of one run —
//! the `webhook-id`s already accepted (replay dedupe), the out-of-order events waiting for their
//! predecessors (the gap buffer) and a short per-run lock so two requests never persist the same
//! sequence concurrently. In process at Tier 0/1; in Redis at Tier 2+, so every API instance behind a
//! load balancer sees the same memory.
//!
//! Buffered events are opaque strings here (the sink serialises them); each carries its sequence.
//! Errors are returned to the sink, which answers 503 `sink_unavailable` so the runner retries.

mod local;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use local::LocalSinkMemory;
pub use redis::RedisSinkMemory;

/// How long a per-run lock is held at most (a Redis lock expires after this even if its holder died).
pub const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a request waits for the per-run lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a buffered event is kept when its run never finalizes.
pub const BUFFER_TTL: Duration = Duration::from_secs(24 * 3600);

#[async_trait]
pub trait SinkMemory: Send + Sync {
    /// `local` or `redis`.
    fn kind(&self) -> &'static str;
    /// Whether `webhook_id` of `run_id` was remembered and its window has not passed.
    async fn seen(&self, run_id: &str, webhook_id: &str) -> anyhow::Result<bool>;
    /// Remembers `webhook_id` of `run_id` for `window` (kept as is when already remembered).
    async fn remember(
        &self,
        run_id: &str,
        webhook_id: &str,
        window: Duration,
    ) -> anyhow::Result<()>;
    /// Buffers `event` under `sequence`, replacing an event buffered under the same sequence. False when
    /// `max` other sequences are already buffered.
    async fn buffer(
        &self,
        run_id: &str,
        sequence: i64,
        event: &str,
        max: usize,
    ) -> anyhow::Result<bool>;
    /// Removes and returns the event buffered under `sequence`.
    async fn take(&self, run_id: &str, sequence: i64) -> anyhow::Result<Option<String>>;
    /// Removes and returns every buffered event, in sequence order.
    async fn take_all(&self, run_id: &str) -> anyhow::Result<Vec<String>>;
    /// Takes the per-run lock, waiting up to [`LOCK_WAIT`].
    async fn lock(&self, run_id: &str) -> anyhow::Result<SinkLock>;
}

/// A held per-run lock. Release it with [`SinkLock::release`]; dropping it also releases it (a Redis
/// lock in a background task).
pub struct SinkLock {
    inner: Option<LockInner>,
}

enum LockInner {
    Local(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>),
    Redis(Box<redis::RedisLock>),
}

impl SinkLock {
    fn local(guard: tokio::sync::OwnedMutexGuard<()>) -> SinkLock {
        SinkLock {
            inner: Some(LockInner::Local(guard)),
        }
    }

    fn redis(lock: redis::RedisLock) -> SinkLock {
        SinkLock {
            inner: Some(LockInner::Redis(Box::new(lock))),
        }
    }

    pub async fn release(mut self) {
        if let Some(LockInner::Redis(lock)) = self.inner.take() {
            lock.release().await;
        }
    }
}

impl Drop for SinkLock {
    fn drop(&mut self) {
        if let Some(LockInner::Redis(lock)) = self.inner.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(lock.release());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract both implementations follow.
    pub(super) async fn contract(m: &dyn SinkMemory, run: &str) {
        assert!(!m.seen(run, "msg_1").await.unwrap());
        m.remember(run, "msg_1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(m.seen(run, "msg_1").await.unwrap());
        assert!(!m.seen(run, "msg_2").await.unwrap());
        assert!(!m.seen("other", "msg_1").await.unwrap());
        m.remember(run, "msg_short", Duration::from_millis(30))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            !m.seen(run, "msg_short").await.unwrap(),
            "the window passed"
        );

        assert!(m.buffer(run, 5, "five", 2).await.unwrap());
        assert!(m.buffer(run, 3, "three", 2).await.unwrap());
        assert!(!m.buffer(run, 4, "four", 2).await.unwrap(), "full");
        assert!(m.buffer(run, 5, "five again", 2).await.unwrap(), "replaces");
        assert_eq!(m.take(run, 4).await.unwrap(), None);
        assert_eq!(m.take(run, 3).await.unwrap().as_deref(), Some("three"));
        assert_eq!(m.take(run, 3).await.unwrap(), None);
        assert!(m.buffer(run, 2, "two", 2).await.unwrap());
        assert_eq!(m.take_all(run).await.unwrap(), vec!["two", "five again"]);
        assert!(m.take_all(run).await.unwrap().is_empty());

        let lock = m.lock(run).await.unwrap();
        let waiting = m.lock(run);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                .await
                .is_err(),
            "a second holder waits"
        );
        lock.release().await;
        let second = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("acquired once released")
            .unwrap();
        drop(second);
        // A dropped lock is released too.
        let third = tokio::time::timeout(Duration::from_secs(2), m.lock(run))
            .await
            .expect("acquired once dropped")
            .unwrap();
        third.release().await;
    }

    #[tokio::test]
    async fn local_contract() {
        contract(&LocalSinkMemory::default(), "run_local").await;
    }
}
