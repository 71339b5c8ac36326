//! The sidecar pool (§13.3): `SIDECAR_POOL_SIZE` started, healthy, unconfigured sidecars. A run takes
//! one; it is configured once and destroyed at teardown, never returned. A background task replenishes
//! the pool (debounced 100 ms after each acquisition and teardown) and health-checks the ready
//! sidecars every 2 s: one that fails is logged, removed and replaced, never handed to a run.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::sidecar::SidecarHandle;
use super::Inner;

pub const POOL_LABEL: &str = "appstrate.pool";
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const READY_LIMIT: Duration = Duration::from_secs(30);

pub struct Pool {
    pub desired: usize,
    ready: Mutex<VecDeque<SidecarHandle>>,
    wake: Notify,
    closed: AtomicBool,
}

impl Pool {
    pub fn new(desired: usize) -> Self {
        Self {
            desired,
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn ready_count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes a ready sidecar, if any, and asks for a replacement.
    pub fn take(&self) -> Option<SidecarHandle> {
        let sc = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if sc.is_some() {
            tracing::debug!("pool sidecar acquired");
        }
        self.replenish();
        sc
    }

    /// Asks the background task to top the pool up.
    pub fn replenish(&self) {
        if self.desired > 0 {
            self.wake.notify_one();
        }
    }

    /// Stops replenishing and hands back the ready sidecars (to be removed).
    pub fn close(&self) -> Vec<SidecarHandle> {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> Vec<SidecarHandle> {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Removes `id` from the ready list; false when a run took it in the meantime.
    fn evict(&self, id: &str) -> bool {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let before = ready.len();
        ready.retain(|s| s.id != id);
        ready.len() != before
    }
}

/// Creates one pool sidecar and waits until it is ready; it is removed when it never gets there.
async fn create_one(inner: &Inner) -> Result<SidecarHandle, String> {
    let name = format!("appstrate-sidecar-pool-{}", uuid::Uuid::new_v4());
    let labels = HashMap::from([(POOL_LABEL.to_string(), "sidecar".to_string())]);
    let sc = inner.create_sidecar(&name, labels).await?;
    tracing::debug!(sidecar = %sc.name, "pool sidecar created");
    // Shutdown closes the pool and waits for this task: stop waiting for readiness at once.
    let closed = async {
        while !inner.pool.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let ready = tokio::select! {
        ready = inner.wait_ready(&sc, READY_LIMIT) => ready,
        () = closed => {
            inner.remove_container(&sc.id).await;
            return Err(format!("pool sidecar {name} removed: the server is stopping"));
        }
    };
    if ready {
        tracing::debug!(sidecar = %sc.name, "pool sidecar ready");
        Ok(sc)
    } else {
        inner.remove_container(&sc.id).await;
        Err(format!(
            "pool sidecar {name} did not answer /health within {}s",
            READY_LIMIT.as_secs()
        ))
    }
}

/// The replenishing and health-checking loop, until the pool is closed.
pub async fn maintain(inner: Arc<Inner>) {
    let pool = &inner.pool;
    let mut failures = 0u32;
    loop {
        if pool.is_closed() {
            break;
        }
        // Health: a ready sidecar that stopped answering is replaced.
        for sc in pool.snapshot() {
            if !inner.healthy(&sc).await && pool.evict(&sc.id) {
                tracing::warn!(sidecar = %sc.name, "pooled sidecar failed its health check; replacing it");
                inner.remove_container(&sc.id).await;
            }
        }
        // Top up, all missing ones at once.
        let missing = pool.desired.saturating_sub(pool.ready_count());
        if missing > 0 {
            let made =
                futures::future::join_all((0..missing).map(|_| create_one(inner.as_ref()))).await;
            for r in made {
                match r {
                    Ok(sc) if pool.is_closed() => inner.remove_container(&sc.id).await,
                    Ok(sc) => {
                        failures = 0;
                        pool.ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back(sc);
                        tracing::debug!("pool replenished");
                    }
                    Err(_) if pool.is_closed() => {}
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "could not create a pool sidecar (set SIDECAR_POOL_SIZE=0 to disable the pool)");
                    }
                }
            }
        }
        inner.metrics.pool_ready.set(pool.ready_count() as i64);
        // Back off after failures so that a broken engine is not hammered.
        let wait = if failures > 0 {
            Duration::from_secs(u64::from(failures.min(5)))
        } else {
            HEALTH_INTERVAL
        };
        tokio::select! {
            _ = pool.wake.notified() => {
                // Debounce a burst of acquisitions and teardowns into one round.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    inner.metrics.pool_ready.set(0);
}
