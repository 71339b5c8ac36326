//! Process adapter (§13.1): the runner as a child process with a cleared environment, its own process
//! group and workspace, and the sidecar in-process on loopback. No isolation: trusted hosts only.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{RunAdapter, Workload, WorkloadSpec};

const TAIL_LINES: usize = 200;
/// How long `wait` waits, once the runner exited, for its stdout and stderr to be read to the end (a
/// grandchild holding the pipes open is not waited for longer).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ProcessAdapter {
    runner_bin: Option<PathBuf>,
    data_dir: PathBuf,
    /// `ALLOW_UNISOLATED_BASH`: runners get `AGENT_BASH=true`.
    bash: bool,
}

/// `RUNNER_BIN`, else `appstrate-runner` next to the current executable, else on `PATH`.
pub fn locate_binary(explicit: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

impl ProcessAdapter {
    pub fn new(runner_bin: Option<&Path>, data_dir: &Path) -> Self {
        Self {
            runner_bin: locate_binary(runner_bin, "appstrate-runner"),
            data_dir: data_dir.to_path_buf(),
            bash: false,
        }
    }

    /// Offers agents `bash` on this host, without isolation (`ALLOW_UNISOLATED_BASH`).
    pub fn with_unisolated_bash(mut self, enabled: bool) -> Self {
        self.bash = enabled;
        self
    }

    fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }
}

fn kill_group(pid: u32, signal: i32) {
    // The runner leads its own process group, so the group id is its pid.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

struct ProcessWorkload {
    child: Child,
    pid: Option<u32>,
    exited: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// The stdout and stderr readers feeding `tail`.
    readers: Vec<tokio::task::JoinHandle<()>>,
    sidecar: Option<sidecar::RunningSidecar>,
    workspace: PathBuf,
    pid_dir: PathBuf,
}

#[async_trait]
impl Workload for ProcessWorkload {
    async fn wait(&mut self) -> i32 {
        let status = self.child.wait().await;
        self.exited.store(true, Ordering::SeqCst);
        // The last lines (often the reason of a failure) may still be in the pipes: read them to the end
        // before anyone asks for the tail.
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for reader in self.readers.drain(..) {
            if tokio::time::timeout_at(deadline, reader).await.is_err() {
                tracing::debug!("runner output still open after exit; its tail may be incomplete");
            }
        }
        match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            }
            Err(_) => 137,
        }
    }

    fn stop(&self) {
        let Some(pid) = self.pid else { return };
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        kill_group(pid, libc::SIGTERM);
        let exited = self.exited.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if !exited.load(Ordering::SeqCst) {
                kill_group(pid, libc::SIGKILL);
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
        self.pid
    }

    async fn teardown(&mut self) {
        if !self.exited.load(Ordering::SeqCst) {
            if let Some(pid) = self.pid {
                kill_group(pid, libc::SIGKILL);
            }
            let _ = self.child.wait().await;
            self.exited.store(true, Ordering::SeqCst);
        }
        if let Some(sc) = self.sidecar.take() {
            sc.shutdown().await;
        }
        let _ = tokio::fs::remove_dir_all(&self.workspace).await;
        let _ = tokio::fs::remove_dir_all(&self.pid_dir).await;
    }
}

fn collect_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    })
}

#[async_trait]
impl RunAdapter for ProcessAdapter {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn bash(&self) -> &'static str {
        if self.bash {
            "unisolated"
        } else {
            "off"
        }
    }

    fn available(&self) -> Result<(), String> {
        match &self.runner_bin {
            Some(_) => Ok(()),
            None => Err(
                "the runner binary appstrate-runner was not found (set RUNNER_BIN or install it next to appstrate)"
                    .into(),
            ),
        }
    }

    async fn start(&self, mut spec: WorkloadSpec) -> Result<Box<dyn Workload>, String> {
        let runner = self
            .runner_bin
            .clone()
            .ok_or_else(|| self.available().unwrap_err())?;
        let workspace = std::env::temp_dir().join(format!("appstrate-ws-{}", spec.run_id));
        std::fs::create_dir_all(&workspace).map_err(|e| format!("workspace: {e}"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o700));
        }
        let pid_dir = self.runs_dir().join(&spec.run_id);
        std::fs::create_dir_all(&pid_dir).map_err(|e| format!("run directory: {e}"))?;
        // The stdio MCP servers' files, for the in-process sidecar that launches them.
        for files in &spec.mcp_files {
            let dir = pid_dir.join("mcp").join(&files.name);
            super::mcp_files::unpack(&files.archive, &dir, files.entry_point.as_deref())
                .map_err(|e| format!("MCP server {}: {e}", files.name))?;
            if let Some(s) = spec
                .sidecar
                .mcp_servers
                .iter_mut()
                .find(|s| s.name == files.name)
            {
                s.dir = Some(dir.to_string_lossy().into_owned());
            }
        }
        spec.sidecar.workspace_dir = Some(workspace.to_string_lossy().into_owned());

        let sidecar = sidecar::Sidecar::start(sidecar::SidecarOptions::loopback())
            .await
            .map_err(|e| format!("sidecar: {e}"))?;
        let proxy_url = spec.authenticated_proxy_url(&sidecar.proxy_url());
        sidecar
            .configure(spec.sidecar)
            .map_err(|e| format!("sidecar configuration: {e}"))?;
        let sidecar_url = sidecar.api_url();

        let ws = workspace.to_string_lossy().into_owned();
        let mut cmd = Command::new(&runner);
        cmd.env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SIDECAR_URL", &sidecar_url)
            .env("HTTP_PROXY", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env(
                "MODEL_BASE_URL",
                format!("{sidecar_url}/llm/{}", spec.llm_provider),
            )
            .env("AGENT_BASH", if self.bash { "true" } else { "false" })
            .env("WORKSPACE_DIR", &ws)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &ws)
            .env("TMPDIR", &ws)
            .current_dir(&workspace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", runner.display()))?;
        let pid = child.id();
        if let Some(pid) = pid {
            let _ = std::fs::write(pid_dir.join("runner.pid"), pid.to_string());
        }
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect_lines(out, tail.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect_lines(err, tail.clone()));
        }
        Ok(Box::new(ProcessWorkload {
            child,
            pid,
            exited: Arc::new(AtomicBool::new(false)),
            tail,
            readers,
            sidecar: Some(sidecar),
            workspace,
            pid_dir,
        }))
    }

    async fn cleanup_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(self.runs_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Ok(raw) = std::fs::read_to_string(dir.join("runner.pid")) {
                if let Ok(pid) = raw.trim().parse::<u32>() {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains("appstrate-runner") {
                        tracing::warn!(pid, "killing a runner left by a previous server process");
                        kill_group(pid, libc::SIGKILL);
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(name) = dir.file_name() {
                let ws =
                    std::env::temp_dir().join(format!("appstrate-ws-{}", name.to_string_lossy()));
                let _ = std::fs::remove_dir_all(ws);
            }
        }
    }
}
