//! Docker adapter (§13.2, `RUN_ADAPTER=docker`): per run an internal network, a sidecar attached to
//! `appstrate-egress` and to the run network, and the hardened agent container attached only to the
//! run network — taken ready-made from a run slot ([`slots`]) or created on the hot path
//! ([`workload`]). Everything goes through the Docker Engine API (bollard) on `DOCKER_SOCKET`; nothing
//! is ever pulled.
//!
//! Every object carries `appstrate.managed=true` and `appstrate.instance=<id>` (derived from the
//! absolute `DATA_DIR`), so the boot and shutdown sweeps only touch this server's leftovers even when
//! several servers share one engine.

mod engine;
mod mcp;
mod sidecar;
mod slots;
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

pub use engine::{is_static_elf, TROUBLESHOOTING};
use sidecar::SidecarHandle;
use slots::SlotPool;
pub use slots::{POOL_LABEL, SLOT_LABEL};
use workload::DockerWorkload;

use super::{PoolStatus, RunAdapter, Workload, WorkloadSpec};
use crate::config::Config;
use crate::metrics::SidecarMetrics;

pub const EGRESS_NETWORK: &str = "appstrate-egress";
pub const EXEC_PREFIX: &str = "appstrate-exec-";
pub const MANAGED_LABEL: &str = "appstrate.managed";
pub const INSTANCE_LABEL: &str = "appstrate.instance";
pub const RUN_LABEL: &str = "appstrate.run";
pub(crate) const TAIL_LINES: usize = 200;

/// What the adapter takes from the configuration.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    pub socket: String,
    pub agent_image: String,
    pub sidecar_image: String,
    /// `SIDECAR_MCP_IMAGE`: the sidecar of a run with stdio MCP servers (a userland and the sidecar).
    pub sidecar_mcp_image: String,
    /// `RUN_SLOT_POOL_SIZE` (or the seed's `SIDECAR_POOL_SIZE`): run slots kept ready.
    pub slot_pool_size: usize,
    /// The agent limits of the slots: a run's defaults (no `_meta` resources), clamped by the ceilings.
    pub slot_limits: (u64, f64),
    /// `RUN_SLOT_MAX_IDLE_SECONDS`: an unused slot is replaced after this long.
    pub slot_max_idle: Duration,
    pub control_host: String,
    pub workspace_tmpfs_mb: u32,
    /// The `appstrate.instance` label value.
    pub instance: String,
    pub runner_bin: Option<PathBuf>,
    pub sidecar_bin: Option<PathBuf>,
    pub sidecar_log_level: String,
}

impl DockerSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            socket: config.docker_socket.clone(),
            agent_image: config.agent_image.clone(),
            sidecar_image: config.sidecar_image.clone(),
            sidecar_mcp_image: config.sidecar_mcp_image.clone(),
            slot_pool_size: config.run_slot_pool_size as usize,
            slot_limits: default_agent_limits(
                config.platform_run_limits.agent_memory_ceiling_mb,
                config.platform_run_limits.agent_cpu_ceiling,
            ),
            slot_max_idle: Duration::from_secs(config.run_slot_max_idle_seconds),
            control_host: config.sidecar_control_host.clone(),
            workspace_tmpfs_mb: config.workspace_tmpfs_size_mb,
            instance: instance_id(&config.data_dir),
            runner_bin: super::locate_binary(config.runner_bin.as_deref(), "appstrate-runner"),
            sidecar_bin: super::locate_binary(config.sidecar_bin.as_deref(), "appstrate-sidecar"),
            sidecar_log_level: config.log_level.clone(),
        }
    }
}

/// The agent limits of a run whose manifest names none: 1536 MiB and 2 CPUs, clamped by the ceilings
/// (the same as `runs::runtime::agent_resources` without `_meta`, which a unit test there checks).
pub fn default_agent_limits(memory_ceiling_mb: u64, cpu_ceiling: u64) -> (u64, f64) {
    (1536.min(memory_ceiling_mb), 2f64.min(cpu_ceiling as f64))
}

/// This server's instance label: a hash of its absolute data directory, stable across restarts.
pub fn instance_id(data_dir: &std::path::Path) -> String {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    hex::encode(Sha256::digest(abs.to_string_lossy().as_bytes()))[..16].to_string()
}

pub(crate) struct Inner {
    docker: Docker,
    settings: DockerSettings,
    http: reqwest::Client,
    slots: SlotPool,
    metrics: SidecarMetrics,
    /// Why runs cannot start (missing image, engine down); `None` when they can.
    unavailable: Mutex<Option<String>>,
    images_ok: AtomicBool,
    pool_started: AtomicBool,
    /// The pool's background task, awaited at shutdown so that no slot is created after the sweep.
    pool_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    /// Starts the pool's background task once (when the pool is enabled).
    fn start_pool(self: &Arc<Self>) {
        if self.slots.desired > 0
            && !self.slots.is_closed()
            && !self.pool_started.swap(true, Ordering::SeqCst)
        {
            let task = tokio::spawn(slots::maintain(self.clone()));
            *self.pool_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
    }

    fn base_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (MANAGED_LABEL.to_string(), "true".to_string()),
            (INSTANCE_LABEL.to_string(), self.settings.instance.clone()),
        ])
    }

    fn set_unavailable(&self, why: Option<String>) {
        *self.unavailable.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// The egress network and both images (boot step 7).
    async fn ensure_ready(&self) -> Result<(), String> {
        let egress = HashMap::from([("appstrate.role".to_string(), "egress".to_string())]);
        engine::ensure_network(&self.docker, EGRESS_NETWORK, false, egress)
            .await
            .map_err(|e| {
                format!("cannot create the {EGRESS_NETWORK} network: {e}. {TROUBLESHOOTING}")
            })?;
        self.ensure_images().await
    }

    async fn ensure_images(&self) -> Result<(), String> {
        let s = &self.settings;
        engine::ensure_image(
            &self.docker,
            &s.agent_image,
            s.runner_bin.as_deref(),
            "appstrate-runner",
            "RUNNER_BIN",
        )
        .await?;
        engine::ensure_image(
            &self.docker,
            &s.sidecar_image,
            s.sidecar_bin.as_deref(),
            "appstrate-sidecar",
            "SIDECAR_BIN",
        )
        .await
    }

    /// A fresh sidecar `appstrate-sidecar-{runId}`, ready and configured (§13.2 step 2). With `mcp`
    /// (the tar of the run's stdio MCP servers) it is made from `SIDECAR_MCP_IMAGE` with the files
    /// under `/mcp`.
    async fn fresh_sidecar(
        &self,
        run_id: &str,
        config: &::sidecar::SidecarConfig,
        mcp: Option<&mcp::McpSidecar<'_>>,
    ) -> Result<SidecarHandle, String> {
        let started = Instant::now();
        let name = format!("appstrate-sidecar-{run_id}");
        let labels = HashMap::from([(RUN_LABEL.to_string(), run_id.to_string())]);
        let sc = self.create_sidecar(&name, labels, mcp).await?;
        if !self.wait_ready(&sc, Duration::from_secs(10)).await {
            self.remove_container(&sc.id).await;
            return Err(format!("sidecar {name} did not answer /health within 10s"));
        }
        if let Err(e) = self.configure(&sc, config).await {
            self.remove_container(&sc.id).await;
            return Err(e);
        }
        self.metrics.acquired("fresh", started.elapsed());
        Ok(sc)
    }

    async fn remove_network(&self, name: &str) {
        if let Err(e) = self.docker.remove_network(name).await {
            if !engine::is_not_found(&e) {
                tracing::warn!(network = name, error = %e, "could not remove a network");
            }
        }
    }

    /// Removes every container and run network of this instance (boot step 6, shutdown step 4).
    async fn sweep(&self) -> (usize, usize) {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{MANAGED_LABEL}=true"),
                format!("{INSTANCE_LABEL}={}", self.settings.instance),
            ],
        )]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not list managed containers");
                Vec::new()
            });
        let ids: Vec<String> = containers.into_iter().filter_map(|c| c.id).collect();
        futures::future::join_all(ids.iter().map(|id| self.remove_container(id))).await;
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not list run networks");
                Vec::new()
            });
        let names: Vec<String> = networks
            .into_iter()
            .filter_map(|n| n.name)
            .filter(|n| n.starts_with(EXEC_PREFIX))
            .collect();
        futures::future::join_all(names.iter().map(|n| self.remove_network(n))).await;
        self.sweep_volumes().await;
        (ids.len(), names.len())
    }
}

/// The Docker run adapter. Build it with [`DockerAdapter::connect`].
pub struct DockerAdapter {
    inner: Arc<Inner>,
}

impl DockerAdapter {
    /// Connects to the engine (boot step 3). An unreachable engine is a boot error naming
    /// `DOCKER_SOCKET`, with the troubleshooting steps.
    pub async fn connect(
        settings: DockerSettings,
        metrics: SidecarMetrics,
    ) -> Result<Self, String> {
        let docker = engine::connect(&settings.socket).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        metrics.pool_desired.set(settings.slot_pool_size as i64);
        tracing::debug!(
            concern = "run_adapter",
            r#impl = "docker",
            socket = %settings.socket,
            instance = %settings.instance,
            "adapter selected"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                docker,
                slots: SlotPool::new(
                    settings.slot_pool_size,
                    settings.slot_limits,
                    settings.slot_max_idle,
                ),
                settings,
                http,
                metrics,
                unavailable: Mutex::new(Some("the Docker adapter is not prepared yet".into())),
                images_ok: AtomicBool::new(false),
                pool_started: AtomicBool::new(false),
                pool_task: Mutex::new(None),
            }),
        })
    }

    /// The engine client (tests and benchmarks inspect what the adapter created).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    pub fn instance(&self) -> &str {
        &self.inner.settings.instance
    }
}

#[async_trait]
impl RunAdapter for DockerAdapter {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn bash(&self) -> &'static str {
        "container"
    }

    fn available(&self) -> Result<(), String> {
        match &*self
            .inner
            .unavailable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn workload_noun(&self) -> &'static str {
        "container"
    }

    async fn prepare(&self) {
        let inner = &self.inner;
        match inner.ensure_ready().await {
            Ok(()) => {
                inner.images_ok.store(true, Ordering::SeqCst);
                inner.set_unavailable(None);
                inner.start_pool();
            }
            Err(why) => {
                tracing::error!(error = %why, "Docker mode unavailable");
                inner.set_unavailable(Some(why));
            }
        }
    }

    async fn start(&self, spec: WorkloadSpec) -> Result<Box<dyn Workload>, String> {
        self.available()?;
        let mut w = DockerWorkload::new(self.inner.clone());
        match w.launch(spec).await {
            Ok(()) => Ok(Box::new(w)),
            Err(e) => {
                w.teardown().await;
                Err(e)
            }
        }
    }

    async fn cleanup_orphans(&self) {
        let (containers, networks) = self.inner.sweep().await;
        if containers + networks > 0 {
            tracing::warn!(
                containers,
                networks,
                "removed containers and run networks left by a previous server process"
            );
        }
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        let ready = inner.slots.close();
        // A slot the pool is creating right now is removed by the task itself once it sees the pool
        // closed; wait for that before sweeping, or the slot would outlive the server.
        let task = inner
            .pool_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                tracing::warn!("the run slot pool did not stop within 15 s");
            }
        }
        futures::future::join_all(ready.iter().map(|slot| inner.destroy_slot(slot))).await;
        inner.metrics.pool_ready.set(0);
        inner.sweep().await;
    }

    async fn check(&self) -> Option<Result<(), String>> {
        let inner = &self.inner;
        let res = match tokio::time::timeout(Duration::from_secs(3), inner.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Docker engine ping failed: {e}. {TROUBLESHOOTING}")),
            Err(_) => Err(format!("Docker engine ping timed out. {TROUBLESHOOTING}")),
        };
        let res = match res {
            Err(why) => Err(why),
            Ok(()) if inner.images_ok.load(Ordering::SeqCst) => Ok(()),
            // The images or the egress network were missing: try again (images may have been built since).
            Ok(()) => match inner.ensure_ready().await {
                Ok(()) => {
                    inner.images_ok.store(true, Ordering::SeqCst);
                    Ok(())
                }
                Err(why) => Err(why),
            },
        };
        match &res {
            Err(why) => inner.set_unavailable(Some(why.clone())),
            Ok(()) => {
                inner.set_unavailable(None);
                inner.start_pool();
            }
        }
        Some(res)
    }

    fn pool_status(&self) -> PoolStatus {
        let pool = &self.inner.slots;
        PoolStatus {
            enabled: pool.desired > 0,
            desired: pool.desired,
            ready: pool.ready_count(),
            creating: pool.creating(),
            failed: pool.failed(),
        }
    }
}
