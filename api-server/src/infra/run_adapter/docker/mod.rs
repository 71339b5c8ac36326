//! Docker adapter (§13.2, `RUN_ADAPTER=docker`): per run an internal network `appstrate-exec-{runId}`,
//! a sidecar (from the pool, or fresh) attached to `appstrate-egress` and to the run network, and the
//! hardened agent container attached only to the run network. Everything goes through the Docker Engine
//! API (bollard) on `DOCKER_SOCKET`; nothing is ever pulled.
//!
//! Every object carries `appstrate.managed=true` and `appstrate.instance=<id>` (derived from the
//! absolute `DATA_DIR`), so the boot and shutdown sweeps only touch this server's leftovers even when
//! several servers share one engine.

mod engine;
mod pool;
mod sidecar;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest,
    NetworkDisconnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, LogsOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

pub use engine::{is_static_elf, TROUBLESHOOTING};
use pool::Pool;
use sidecar::SidecarHandle;

use super::{PoolStatus, RunAdapter, Workload, WorkloadSpec};
use crate::config::Config;
use crate::metrics::SidecarMetrics;

pub const EGRESS_NETWORK: &str = "appstrate-egress";
pub const EXEC_PREFIX: &str = "appstrate-exec-";
pub const MANAGED_LABEL: &str = "appstrate.managed";
pub const INSTANCE_LABEL: &str = "appstrate.instance";
pub const RUN_LABEL: &str = "appstrate.run";
const TAIL_LINES: usize = 200;

/// What the adapter takes from the configuration.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    pub socket: String,
    pub agent_image: String,
    pub sidecar_image: String,
    pub pool_size: usize,
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
            pool_size: config.sidecar_pool_size as usize,
            control_host: config.sidecar_control_host.clone(),
            workspace_tmpfs_mb: config.workspace_tmpfs_size_mb,
            instance: instance_id(&config.data_dir),
            runner_bin: super::locate_binary(config.runner_bin.as_deref(), "appstrate-runner"),
            sidecar_bin: super::locate_binary(config.sidecar_bin.as_deref(), "appstrate-sidecar"),
            sidecar_log_level: config.log_level.clone(),
        }
    }
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
    pool: Pool,
    metrics: SidecarMetrics,
    /// Why runs cannot start (missing image, engine down); `None` when they can.
    unavailable: Mutex<Option<String>>,
    images_ok: AtomicBool,
    pool_started: AtomicBool,
    /// The pool's background task, awaited at shutdown so that no sidecar is created after the sweep.
    pool_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    /// Starts the pool's background task once (when the pool is enabled).
    fn start_pool(self: &Arc<Self>) {
        if self.pool.desired > 0
            && !self.pool.is_closed()
            && !self.pool_started.swap(true, Ordering::SeqCst)
        {
            let task = tokio::spawn(pool::maintain(self.clone()));
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

    /// A pooled sidecar configured for the run, or a fresh one (§13.2 step 2).
    async fn acquire_sidecar(
        &self,
        run_id: &str,
        config: &::sidecar::SidecarConfig,
    ) -> Result<SidecarHandle, String> {
        let started = Instant::now();
        if let Some(sc) = self.pool.take() {
            self.metrics.pool_ready.set(self.pool.ready_count() as i64);
            match self.configure(&sc, config).await {
                Ok(()) => {
                    self.metrics.acquired("pool", started.elapsed());
                    return Ok(sc);
                }
                Err(e) => {
                    tracing::debug!(sidecar = %sc.name, error = %e, "pool sidecar configure failed; using a fresh one");
                    self.remove_container(&sc.id).await;
                }
            }
        }
        let name = format!("appstrate-sidecar-{run_id}");
        let labels = HashMap::from([(RUN_LABEL.to_string(), run_id.to_string())]);
        let sc = self.create_sidecar(&name, labels).await?;
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
        metrics.pool_desired.set(settings.pool_size as i64);
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
                pool: Pool::new(settings.pool_size),
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
        let inner = self.inner.clone();
        let mut w = DockerWorkload {
            inner: inner.clone(),
            network: None,
            sidecar: None,
            agent: None,
            exited: Arc::new(AtomicBool::new(false)),
            tail: Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES))),
        };
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
        let pooled = inner.pool.close();
        // A sidecar the pool is creating right now is removed by the task itself once it sees the
        // pool closed; wait for that before sweeping, or the sidecar would outlive the server.
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
                tracing::warn!("the sidecar pool did not stop within 15 s");
            }
        }
        futures::future::join_all(pooled.iter().map(|sc| inner.remove_container(&sc.id))).await;
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
        let pool = &self.inner.pool;
        PoolStatus {
            enabled: pool.desired > 0,
            desired: pool.desired,
            ready: pool.ready_count(),
        }
    }
}

/// One run's containers and network.
struct DockerWorkload {
    inner: Arc<Inner>,
    network: Option<String>,
    sidecar: Option<SidecarHandle>,
    /// The agent container's id.
    agent: Option<String>,
    exited: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl DockerWorkload {
    /// Steps 1–4 of §13.2; what was created so far is recorded for teardown.
    async fn launch(&mut self, spec: WorkloadSpec) -> Result<(), String> {
        let inner = self.inner.clone();
        let s = &inner.settings;
        let run_id = spec.run_id.clone();
        let mut labels = inner.base_labels();
        labels.insert(RUN_LABEL.into(), run_id.clone());

        // 1. The internal run network. `internal` removes the route out of the host, but the host itself
        // stays reachable through the bridge's gateway address (any service listening on 0.0.0.0 or on
        // another bridge's address, e.g. the API): without an address on the bridge (`inhibit_ipv4`) the
        // host is unreachable, while the agent and its sidecar still talk on the bridge.
        let net = format!("{EXEC_PREFIX}{run_id}");
        let create_net = inner
            .docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: net.clone(),
                driver: Some("bridge".into()),
                internal: Some(true),
                labels: Some(labels.clone()),
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.inhibit_ipv4".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            });
        // 2. The sidecar (pooled or fresh), configured, while the network is being created.
        let (net_res, sc_res) =
            tokio::join!(create_net, inner.acquire_sidecar(&run_id, &spec.sidecar));
        if net_res.is_ok() {
            self.network = Some(net.clone());
        }
        if let Ok(sc) = &sc_res {
            self.sidecar = Some(sc.clone());
        }
        net_res.map_err(|e| format!("creating network {net}: {e}"))?;
        let sc = sc_res?;
        let connect_sidecar = async {
            inner
                .docker
                .connect_network(
                    &net,
                    NetworkConnectRequest {
                        container: sc.id.clone(),
                        endpoint_config: Some(EndpointSettings {
                            aliases: Some(vec!["sidecar".into()]),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(|e| format!("connecting sidecar {} to {net}: {e}", sc.name))
        };

        // 3. The agent container, only on the run network.
        let sidecar_url = "http://sidecar:8080";
        let proxy_url = spec.authenticated_proxy_url("http://sidecar:8081");
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend([
            format!("SIDECAR_URL={sidecar_url}"),
            format!("HTTP_PROXY={proxy_url}"),
            format!("HTTPS_PROXY={proxy_url}"),
            "NO_PROXY=sidecar".to_string(),
            format!("MODEL_BASE_URL={sidecar_url}/llm/{}", spec.llm_provider),
            "WORKSPACE_DIR=/workspace".to_string(),
            "HOME=/workspace".to_string(),
            "TMPDIR=/tmp".to_string(),
        ]);
        let memory = (spec.memory_mb as i64) * 1024 * 1024;
        let mut agent_labels = labels.clone();
        agent_labels.insert("appstrate.role".into(), "agent".into());
        let host_config = HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.cpus * 1e9) as i64),
            pids_limit: Some(256),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([
                (
                    "/workspace".to_string(),
                    format!(
                        "size={}m,uid=65534,gid=65534,mode=0700",
                        s.workspace_tmpfs_mb
                    ),
                ),
                ("/tmp".to_string(), "size=64m".to_string()),
            ])),
            network_mode: Some(net.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(s.agent_image.clone()),
            user: Some("65534:65534".into()),
            env: Some(env),
            working_dir: Some("/workspace".into()),
            labels: Some(agent_labels),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net.clone(),
                    EndpointSettings {
                        aliases: Some(vec!["agent".into()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let name = format!("appstrate-agent-{run_id}");
        // 3b. Created while the sidecar joins the run network; started once both are done.
        let create_agent = inner.docker.create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        );
        let (connected, created) = tokio::join!(connect_sidecar, create_agent);
        if let Ok(c) = &created {
            self.agent = Some(c.id.clone());
        }
        connected?;
        let created = created.map_err(|e| format!("creating {name}: {e}"))?;

        // 4. Start and follow the logs.
        inner
            .docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| format!("starting {name}: {e}"))?;
        let mut logs = inner.docker.logs(
            &created.id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let tail = self.tail.clone();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = logs.next().await {
                let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                for line in text.lines() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.to_string());
                }
            }
        });
        Ok(())
    }
}

#[async_trait]
impl Workload for DockerWorkload {
    async fn wait(&mut self) -> i32 {
        let Some(id) = self.agent.clone() else {
            return 137;
        };
        let docker = &self.inner.docker;
        let mut attempts = 0;
        let code = loop {
            let mut stream = docker.wait_container(&id, None);
            match stream.next().await {
                Some(Ok(r)) => break r.status_code as i32,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    break code as i32
                }
                Some(Err(e)) if engine::is_not_found(&e) => break 137,
                other => {
                    // A broken wait (engine hiccup): ask for the state instead.
                    attempts += 1;
                    if let Some(Err(e)) = &other {
                        tracing::warn!(container = %id, error = %e, "waiting for the agent container failed");
                    }
                    match docker.inspect_container(&id, None).await {
                        Err(e) if engine::is_not_found(&e) => break 137,
                        Ok(info) => {
                            let state = info.state.unwrap_or_default();
                            if state.running != Some(true) && state.status.is_some() {
                                break state.exit_code.unwrap_or(137) as i32;
                            }
                        }
                        Err(_) if attempts > 10 => break 137,
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.exited.store(true, Ordering::SeqCst);
        code
    }

    fn stop(&self) {
        let Some(id) = self.agent.clone() else { return };
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        let docker = self.inner.docker.clone();
        tokio::spawn(async move {
            let opts = StopContainerOptions {
                t: Some(5),
                ..Default::default()
            };
            if let Err(e) = docker.stop_container(&id, Some(opts)).await {
                tracing::debug!(container = %id, error = %e, "stopping the agent container");
            }
        });
    }

    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    /// Agent → sidecar → run network, in that order; errors are logged, never raised.
    async fn teardown(&mut self) {
        let inner = self.inner.clone();
        if let Some(id) = self.agent.take() {
            if !self.exited.load(Ordering::SeqCst) {
                let opts = StopContainerOptions {
                    t: Some(5),
                    ..Default::default()
                };
                let _ = inner.docker.stop_container(&id, Some(opts)).await;
            }
            inner.remove_container(&id).await;
        }
        if let Some(sc) = self.sidecar.take() {
            if let Some(net) = &self.network {
                let _ = inner
                    .docker
                    .disconnect_network(
                        net,
                        NetworkDisconnectRequest {
                            container: sc.id.clone(),
                            force: Some(true),
                        },
                    )
                    .await;
            }
            inner.remove_container(&sc.id).await;
        }
        if let Some(net) = self.network.take() {
            inner.remove_network(&net).await;
        }
        inner.pool.replenish();
    }
}
