//! The release `appstrate` binary as a child process in a fresh temporary directory (Tier 0: SQLite in
//! `./data`, filesystem storage, in-memory queue, pub/sub and rate limiter).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

use super::proc::{memory, Memory};

/// 32 bytes (0..=31) in base64: a valid `CONNECTION_ENCRYPTION_KEY` for benchmarks.
pub const BENCH_ENCRYPTION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// How often boot polls `/health`.
pub const POLL_EVERY: Duration = Duration::from_millis(2);

/// The workspace root (the bench is built from it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `<repo>/system-packages`.
pub fn system_packages_dir() -> PathBuf {
    repo_root().join("system-packages")
}

/// How many entries (package archives or directories) `dir` holds, hidden files aside.
pub fn count_packages(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// The target directory the bench itself was built into (`…/target`), and whether the bench is a
/// release build.
pub fn own_target_dir() -> anyhow::Result<(PathBuf, bool)> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut dir = exe.parent().context("bench executable has no parent")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let target = dir.parent().context("profile dir has no parent")?;
    Ok((target.to_path_buf(), release))
}

/// The newest modification time among `paths` (files, or directories walked recursively) under `repo`.
fn newest_source(repo: &Path, paths: &[&str]) -> Option<SystemTime> {
    fn walk(p: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.filter_map(Result::ok) {
                    walk(&e.path(), newest);
                }
            }
        } else if let Ok(m) = meta.modified() {
            if newest.is_none_or(|n| m > n) {
                *newest = Some(m);
            }
        }
    }
    let mut newest = None;
    for p in paths {
        walk(&repo.join(p), &mut newest);
    }
    newest
}

/// The release `appstrate` binary in the bench's own target directory. It is built (with cargo's
/// progress on the terminal) when missing, or when a source of the API server is newer than it.
pub fn locate_or_build_binary() -> anyhow::Result<PathBuf> {
    locate_or_build(
        "appstrate",
        "api-server",
        &[
            "api-server/src",
            "api-server/Cargo.toml",
            "sidecar/src",
            "sidecar/Cargo.toml",
            "migrations",
            "Cargo.lock",
        ],
    )
}

/// The release `appstrate-runner` binary, built like [`locate_or_build_binary`] when missing or older
/// than the runner's sources.
pub fn locate_or_build_runner() -> anyhow::Result<PathBuf> {
    locate_or_build(
        "appstrate-runner",
        "runner",
        &["runner/src", "runner/Cargo.toml", "Cargo.lock"],
    )
}

/// `target/release/<name>`, built with `cargo build --release -p <package>` when missing or older than
/// one of `sources`.
pub fn locate_or_build(name: &str, package: &str, sources: &[&str]) -> anyhow::Result<PathBuf> {
    let (target, _) = own_target_dir()?;
    let binary = target.join("release").join(name);
    let repo = repo_root();
    let reason = match std::fs::metadata(&binary).and_then(|m| m.modified()) {
        Err(_) => Some("missing".to_string()),
        Ok(built) => match newest_source(&repo, sources) {
            Some(src) if src > built && repo.join("Cargo.toml").exists() => {
                Some(format!("older than the {package} sources"))
            }
            _ => None,
        },
    };
    if let Some(reason) = reason {
        eprintln!(
            "bench: {} is {reason}; running `cargo build --release -p {package}` …",
            binary.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", package])
            .current_dir(&repo)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("`cargo build --release -p {package}` failed ({status})");
        }
        if !binary.exists() {
            bail!("{} still missing after the build", binary.display());
        }
    }
    Ok(binary)
}

/// A free loopback port (bound then released; the race with other processes is accepted).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `GET /health` on a fresh connection; the status code, or `None` when nothing answered.
pub fn probe_health(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_nodelay(true).ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The credentials `appstrate bootstrap` prints.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub org_id: String,
    pub application_id: String,
    pub admin_token: String,
    pub api_key: String,
}

/// A running `appstrate` server. Dropping it kills the process and removes its directory; prefer
/// [`Server::stop`] for a clean SIGTERM shutdown.
pub struct Server {
    child: Option<Child>,
    binary: PathBuf,
    env: Vec<(String, String)>,
    pub port: u16,
    /// Spawn → first `/health` 200.
    pub boot: Duration,
    /// `/health` probes sent while booting.
    pub probes: u32,
    dir: tempfile::TempDir,
}

impl Server {
    /// The environment a benchmark server gets: the three boot secrets, the port, loopback host and the
    /// system packages directory. Everything else is cleared so that the server runs at Tier 0 whatever
    /// the caller's environment holds.
    pub fn bench_env(port: u16, system_packages: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("BETTER_AUTH_SECRET", "bench-better-auth-secret".to_string()),
            (
                "UPLOAD_SIGNING_SECRET",
                "bench-upload-signing-secret".to_string(),
            ),
            (
                "CONNECTION_ENCRYPTION_KEY",
                BENCH_ENCRYPTION_KEY.to_string(),
            ),
            ("PORT", port.to_string()),
            ("HOST", "127.0.0.1".to_string()),
            ("APP_URL", format!("http://127.0.0.1:{port}")),
            (
                "SYSTEM_PACKAGES_DIR",
                system_packages.to_string_lossy().into_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for k in ["PATH", "HOME", "TMPDIR"] {
            if let Ok(v) = std::env::var(k) {
                env.push((k.to_string(), v));
            }
        }
        env
    }

    /// Starts `binary` in a new temporary directory (fresh `./data`) with [`Server::bench_env`] plus
    /// `extra_env`, and waits for `/health` 200, polling every [`POLL_EVERY`].
    pub fn start(
        binary: &Path,
        system_packages: &Path,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("appstrate-bench-")
            .tempdir()?;
        let port = free_port()?;
        let mut env = Self::bench_env(port, system_packages);
        // Run workspaces (`$TMPDIR/appstrate-ws-*`) stay inside the directory removed at the end.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        env.retain(|(k, _)| k != "TMPDIR");
        env.push(("TMPDIR".into(), tmp.to_string_lossy().into_owned()));
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let log2 = log.try_clone()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));

        let started = Instant::now();
        let child = Command::new(binary)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut server = Server {
            child: Some(child),
            binary: binary.to_path_buf(),
            env,
            port,
            boot: Duration::ZERO,
            probes: 0,
            dir,
        };
        loop {
            server.probes += 1;
            if probe_health(addr) == Some(200) {
                server.boot = started.elapsed();
                return Ok(server);
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the server exited during boot ({status}); its log:\n{}",
                    server.log_tail(40)
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "no /health 200 within 60 s; the server's log:\n{}",
                    server.log_tail(40)
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `./data/appstrate.db`.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("appstrate.db")
    }

    pub fn memory(&self) -> Option<Memory> {
        memory(self.pid())
    }

    /// The last `lines` lines of the server's stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `appstrate <args>` with the server's environment and working directory.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.binary)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running appstrate {}", args.join(" ")))
    }

    /// `appstrate bootstrap`: an organization, its default application, an admin token and an API key.
    pub fn bootstrap(&self) -> anyhow::Result<Credentials> {
        let out = self.cli(&["bootstrap"])?;
        if !out.status.success() {
            bail!(
                "appstrate bootstrap failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .context("bootstrap printed no JSON line")?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        let field = |k: &str| -> anyhow::Result<String> {
            v[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("bootstrap JSON has no {k}"))
        };
        Ok(Credentials {
            org_id: field("orgId")?,
            application_id: field("applicationId")?,
            admin_token: field("adminToken")?,
            api_key: field("apiKey")?,
        })
    }

    /// SIGTERM, then waits up to `grace` for the exit (killing it after that). Returns the exit status
    /// and how long the shutdown took.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let mut child = self.child.take().context("already stopped")?;
        let t = Instant::now();
        terminate(&child);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, t.elapsed()));
            }
            if t.elapsed() > grace {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("no exit within {grace:?} of SIGTERM; killed ({status})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn terminate(child: &Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not yet reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
