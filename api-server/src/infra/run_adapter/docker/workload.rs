//! One run's sandbox (§13.2): taken from a ready run slot when one fits, else created on the hot path
//! (network, sidecar, agent). What was created or taken is recorded, so teardown releases exactly that.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest,
    NetworkDisconnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RenameContainerOptions, StopContainerOptions,
};
use futures::StreamExt;

use super::sidecar::SidecarHandle;
use super::slots::Slot;
use super::{engine, Inner, EXEC_PREFIX, RUN_LABEL, TAIL_LINES};
use crate::infra::run_adapter::{Workload, WorkloadSpec};

/// Where a runner reaches its sidecar inside the run network.
pub(super) const SIDECAR_URL: &str = "http://sidecar:8080";

/// The agent container's own environment when it waits in a slot: nothing run-specific, no secret.
pub(super) fn slot_agent_env(wait_secs: u64) -> Vec<String> {
    vec![
        format!("SIDECAR_URL={SIDECAR_URL}"),
        "NO_PROXY=sidecar".to_string(),
        format!("RUNNER_CONFIG_URL={SIDECAR_URL}/agent-config"),
        format!("RUNNER_CONFIG_WAIT_SECONDS={wait_secs}"),
        "WORKSPACE_DIR=/workspace".to_string(),
        "HOME=/workspace".to_string(),
        "TMPDIR=/tmp".to_string(),
    ]
}

/// The whole runner contract of a run in a container: the spec's variables plus the ones that depend
/// on the sidecar being reachable as `sidecar` on the run network.
fn run_env(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let proxy_url = spec.authenticated_proxy_url("http://sidecar:8081");
    let mut env = spec.env.clone();
    env.extend(
        [
            ("SIDECAR_URL", SIDECAR_URL.to_string()),
            ("HTTP_PROXY", proxy_url.clone()),
            ("HTTPS_PROXY", proxy_url),
            ("NO_PROXY", "sidecar".to_string()),
            (
                "MODEL_BASE_URL",
                format!("{SIDECAR_URL}/llm/{}", spec.llm_provider),
            ),
            ("WORKSPACE_DIR", "/workspace".to_string()),
            ("HOME", "/workspace".to_string()),
            ("TMPDIR", "/tmp".to_string()),
            // Commands are isolated in the agent container: `bash` is offered when the image has one.
            ("AGENT_BASH", "true".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    env
}

impl Inner {
    /// The internal run network `name`. `internal` removes the route out of the host, but the host
    /// itself stays reachable through the bridge's gateway address (any service listening on 0.0.0.0
    /// or on another bridge's address, e.g. the API): without an address on the bridge
    /// (`inhibit_ipv4`) the host is unreachable, while the agent and its sidecar still talk on it.
    pub(super) async fn create_run_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), String> {
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                internal: Some(true),
                labels: Some(labels),
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.inhibit_ipv4".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("creating network {name}: {e}"))
    }

    /// Connects a sidecar to a run network under the alias `sidecar`.
    pub(super) async fn connect_sidecar(
        &self,
        net: &str,
        sc: &SidecarHandle,
    ) -> Result<(), String> {
        self.docker
            .connect_network(
                net,
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
    }

    /// Creates (does not start) the hardened agent container `name`, only on `net` (alias `agent`).
    /// Its `/workspace` is its own tmpfs, or `workspace_volume` when an MCP server shares it.
    pub(super) async fn create_agent(
        &self,
        name: &str,
        net: &str,
        env: Vec<String>,
        (memory_mb, cpus): (u64, f64),
        mut labels: HashMap<String, String>,
        workspace_volume: Option<&str>,
    ) -> Result<String, String> {
        let s = &self.settings;
        let memory = (memory_mb as i64) * 1024 * 1024;
        labels.insert("appstrate.role".into(), "agent".into());
        let mut tmpfs = HashMap::from([
            (
                "/workspace".to_string(),
                format!(
                    "size={}m,uid=65534,gid=65534,mode=0700",
                    s.workspace_tmpfs_mb
                ),
            ),
            ("/tmp".to_string(), "size=64m".to_string()),
        ]);
        if workspace_volume.is_some() {
            tmpfs.remove("/workspace");
        }
        let host_config = HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((cpus * 1e9) as i64),
            pids_limit: Some(256),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            mounts: workspace_volume.map(|v| vec![super::mcp::workspace_mount(v, false)]),
            network_mode: Some(net.to_string()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(s.agent_image.clone()),
            user: Some("65534:65534".into()),
            env: Some(env),
            working_dir: Some("/workspace".into()),
            labels: Some(labels),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net.to_string(),
                    EndpointSettings {
                        aliases: Some(vec!["agent".into()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map(|c| c.id)
            .map_err(|e| format!("creating {name}: {e}"))
    }
}

/// One run's containers and network.
pub(super) struct DockerWorkload {
    pub(super) inner: Arc<Inner>,
    network: Option<String>,
    /// The workspace volume shared with a stdio MCP server.
    volume: Option<String>,
    sidecar: Option<SidecarHandle>,
    /// The agent container's id.
    agent: Option<String>,
    exited: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl DockerWorkload {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            network: None,
            volume: None,
            sidecar: None,
            agent: None,
            exited: Arc::new(AtomicBool::new(false)),
            tail: Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES))),
        }
    }

    /// A ready slot when one fits the run's limits, else the fresh path. A run with stdio MCP servers
    /// always takes the fresh path: its sidecar comes from `SIDECAR_MCP_IMAGE` with the servers' files.
    pub(super) async fn launch(&mut self, mut spec: WorkloadSpec) -> Result<(), String> {
        let inner = self.inner.clone();
        if super::mcp::has_stdio(&spec) {
            let tar = super::mcp::prepare(&mut spec)?;
            let shared = super::mcp::shared_workspace(&spec);
            if shared.is_some() {
                self.volume = Some(inner.create_workspace_volume(&spec.run_id).await?);
                spec.sidecar.workspace_dir = Some(super::mcp::WORKSPACE_DIR.into());
            }
            let volume = self.volume.clone();
            let mcp = super::mcp::McpSidecar {
                tar: &tar,
                workspace: volume.as_deref().zip(shared),
            };
            return self.launch_fresh(spec, Some(&mcp)).await;
        }
        if let Some(slot) = inner.slots.take(spec.memory_mb, spec.cpus) {
            inner.publish_slot_state();
            match self.launch_in_slot(&slot, &spec).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(slot = %slot.id, run_id = %spec.run_id, error = %e, "a run slot could not be configured; creating a fresh sandbox");
                    inner.slot_failed();
                    self.network = None;
                    self.sidecar = None;
                    self.agent = None;
                    inner.destroy_slot(&slot).await;
                }
            }
        }
        self.launch_fresh(spec, None).await
    }

    /// The slot's sidecar is configured with the run, including the agent's part, which its waiting
    /// runner fetches at once: the run starts without creating anything.
    async fn launch_in_slot(&mut self, slot: &Slot, spec: &WorkloadSpec) -> Result<(), String> {
        let inner = self.inner.clone();
        let started = Instant::now();
        self.network = Some(slot.network.clone());
        self.sidecar = Some(slot.sidecar.clone());
        self.agent = Some(slot.agent_id.clone());
        let mut config = spec.sidecar.clone();
        config.agent = Some(::sidecar::AgentConfig {
            address: slot.agent_ip.clone(),
            env: run_env(spec).into_iter().collect::<BTreeMap<_, _>>(),
        });
        inner.configure(&slot.sidecar, &config).await?;
        inner.metrics.acquired("pool", started.elapsed());
        tracing::debug!(slot = %slot.id, run_id = %spec.run_id, "run slot acquired");
        self.follow_logs(&slot.agent_id);
        // The run's names, for operators (`docker exec appstrate-agent-<runId>`); off the hot path.
        let docker = inner.docker.clone();
        let renames = [
            (
                slot.agent_id.clone(),
                format!("appstrate-agent-{}", spec.run_id),
            ),
            (
                slot.sidecar.id.clone(),
                format!("appstrate-sidecar-{}", spec.run_id),
            ),
        ];
        tokio::spawn(async move {
            for (id, name) in renames {
                if let Err(e) = docker
                    .rename_container(&id, RenameContainerOptions { name })
                    .await
                {
                    tracing::debug!(container = %id, error = %e, "renaming a slot container");
                }
            }
        });
        Ok(())
    }

    /// Steps 1–4 of §13.2 on the hot path; what was created so far is recorded for teardown.
    async fn launch_fresh(
        &mut self,
        spec: WorkloadSpec,
        mcp: Option<&super::mcp::McpSidecar<'_>>,
    ) -> Result<(), String> {
        let inner = self.inner.clone();
        let run_id = spec.run_id.clone();
        let mut labels = inner.base_labels();
        labels.insert(RUN_LABEL.into(), run_id.clone());

        // 1–2. The run network and a fresh sidecar, configured, at the same time.
        let net = format!("{EXEC_PREFIX}{run_id}");
        let (net_res, sc_res) = tokio::join!(
            inner.create_run_network(&net, labels.clone()),
            inner.fresh_sidecar(&run_id, &spec.sidecar, mcp)
        );
        if net_res.is_ok() {
            self.network = Some(net.clone());
        }
        if let Ok(sc) = &sc_res {
            self.sidecar = Some(sc.clone());
        }
        net_res?;
        let sc = sc_res?;

        // 3. The agent container, only on the run network, created while the sidecar joins it.
        let env = run_env(&spec)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let name = format!("appstrate-agent-{run_id}");
        let (connected, created) = tokio::join!(
            inner.connect_sidecar(&net, &sc),
            inner.create_agent(
                &name,
                &net,
                env,
                (spec.memory_mb, spec.cpus),
                labels,
                self.volume.as_deref()
            )
        );
        if let Ok(id) = &created {
            self.agent = Some(id.clone());
        }
        connected?;
        let id = created?;

        // 4. Start and follow the logs.
        inner
            .docker
            .start_container(&id, None)
            .await
            .map_err(|e| format!("starting {name}: {e}"))?;
        self.follow_logs(&id);
        Ok(())
    }

    fn follow_logs(&self, id: &str) {
        let mut logs = self.inner.docker.logs(
            id,
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
        if let Some(volume) = self.volume.take() {
            inner.remove_volume(&volume).await;
        }
        inner.slots.replenish();
    }
}
