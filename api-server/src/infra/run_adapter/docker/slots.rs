//! Run slots (docs/docker.md "Run slots"): `RUN_SLOT_POOL_SIZE` complete, isolated, unused sandboxes
//! kept ready. A slot is its own internal network `appstrate-exec-slot-{id}`, a sidecar on it and on
//! `appstrate-egress`, and an agent container already started on the network whose runner waits for
//! its run (`RUNNER_CONFIG_URL`). A run takes one and configures its sidecar, agent part included; the
//! slot serves that run only and is destroyed at teardown, never returned.
//!
//! A background task replenishes the pool (debounced 100 ms after each acquisition and teardown) and
//! checks the ready slots every 2 s: a slot whose sidecar stops answering or whose agent stopped is
//! removed and replaced, and so is a slot unused for `RUN_SLOT_MAX_IDLE_SECONDS` (its runner gives up
//! waiting 60 s later).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::sidecar::SidecarHandle;
use super::workload::slot_agent_env;
use super::{Inner, EXEC_PREFIX};

pub const POOL_LABEL: &str = "appstrate.pool";
pub const SLOT_LABEL: &str = "appstrate.slot";
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How much longer than the slot's idle bound its runner waits before it exits on its own.
pub const RUNNER_WAIT_MARGIN_SECS: u64 = 60;

/// A ready sandbox.
#[derive(Debug, Clone)]
pub struct Slot {
    pub id: String,
    pub network: String,
    pub sidecar: SidecarHandle,
    pub agent_id: String,
    /// The agent's address on the slot network: the only peer its sidecar hands the run to.
    pub agent_ip: String,
    created: Instant,
}

pub struct SlotPool {
    pub desired: usize,
    /// The agent limits of every slot (the platform's defaults); other runs take the fresh path.
    pub memory_mb: u64,
    pub cpus: f64,
    pub max_idle: Duration,
    ready: Mutex<VecDeque<Slot>>,
    creating: AtomicUsize,
    failed: AtomicU64,
    wake: Notify,
    closed: AtomicBool,
}

impl SlotPool {
    pub fn new(desired: usize, (memory_mb, cpus): (u64, f64), max_idle: Duration) -> Self {
        Self {
            desired,
            memory_mb,
            cpus,
            max_idle,
            ready: Mutex::new(VecDeque::new()),
            creating: AtomicUsize::new(0),
            failed: AtomicU64::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn ready_count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn creating(&self) -> usize {
        self.creating.load(Ordering::SeqCst)
    }

    /// Slots that could not be created or failed a health check, since boot.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn count_failure(&self) {
        self.failed.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a run with these agent limits can use a slot.
    pub fn fits(&self, memory_mb: u64, cpus: f64) -> bool {
        memory_mb == self.memory_mb && (cpus - self.cpus).abs() < 1e-9
    }

    /// Takes a ready slot for a run with these limits, if one fits, and asks for a replacement.
    pub fn take(&self, memory_mb: u64, cpus: f64) -> Option<Slot> {
        if self.desired == 0 || !self.fits(memory_mb, cpus) {
            return None;
        }
        let slot = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        self.replenish();
        slot
    }

    /// Asks the background task to top the pool up.
    pub fn replenish(&self) {
        if self.desired > 0 {
            self.wake.notify_one();
        }
    }

    /// Stops replenishing and hands back the ready slots (to be destroyed).
    pub fn close(&self) -> Vec<Slot> {
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

    fn snapshot(&self) -> Vec<Slot> {
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

impl Inner {
    /// `/metrics` follows the pool.
    pub(super) fn publish_slot_state(&self) {
        let (ready, creating) = (self.slots.ready_count(), self.slots.creating());
        self.metrics.pool_ready.set(ready as i64);
        self.metrics.slots_creating.set(creating as i64);
    }

    /// A slot could not be made, failed a health check, or could not be configured for its run.
    pub(super) fn slot_failed(&self) {
        self.slots.count_failure();
        self.metrics.slots_failed.inc();
    }

    /// Removes a slot's containers, then its network. Errors are logged, never raised.
    pub(super) async fn destroy_slot(&self, slot: &Slot) {
        tokio::join!(
            self.remove_container(&slot.agent_id),
            self.remove_container(&slot.sidecar.id)
        );
        self.remove_network(&slot.network).await;
    }

    /// Whether the slot's sidecar answers `/health` and whether its agent container runs.
    async fn slot_health(&self, slot: &Slot) -> (bool, bool) {
        let agent_running = async {
            matches!(
                self.docker.inspect_container(&slot.agent_id, None).await,
                Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true)
            )
        };
        tokio::join!(self.healthy(&slot.sidecar), agent_running)
    }
}

/// Builds one slot; whatever was created is removed when a step fails.
async fn create_slot(inner: &Inner) -> Result<Slot, String> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut labels = inner.base_labels();
    labels.insert(POOL_LABEL.into(), "slot".into());
    labels.insert(SLOT_LABEL.into(), id.clone());
    let network = format!("{EXEC_PREFIX}slot-{id}");
    let sidecar_labels: HashMap<String, String> = labels.clone();
    let (sidecar_name, agent_name) = (
        format!("appstrate-sidecar-slot-{id}"),
        format!("appstrate-agent-slot-{id}"),
    );
    let (net, sc) = tokio::join!(
        inner.create_run_network(&network, labels.clone()),
        inner.create_sidecar(&sidecar_name, sidecar_labels, None)
    );
    let mut agent_id: Option<String> = None;
    let result = async {
        net?;
        let sc = sc.clone()?;
        let wait_secs = inner.slots.max_idle.as_secs() + RUNNER_WAIT_MARGIN_SECS;
        let (connected, created) = tokio::join!(
            inner.connect_sidecar(&network, &sc),
            inner.create_agent(
                &agent_name,
                &network,
                slot_agent_env(wait_secs),
                (inner.slots.memory_mb, inner.slots.cpus),
                labels.clone(),
                None,
            )
        );
        if let Ok(a) = &created {
            agent_id = Some(a.clone());
        }
        connected?;
        let agent = created?;
        inner
            .docker
            .start_container(&agent, None)
            .await
            .map_err(|e| format!("starting the agent of slot {id}: {e}"))?;
        let address = async {
            let info = inner
                .docker
                .inspect_container(&agent, None)
                .await
                .map_err(|e| format!("inspecting the agent of slot {id}: {e}"))?;
            info.network_settings
                .and_then(|n| n.networks)
                .and_then(|n| n.get(&network).cloned())
                .and_then(|e| e.ip_address)
                .filter(|ip| !ip.is_empty())
                .ok_or_else(|| format!("the agent of slot {id} has no address on {network}"))
        };
        let closed = async {
            while !inner.slots.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // Shutdown closes the pool and waits for this task: stop waiting for readiness at once.
        let (ready, address) = tokio::select! {
            r = async { tokio::join!(inner.wait_ready(&sc, READY_LIMIT), address) } => r,
            () = closed => return Err(format!("slot {id} removed: the server is stopping")),
        };
        if !ready {
            return Err(format!(
                "the sidecar of slot {id} did not answer /health within {}s",
                READY_LIMIT.as_secs()
            ));
        }
        Ok(Slot {
            id: id.clone(),
            network: network.clone(),
            sidecar: sc,
            agent_id: agent,
            agent_ip: address?,
            created: Instant::now(),
        })
    }
    .await;
    if result.is_err() {
        if let Some(a) = &agent_id {
            inner.remove_container(a).await;
        }
        if let Ok(sc) = &sc {
            inner.remove_container(&sc.id).await;
        }
        inner.remove_network(&network).await;
    }
    result
}

/// The replenishing and health-checking loop, until the pool is closed.
pub async fn maintain(inner: Arc<Inner>) {
    let pool = &inner.slots;
    let mut failures = 0u32;
    // A sidecar that misses one `/health` (1 s) on a busy machine gets a second chance; a stopped
    // agent does not.
    let mut missed: HashMap<String, u32> = HashMap::new();
    loop {
        if pool.is_closed() {
            break;
        }
        // Health: a slot whose sidecar or agent stopped, or that waited too long, is replaced.
        let snapshot = pool.snapshot();
        missed.retain(|id, _| snapshot.iter().any(|s| &s.id == id));
        for slot in snapshot {
            if slot.created.elapsed() >= pool.max_idle {
                if pool.evict(&slot.id) {
                    tracing::debug!(slot = %slot.id, "run slot unused for RUN_SLOT_MAX_IDLE_SECONDS; replacing it");
                    inner.destroy_slot(&slot).await;
                }
                continue;
            }
            let (sidecar_ok, agent_running) = inner.slot_health(&slot).await;
            let misses = missed.entry(slot.id.clone()).or_default();
            *misses = if sidecar_ok { 0 } else { *misses + 1 };
            if (!agent_running || *misses >= 2) && pool.evict(&slot.id) {
                tracing::warn!(slot = %slot.id, sidecar_ok, agent_running, "run slot failed its health check; replacing it");
                inner.slot_failed();
                inner.destroy_slot(&slot).await;
            }
        }
        // Top up, all missing ones at once.
        let missing = pool
            .desired
            .saturating_sub(pool.ready_count() + pool.creating());
        if missing > 0 {
            pool.creating.fetch_add(missing, Ordering::SeqCst);
            inner.publish_slot_state();
            let made = futures::future::join_all((0..missing).map(|_| async {
                let r = create_slot(inner.as_ref()).await;
                pool.creating.fetch_sub(1, Ordering::SeqCst);
                r
            }))
            .await;
            for r in made {
                match r {
                    Ok(slot) if pool.is_closed() => inner.destroy_slot(&slot).await,
                    Ok(slot) => {
                        failures = 0;
                        tracing::debug!(slot = %slot.id, "run slot ready");
                        pool.ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back(slot);
                    }
                    Err(_) if pool.is_closed() => {}
                    Err(e) => {
                        failures += 1;
                        inner.slot_failed();
                        tracing::warn!(error = %e, "could not create a run slot (set RUN_SLOT_POOL_SIZE=0 to disable the pool)");
                    }
                }
            }
        }
        inner.publish_slot_state();
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
    inner.metrics.slots_creating.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_with_the_slots_limits_take_a_slot() {
        let pool = SlotPool::new(2, (1536, 2.0), Duration::from_secs(600));
        assert!(pool.fits(1536, 2.0));
        assert!(!pool.fits(256, 2.0));
        assert!(!pool.fits(1536, 0.5));
        // Nothing ready: no slot, and nothing is counted as failed.
        assert!(pool.take(1536, 2.0).is_none());
        assert_eq!(pool.failed(), 0);
        let off = SlotPool::new(0, (1536, 2.0), Duration::from_secs(600));
        assert!(off.take(1536, 2.0).is_none());
    }
}
