//! The `RunAdapter` concern: how a run's workload (runner + sidecar) is started, stopped and cleaned up.
//! Local processes by default (§13.1); Docker containers with `RUN_ADAPTER=docker`.

pub mod docker;
mod mcp_files;
mod process;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{Config, RunAdapterKind};
use crate::infra::InfraError;
use crate::metrics::SidecarMetrics;

pub use docker::DockerAdapter;
pub use process::{locate_binary, ProcessAdapter};

/// Everything a workload needs. The adapter adds what depends on where the sidecar listens
/// (`SIDECAR_URL`, `HTTP(S)_PROXY`, `NO_PROXY`, `MODEL_BASE_URL`) and the process basics.
pub struct WorkloadSpec {
    pub run_id: String,
    /// The runner contract (§15.1) without the sidecar-dependent variables.
    pub env: Vec<(String, String)>,
    /// `openai` or `anthropic`: `MODEL_BASE_URL` is `<SIDECAR_URL>/llm/<provider>`.
    pub llm_provider: &'static str,
    pub sidecar: sidecar::config::SidecarConfig,
    /// Agent memory limit in MiB and CPUs (`_meta["dev.appstrate/resources"]`, clamped); Docker only.
    pub memory_mb: u64,
    pub cpus: f64,
    /// The files of the run's stdio MCP servers, one archive per `sidecar.mcp_servers` entry of the same
    /// name: the adapter unpacks them where the sidecar runs and sets each entry's `dir` (and the
    /// sidecar's `workspace_dir`).
    pub mcp_files: Vec<McpFiles>,
}

/// An `mcp-server` package archive to unpack for the sidecar.
pub struct McpFiles {
    /// The server's name (`sidecar.mcp_servers[].name`).
    pub name: String,
    pub archive: bytes::Bytes,
    /// `server.entry_point`, made executable once unpacked.
    pub entry_point: Option<String>,
}

impl WorkloadSpec {
    /// `HTTP(S)_PROXY` for the runner: the sidecar's forward proxy with the run token as the password
    /// (`http://run:<token>@host:port`), which HTTP clients send as `Proxy-Authorization: Basic`.
    pub fn authenticated_proxy_url(&self, proxy_url: &str) -> String {
        match proxy_url.split_once("://") {
            Some((scheme, rest)) => {
                format!("{scheme}://run:{}@{rest}", self.sidecar.run_token.expose())
            }
            None => proxy_url.to_string(),
        }
    }
}

/// The run slot pool as `/health` reports it (`run_slots`, and `sidecar_pool` for §13.3 clients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    pub enabled: bool,
    pub desired: usize,
    pub ready: usize,
    /// Slots being created right now.
    pub creating: usize,
    /// Slots that could not be created or failed a health check, since boot.
    pub failed: u64,
}

#[async_trait]
pub trait Workload: Send + Sync {
    /// Waits for the workload to exit and returns its exit code (signals as 128 + n).
    async fn wait(&mut self) -> i32;
    /// Asks the workload to stop: SIGTERM now, SIGKILL after 5 s.
    fn stop(&self);
    /// The last lines of diagnostics output.
    fn tail(&self) -> Vec<String>;
    fn pid(&self) -> Option<u32>;
    /// Releases everything the workload held (sidecar, workspace, pid file).
    async fn teardown(&mut self);
}

#[async_trait]
pub trait RunAdapter: Send + Sync {
    /// `process` or `docker`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    /// Whether runs can start at all (e.g. the runner binary exists).
    fn available(&self) -> Result<(), String>;
    async fn start(&self, spec: WorkloadSpec) -> Result<Box<dyn Workload>, String>;
    /// Removes what a previous process of this server left behind (boot, §5.2 step 6).
    async fn cleanup_orphans(&self);
    /// Boot steps 7–8: prepare what runs need (images, networks) and start background workers
    /// (the sidecar pool). Problems are logged and reported by [`RunAdapter::available`].
    async fn prepare(&self) {}
    /// Graceful shutdown, after the runs were stopped: release what the adapter holds (§5.3 step 4).
    async fn shutdown(&self) {}
    /// The engine's health for `/health.checks` (`None`: the adapter has no engine to check).
    async fn check(&self) -> Option<Result<(), String>> {
        None
    }
    fn pool_status(&self) -> PoolStatus {
        PoolStatus::default()
    }
    /// Where agents' `bash` commands run, as `/health.bash` reports it: `container` (Docker mode, when
    /// the agent image has a shell), `unisolated` (process mode with `ALLOW_UNISOLATED_BASH`) or `off`.
    fn bash(&self) -> &'static str {
        "off"
    }
    /// How the workload is called in an exit message: `process` or `container`.
    fn workload_noun(&self) -> &'static str {
        "process"
    }
}

/// Chooses the run adapter (§4.1). Docker mode connects to the engine now: an unreachable engine stops
/// boot with an error naming `DOCKER_SOCKET` and the troubleshooting steps.
pub async fn select(
    config: &Config,
    metrics: SidecarMetrics,
) -> Result<Arc<dyn RunAdapter>, InfraError> {
    match config.run_adapter {
        RunAdapterKind::Process => {
            tracing::debug!(
                concern = "run_adapter",
                r#impl = "process",
                "adapter selected"
            );
            if config.allow_unisolated_bash {
                tracing::warn!(
                    "ALLOW_UNISOLATED_BASH=true: agents get a `bash` tool that runs commands on this \
                     host with the server's user and no isolation (process mode); use RUN_ADAPTER=docker \
                     for untrusted agents"
                );
            }
            Ok(Arc::new(
                ProcessAdapter::new(config.runner_bin.as_deref(), &config.data_dir)
                    .with_unisolated_bash(config.allow_unisolated_bash),
            ))
        }
        RunAdapterKind::Docker => {
            let settings = docker::DockerSettings::from_config(config);
            let adapter = DockerAdapter::connect(settings, metrics)
                .await
                .map_err(|message| InfraError {
                    var: "DOCKER_SOCKET",
                    message,
                })?;
            Ok(Arc::new(adapter))
        }
    }
}
