//! The `bash` tool: one command in the workspace, with a timeout, bounded output and its exit code.
//!
//! It is offered only where the platform says commands are isolated (`AGENT_BASH`: always in Docker
//! mode, in process mode only when the operator enables it) and a `bash` executable exists (the
//! `FROM scratch` runner image has none). The command runs in its own process group, which is killed
//! when the command ends or times out, so nothing it started outlives the call. Its environment is
//! built from scratch: no variable of the runner's contract reaches it except the proxy settings.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

pub const DEFAULT_TIMEOUT_SECONDS: u64 = 120;
pub const MAX_TIMEOUT_SECONDS: u64 = 600;
/// Of each stream, the model sees the first `HEAD` and the last `TAIL` bytes.
const HEAD: usize = 8 * 1024;
const TAIL: usize = 24 * 1024;

/// How `bash` commands are run in this run.
#[derive(Debug, Clone)]
pub struct Bash {
    pub shell: PathBuf,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

/// What a command did.
#[derive(Debug)]
pub struct BashResult {
    /// `None` when it was killed at the timeout.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// A stream's first and last bytes and its total length.
#[derive(Debug, Default)]
pub struct Captured {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    pub total: u64,
}

impl Captured {
    fn push(&mut self, mut chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.head.len() < HEAD {
            let n = (HEAD - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
        }
        self.tail.extend(chunk);
        while self.tail.len() > TAIL {
            self.tail.pop_front();
        }
    }

    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// The text shown to the model, with the omission stated.
    pub fn text(&self) -> String {
        let head = String::from_utf8_lossy(&self.head);
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let tail = String::from_utf8_lossy(&tail);
        if self.truncated() {
            let omitted = self.total - (self.head.len() + self.tail.len()) as u64;
            format!(
                "{head}\n[… {omitted} bytes omitted: output truncated to the first {} KiB and the last {} KiB of {} bytes …]\n{tail}",
                HEAD / 1024,
                TAIL / 1024,
                self.total
            )
        } else {
            format!("{head}{tail}")
        }
    }
}

/// The `bash` executable on `path` (a `PATH`-style list), if any.
pub fn find_shell(path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("bash"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The run's `bash`, when the platform allows commands (`AGENT_BASH`) and a `bash` executable exists.
/// Its environment: `PATH`, `HOME` (the workspace), `TMPDIR`, a UTF-8 locale, no terminal prompts, and
/// the proxy settings (the run's egress goes through its sidecar); nothing else of the runner's.
pub fn for_run(cfg: &crate::config::Config, ws: &super::Workspace) -> Option<Bash> {
    if !cfg.bash {
        return None;
    }
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let Some(shell) = find_shell(&path) else {
        eprintln!("[runner] AGENT_BASH is set but no bash executable is on PATH ({path}); the bash tool is not offered");
        return None;
    };
    protect_runner();
    let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("HOME".into(), cfg.workspace_dir.clone()),
        ("TMPDIR".into(), tmp),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
    ];
    for (names, value) in [
        (["HTTP_PROXY", "http_proxy"], &cfg.http_proxy),
        (["HTTPS_PROXY", "https_proxy"], &cfg.https_proxy),
        (["NO_PROXY", "no_proxy"], &cfg.no_proxy),
    ] {
        for n in names {
            env.push((n.into(), value.clone()));
        }
    }
    Some(Bash {
        shell,
        cwd: ws.root().to_path_buf(),
        env,
    })
}

/// Makes the runner non-dumpable: a command it runs (same user) can then read neither its
/// `/proc/<pid>/environ` (where a container's runner holds the sink secret) nor its memory.
fn protect_runner() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's dumpable flag.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if r != 0 {
        eprintln!(
            "[runner] PR_SET_DUMPABLE failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Kills a command's process group when dropped: at the end of the call, and also when the call is
/// abandoned (the run's timeout or SIGTERM drop the agent loop), so nothing a command started outlives
/// the runner, even in process mode where no container goes away with it.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 != 0 {
            // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
            unsafe {
                libc::kill(-(self.0 as i32), libc::SIGKILL);
            }
        }
    }
}

async fn drain(mut r: impl tokio::io::AsyncRead + Unpin) -> Captured {
    let mut c = Captured::default();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        c.push(&buf[..n]);
    }
    c
}

impl Bash {
    /// Runs `command` with `bash -c` in the workspace; killed (with its process group) after `timeout`.
    pub async fn run(&self, command: &str, timeout: Duration) -> Result<BashResult, String> {
        let mut child = tokio::process::Command::new(&self.shell)
            .arg("-c")
            .arg(command)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.shell.display()))?;
        let group = GroupGuard(child.id().unwrap_or(0));
        let out = tokio::spawn(drain(child.stdout.take().expect("piped stdout")));
        let err = tokio::spawn(drain(child.stderr.take().expect("piped stderr")));
        let (exit_code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => (
                Some(status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                })),
                false,
            ),
            Ok(Err(e)) => return Err(format!("waiting for the command: {e}")),
            Err(_) => (None, true),
        };
        // Whatever the command left running (background jobs) goes with it; then the pipes close.
        drop(group);
        let _ = child.wait().await;
        let grace = Duration::from_secs(2);
        let stdout = tokio::time::timeout(grace, out)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = tokio::time::timeout(grace, err)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Ok(BashResult {
            exit_code,
            timed_out,
            stdout,
            stderr,
        })
    }
}

impl BashResult {
    /// The result as the model reads it.
    pub fn render(&self, timeout: Duration) -> String {
        let mut s = match self.exit_code {
            Some(c) => format!("exit code: {c}\n"),
            None => format!(
                "timed out after {}s: the command was killed (set timeout_seconds, at most {MAX_TIMEOUT_SECONDS}, for longer commands)\n",
                timeout.as_secs()
            ),
        };
        for (name, c) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if c.total > 0 {
                s.push_str(&format!("--- {name} ---\n"));
                s.push_str(&c.text());
                if !s.ends_with('\n') {
                    s.push('\n');
                }
            }
        }
        if self.stdout.total == 0 && self.stderr.total == 0 {
            s.push_str("(no output)\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_keeps_head_and_tail_and_says_so() {
        let mut c = Captured::default();
        c.push(&vec![b'a'; HEAD]);
        c.push(&vec![b'b'; 100_000]);
        c.push(b"END");
        assert!(c.truncated());
        let t = c.text();
        assert!(t.starts_with(&"a".repeat(HEAD)));
        assert!(t.ends_with("bbbEND"));
        assert!(t.contains("bytes omitted"), "{}", &t[HEAD..HEAD + 200]);
        let mut small = Captured::default();
        small.push(b"hi\n");
        assert!(!small.truncated());
        assert_eq!(small.text(), "hi\n");
    }

    #[tokio::test]
    async fn runs_times_out_and_kills_the_group() {
        let Some(shell) = find_shell("/usr/bin:/bin") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let b = Bash {
            shell,
            cwd: dir.path().to_path_buf(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        };
        let r = b
            .run("echo out; echo err >&2; exit 3", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout.text(), "out\n");
        assert_eq!(r.stderr.text(), "err\n");
        // A background job holding the pipes does not keep the call waiting.
        let t = std::time::Instant::now();
        let r = b
            .run("sleep 30 & echo started", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert!(t.elapsed() < Duration::from_secs(5));
        let r = b.run("sleep 30", Duration::from_millis(300)).await.unwrap();
        assert!(r.timed_out && r.exit_code.is_none());
        assert!(r
            .render(Duration::from_secs(1))
            .starts_with("timed out after 1s"));
        // An abandoned call (the run's own timeout) still kills what the command started.
        let marker = dir.path().join("pid");
        let cmd = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            b.run(&cmd, Duration::from_secs(60)),
        )
        .await;
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its reaper.
        assert!(state.is_empty() || state.contains(") Z "), "{state}");
    }
}
