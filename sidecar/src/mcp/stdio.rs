//! Launching a stdio MCP server and connecting rmcp's client to it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::ServiceExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::config::{McpServer, Transport};
use super::Upstream;

/// Lines of the server's stderr kept for the start error.
const TAIL_LINES: usize = 10;
const TAIL_LINE_BYTES: usize = 512;

/// `PATH` of a stdio server: the image's usual directories.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The program to run: absolute; relative with a `/` (resolved in `dir`); else a bare name for `PATH`.
fn program(command: &str, dir: Option<&str>) -> PathBuf {
    let p = Path::new(command);
    match dir {
        Some(d) if !p.is_absolute() && command.contains('/') => Path::new(d).join(p),
        _ => p.to_path_buf(),
    }
}

/// Kills a server and its process group (it leads one: see `process_group(0)` below).
pub(crate) fn kill(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: a plain signal to the group the server leads (its pid is the group id).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
}

/// Replaces every secret value with `[redacted]` (a server may print its environment).
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// Spawns the server (its child goes into `slot`) and completes the MCP handshake within `timeout`.
pub(crate) async fn start(
    server: &McpServer,
    workspace: Option<&str>,
    timeout: Duration,
    slot: &Arc<Mutex<Option<tokio::process::Child>>>,
) -> Result<Upstream, String> {
    let Transport::Stdio {
        command,
        args,
        dir,
        share_workspace,
        workspace_access,
        env,
    } = &server.transport
    else {
        return Err("not a stdio server".into());
    };
    let dir = dir.as_deref();
    let cwd = match (share_workspace, workspace) {
        (true, Some(ws)) => Some(ws),
        (true, None) => {
            return Err("it asks for the run workspace, but this run has none".into());
        }
        (false, _) => dir,
    };
    let dirname = dir.unwrap_or(".");
    let mut cmd = Command::new(program(&command.replace("${__dirname}", dirname), dir));
    cmd.args(args.iter().map(|a| a.replace("${__dirname}", dirname)))
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", cwd.or(dir).unwrap_or("/tmp"))
        .env("TMPDIR", std::env::temp_dir())
        .envs(env.iter().map(|(k, v)| (k, v.expose())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that teardown also ends what it started (a `node` server's
        // children, a wrapper script's program).
        .process_group(0)
        .kill_on_drop(true);
    if *share_workspace {
        if let Some(ws) = workspace {
            cmd.env("WORKSPACE_DIR", ws);
            cmd.env(
                "WORKSPACE_ACCESS",
                workspace_access.as_deref().unwrap_or("read-write"),
            );
        }
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
    let (Some(stdout), Some(stdin), stderr) =
        (child.stdout.take(), child.stdin.take(), child.stderr.take())
    else {
        return Err("its standard streams could not be opened".into());
    };
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let reader = stderr.map(|e| tokio::spawn(collect(e, tail.clone(), server.name.clone())));
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);

    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("appstrate-sidecar", env!("CARGO_PKG_VERSION")),
    );
    let outcome = tokio::time::timeout(timeout, info.serve((stdout, stdin))).await;
    let why = match outcome {
        Ok(Ok(client)) => return Ok(client),
        Ok(Err(e)) => format!("the MCP handshake failed: {e}"),
        Err(_) => format!(
            "it did not complete the MCP handshake within {} s",
            timeout.as_secs()
        ),
    };
    // The reason is usually on stderr: let the reader catch the last lines of an exited server.
    let exited = {
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(c) => {
                let status = c.try_wait().ok().flatten();
                kill(c);
                status
            }
            None => None,
        }
    };
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
    }
    let lines: Vec<String> = tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let mut msg = why;
    if let Some(status) = exited {
        msg.push_str(&format!(" (it exited: {status})"));
    }
    if !lines.is_empty() {
        msg.push_str(&format!("; stderr: {}", lines.join(" | ")));
    }
    Err(scrub(&msg, &server.secrets()))
}

/// Keeps the last lines of the server's stderr (each also logged at debug, scrubbed by the caller).
async fn collect(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    name: String,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > TAIL_LINE_BYTES {
            let mut end = TAIL_LINE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        tracing::debug!(server = %name, "mcp server wrote to stderr");
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_and_scrubbing() {
        assert_eq!(program("node", Some("/pkg")), PathBuf::from("node"));
        assert_eq!(
            program("./bin/srv", Some("/pkg")),
            PathBuf::from("/pkg/./bin/srv")
        );
        assert_eq!(
            program("/usr/bin/x", Some("/pkg")),
            PathBuf::from("/usr/bin/x")
        );
        assert_eq!(
            scrub("token=abcd1234 again abcd1234", &["abcd1234".into()]),
            "token=[redacted] again [redacted]"
        );
    }
}
