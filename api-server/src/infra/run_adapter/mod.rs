//! The `RunAdapter` concern: how a run's workload (runner + sidecar) is started, stopped and cleaned up.
//! Local processes by default (§13.1); Docker containers with `RUN_ADAPTER=docker`.

mod process;

use async_trait::async_trait;

pub use process::ProcessAdapter;

/// Everything a workload needs. The adapter adds what depends on where the sidecar listens
/// (`SIDECAR_URL`, `HTTP(S)_PROXY`, `NO_PROXY`, `MODEL_BASE_URL`) and the process basics.
pub struct WorkloadSpec {
    pub run_id: String,
    /// The runner contract (§15.1) without the sidecar-dependent variables.
    pub env: Vec<(String, String)>,
    /// `openai` or `anthropic`: `MODEL_BASE_URL` is `<SIDECAR_URL>/llm/<provider>`.
    pub llm_provider: &'static str,
    pub sidecar: sidecar::config::SidecarConfig,
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
}
