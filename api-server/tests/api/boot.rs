//! Boot rules, CLI commands and process behaviour, through the real `appstrate` binary.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::app::TEST_ENCRYPTION_KEY;

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");

fn secrets() -> Vec<(&'static str, String)> {
    vec![
        ("BETTER_AUTH_SECRET", "better-auth-secret-canary".into()),
        ("UPLOAD_SIGNING_SECRET", "upload-secret-canary-0123".into()),
        ("CONNECTION_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY.into()),
    ]
}

/// Runs `appstrate <args>` in `dir` with exactly `env` (plus PATH).
fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run appstrate")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = secrets();
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k, v.to_string()));
    }
    env
}

#[test]
fn missing_secrets_exit_2_naming_each_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for var in [
        "BETTER_AUTH_SECRET",
        "UPLOAD_SIGNING_SECRET",
        "CONNECTION_ENCRYPTION_KEY",
    ] {
        assert!(err.contains(&format!("config error: {var}:")), "{err}");
    }
    assert!(err.contains("openssl rand -base64 32"));
    // Nothing was created: the process stopped before touching the data directory.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn check_config_applies_each_boot_rule() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &[(&'static str, &str)]| run(dir.path(), &["check-config"], &with(extra));
    assert_eq!(check(&[]).status.code(), Some(0));

    let out = check(&[("UPLOAD_SIGNING_SECRET", "0123456789abcde")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("UPLOAD_SIGNING_SECRET"));
    assert_eq!(
        check(&[("UPLOAD_SIGNING_SECRET", "0123456789abcdef")])
            .status
            .code(),
        Some(0)
    );

    // 31 and 33 bytes.
    for key in [
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g",
    ] {
        let out = check(&[("CONNECTION_ENCRYPTION_KEY", key)]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("config error: CONNECTION_ENCRYPTION_KEY:"));
    }

    let out = check(&[("APP_URL", "appstrate.example.com")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config error: APP_URL:"));
    let out = check(&[("APP_URL", "http://x.example"), ("APP_ENV", "production")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("https"));
    let out = check(&[("APP_URL", "http://x.example"), ("NODE_ENV", "production")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        check(&[
            ("APP_URL", "http://localhost:3000"),
            ("APP_ENV", "production")
        ])
        .status
        .code(),
        Some(0)
    );

    let out = check(&[("PLATFORM_RUN_LIMITS", r#"{"foo":1}"#)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config error: PLATFORM_RUN_LIMITS: foo:"));
    let out = check(&[("INLINE_RUN_LIMITS", r#"{"rate_per_min":0}"#)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config error: INLINE_RUN_LIMITS: rate_per_min:"));
}

#[test]
fn taken_port_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let out = run(
        dir.path(),
        &["serve"],
        &with(&[("PORT", &port), ("HOST", "127.0.0.1")]),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains(&format!("PORT {port} is already in use")));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_healthy(port: u16) -> reqwest::blocking::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::blocking::get(format!("http://127.0.0.1:{port}/health")) {
            if r.status() == 200 {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &std::process::Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

/// Fresh Tier 0 boot: creates ./data/appstrate.db in WAL mode and ./data/storage, reports tier 0 with the
/// six default adapters, logs one `adapter selected` line per concern at debug (none at info), never logs
/// a secret, and exits 0 on SIGTERM.
#[test]
fn tier0_boot_debug_logs_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env = with(&[
        ("PORT", &port.to_string()),
        ("HOST", "127.0.0.1"),
        ("LOG_LEVEL", "debug"),
    ]);
    env.push(("LLM_BASE_URL", "http://127.0.0.1:9/v1".into()));
    env.push(("LLM_API_KEY", "sk-llm-canary-key".into()));
    env.push(("LLM_MODEL", "fake".into()));
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let health: serde_json::Value = wait_healthy(port).json().unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["tier"], 0);
    assert_eq!(health["isolation"], "none");
    assert_eq!(health["bash"], "off");
    assert_eq!(
        health["adapters"],
        serde_json::json!({"database":"sqlite","queue":"local","pubsub":"local","rate_limiter":"memory","storage":"fs","run_adapter":"process"})
    );
    assert!(dir.path().join("data/storage").is_dir());
    assert!(dir.path().join("data/appstrate.db").is_file());
    // WAL mode leaves a -wal file next to the database while it is open.
    assert!(dir.path().join("data/appstrate.db-wal").exists());

    // A request with a bearer token must not log the token.
    let _ = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/end-users"))
        .bearer_auth("ask_0000000000000000000000000000000000000000deadbeef")
        .send()
        .unwrap();

    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    for concern in [
        "database",
        "storage",
        "queue",
        "pubsub",
        "rate_limiter",
        "run_adapter",
    ] {
        let n = log
            .lines()
            .filter(|l| {
                l.contains("adapter selected") && l.contains(&format!("concern=\"{concern}\""))
            })
            .count();
        assert_eq!(n, 1, "concern {concern}: {log}");
    }
    assert!(log.contains("infrastructure tier=0"));
    assert!(log.contains("server ready"));
    for secret in [
        "better-auth-secret-canary",
        "upload-secret-canary-0123",
        TEST_ENCRYPTION_KEY,
        "sk-llm-canary-key",
        "deadbeef",
    ] {
        assert!(!log.contains(secret), "secret {secret} logged");
    }

    // At info, no adapter line.
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stderr(Stdio::piped());
    for (k, v) in with(&[("PORT", &port.to_string()), ("HOST", "127.0.0.1")]) {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_healthy(port);
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("adapter selected"));
    assert_eq!(stderr(&out).matches("infrastructure tier=0").count(), 1);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stderr(Stdio::piped());
    for (k, v) in with(&[
        ("PORT", &port.to_string()),
        ("HOST", "127.0.0.1"),
        ("LOG_FORMAT", "json"),
    ]) {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_healthy(port);
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    let mut saw_access = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string());
        if v["message"] == "request" {
            saw_access = true;
            assert_eq!(v["route"], "/health");
            assert!(v["span"]["request_id"]
                .as_str()
                .unwrap()
                .starts_with("req_"));
        }
    }
    assert!(saw_access, "{log}");
}

#[test]
fn bootstrap_prints_one_json_line_and_stores_only_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["bootstrap", "--org-name", "Acme"], &secrets());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let admin = v["adminToken"].as_str().unwrap();
    let key = v["apiKey"].as_str().unwrap();
    assert!(admin.starts_with("adm_") && admin.len() == 52);
    assert!(key.starts_with("ask_") && key.len() == 52);
    assert!(key[4..]
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(v["applicationId"].as_str().unwrap().starts_with("app_"));

    // The database file holds the SHA-256 of each secret, never the secret.
    let db = std::fs::read(dir.path().join("data/appstrate.db")).unwrap();
    let wal = std::fs::read(dir.path().join("data/appstrate.db-wal")).unwrap_or_default();
    let all = [db, wal].concat();
    let contains = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(admin) && !contains(key));
    let hash = |s: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    };
    assert!(contains(&hash(admin)) && contains(&hash(key)));

    // A second bootstrap of the same org mints another token for it.
    let out = run(dir.path(), &["bootstrap", "--org-name", "Acme"], &secrets());
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["orgId"], v["orgId"]);
    assert_ne!(again["adminToken"], v["adminToken"]);

    // admin-token list shows both, by prefix only; revoke works once.
    let out = run(dir.path(), &["admin-token", "list"], &secrets());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(listing.contains(&admin[..8]) && !listing.contains(admin));
    let id = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        run(dir.path(), &["admin-token", "revoke", &id], &secrets())
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run(dir.path(), &["admin-token", "revoke", &id], &secrets())
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn dev_writes_env_once_with_private_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spawn = || {
        Command::new(BIN)
            .arg("dev")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = spawn();
    wait_healthy(port);
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("wrote ./.env"));
    let env_file = dir.path().join(".env");
    let first = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Secrets only: APP_URL follows the port of each run instead of being pinned in the file.
    assert!(!first.contains("APP_URL"), "{first}");
    for var in [
        "BETTER_AUTH_SECRET=",
        "UPLOAD_SIGNING_SECRET=",
        "CONNECTION_ENCRYPTION_KEY=",
    ] {
        assert!(first.contains(var), "{first}");
    }

    let child = spawn();
    wait_healthy(port);
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("wrote ./.env"));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), first);
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = run(dir.path(), &["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for cmd in [
        "serve",
        "dev",
        "bootstrap",
        "check-config",
        "db",
        "admin-token",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    let out = run(dir.path(), &["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// Spawns `appstrate <args>` in `dir` with exactly `env` (plus PATH); stderr lines arrive on the receiver
/// while the process runs, and are kept for the end.
fn spawn_streaming(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    use std::io::BufRead;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    (child, rx, reader)
}

/// The first stderr line containing `needle`, within 20 s.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no stderr line containing {needle:?}: {e}"),
        }
    }
}

fn secrets_env_file() -> String {
    secrets()
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect()
}

/// `.env` is read from the working directory only (not from a parent), and the process environment wins
/// over it.
#[test]
fn env_file_is_read_from_the_working_directory_only() {
    let parent = tempfile::tempdir().unwrap();
    let child = parent.path().join("child");
    std::fs::create_dir(&child).unwrap();
    std::fs::write(parent.path().join(".env"), secrets_env_file()).unwrap();
    let out = run(&child, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2), "a parent's .env was read");
    assert!(stderr(&out).contains("config error: BETTER_AUTH_SECRET:"));

    std::fs::write(child.join(".env"), secrets_env_file()).unwrap();
    let out = run(&child, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The environment wins: a too-short secret in the environment is reported although .env is valid.
    let out = run(
        &child,
        &["check-config"],
        &[("UPLOAD_SIGNING_SECRET", "short".into())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config error: UPLOAD_SIGNING_SECRET:"));
}

/// A malformed `.env` line stops every command with exit 2, naming the file and the line number without
/// echoing the line (which may hold a secret); `dev` does not touch the file.
#[test]
fn malformed_env_line_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    let content = format!(
        "# local settings\n{}LLM_API_KEY sk-malformed-canary\nPORT=3999\n",
        secrets_env_file()
    );
    std::fs::write(&env_file, &content).unwrap();
    for args in [
        &["serve"][..],
        &["dev"],
        &["check-config"],
        &["db", "migrate"],
    ] {
        let out = run(dir.path(), args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{}: line 5:", env_file.display())),
            "{args:?}: {err}"
        );
        assert!(!err.contains("sk-malformed-canary"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), content);
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

/// `appstrate dev` with an existing `.env` and PORT unset: loads the file (its secrets boot the server),
/// leaves it byte for byte as it was, starts the port search at `APPSTRATE_DEV_START_PORT`, skips the taken
/// port and prints the one it picked; APP_URL follows that port.
#[test]
fn dev_keeps_an_existing_env_and_picks_the_next_free_port() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    let content = format!("# mine, do not touch\n{}", secrets_env_file());
    std::fs::write(&env_file, &content).unwrap();
    // Hold a port, and work out which port after it is free.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let start = held.local_addr().unwrap().port();
    let expected = (start + 1..start.saturating_add(100))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let (mut child, rx, reader) = spawn_streaming(
        dir.path(),
        &["dev"],
        &[
            ("HOST", "127.0.0.1".into()),
            ("APPSTRATE_DEV_START_PORT", start.to_string()),
        ],
    );
    let line = wait_line(&rx, "PORT is not set");
    assert!(
        line.contains(&format!("port {start} is in use, using port {expected}")),
        "{line}"
    );
    wait_healthy(expected);
    let doc: serde_json::Value =
        reqwest::blocking::get(format!("http://127.0.0.1:{expected}/api/openapi.json"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(
        doc["servers"][0]["url"],
        format!("http://localhost:{expected}")
    );
    sigterm(&child);
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("wrote ./.env"), "{log}");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), content);
    drop(held);

    // A PORT in .env counts as set: no search, no message.
    let port = free_port();
    std::fs::write(&env_file, format!("{content}PORT={port}\n")).unwrap();
    let (mut child, _rx, reader) =
        spawn_streaming(dir.path(), &["dev"], &[("HOST", "127.0.0.1".into())]);
    wait_healthy(port);
    sigterm(&child);
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("PORT is not set"), "{log}");
}

fn sigint(child: &std::process::Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
}

fn accepts_connections(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// SIGINT is a graceful shutdown like SIGTERM: exit 0, and the port stops accepting connections. A SIGINT
/// delivered while the boot steps are still running is handled the same way, not as an abrupt kill.
#[test]
fn sigint_shuts_down_gracefully_even_during_boot() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = with(&[("PORT", &port.to_string()), ("HOST", "127.0.0.1")]);
    let (mut child, rx, reader) = spawn_streaming(dir.path(), &["serve"], &env);
    wait_healthy(port);
    assert!(accepts_connections(port));
    sigint(&child);
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    drop(rx);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("signal received") && log.contains("SIGINT"),
        "{log}"
    );
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        !accepts_connections(port),
        "the port still accepts connections"
    );

    // During boot: the first debug line is written while the adapters are being selected, long before
    // `server ready`.
    let port = free_port();
    let env = with(&[
        ("PORT", &port.to_string()),
        ("HOST", "127.0.0.1"),
        ("LOG_LEVEL", "debug"),
    ]);
    let (mut child, rx, reader) = spawn_streaming(dir.path(), &["serve"], &env);
    wait_line(&rx, "adapter selected");
    sigint(&child);
    let started = Instant::now();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "killed instead of shut down: {log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!accepts_connections(port));
}

/// `appstrate db migrate` reports how many migrations it applied, and that there is nothing to do the
/// second time.
#[test]
fn db_migrate_reports_applied_migrations_then_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sql")
        })
        .count();
    assert!(shipped > 1);
    let out = run(dir.path(), &["db", "migrate"], &secrets());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("applied {shipped} migrations")
    );
    assert!(dir.path().join("data/appstrate.db").is_file());
    let out = run(dir.path(), &["db", "migrate"], &secrets());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "database is up to date: no migrations to apply"
    );
    // The migrated database is usable as is.
    let out = run(dir.path(), &["bootstrap"], &secrets());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// At debug and at trace (every dependency's logs included), nothing the server writes contains a secret:
/// the boot secrets, the LLM key, the admin token and API keys (bootstrap's and one created through the
/// API, each used for requests), or connection credentials stored through the API.
#[test]
fn no_secret_in_logs_at_debug_or_trace() {
    let system_packages = concat!(env!("CARGO_MANIFEST_DIR"), "/../system-packages");
    for level in ["debug", "trace"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut env = with(&[
            ("PORT", &port.to_string()),
            ("HOST", "127.0.0.1"),
            ("LOG_LEVEL", level),
            ("SYSTEM_PACKAGES_DIR", system_packages),
        ]);
        env.push(("LLM_BASE_URL", "http://127.0.0.1:9/v1".into()));
        env.push(("LLM_API_KEY", "sk-llm-canary-key-77".into()));
        env.push(("LLM_MODEL", "fake".into()));

        let boot = run(dir.path(), &["bootstrap"], &env);
        assert_eq!(boot.status.code(), Some(0), "{}", stderr(&boot));
        let creds: serde_json::Value = serde_json::from_slice(&boot.stdout).unwrap();
        let admin = creds["adminToken"].as_str().unwrap().to_string();
        let bootstrap_key = creds["apiKey"].as_str().unwrap().to_string();
        let app_id = creds["applicationId"].as_str().unwrap().to_string();

        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        wait_healthy(port);
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap();
        let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

        let r = client
            .post(url("/api/api-keys"))
            .bearer_auth(&admin)
            .header("X-App-Id", &app_id)
            .json(&serde_json::json!({"name": "logs"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let created: serde_json::Value = r.json().unwrap();
        let key = created["key"].as_str().unwrap().to_string();
        for token in [&key, &bootstrap_key] {
            let r = client
                .get(url("/api/end-users"))
                .bearer_auth(token)
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let connection = "/api/packages/@appstrate/stripe/connections/primary";
        let r = client
            .put(url(connection))
            .bearer_auth(&key)
            .json(&serde_json::json!({"credentials": {"api_key": "sk_live_conn_canary_9191"}}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
        let r = client
            .get(url(connection))
            .bearer_auth(&key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        // A refused credential value, and a revoked key used once more.
        let r = client
            .put(url(connection))
            .bearer_auth(&key)
            .json(&serde_json::json!({"credentials": {"api_key": 4242_4242_4242_u64}}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = client
            .delete(url(&format!(
                "/api/api-keys/{}",
                created["id"].as_str().unwrap()
            )))
            .bearer_auth(&admin)
            .header("X-App-Id", &app_id)
            .send()
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = client
            .get(url("/api/end-users"))
            .bearer_auth(&key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 401);

        sigterm(&child);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let log = format!(
            "{}{}{}",
            stderr(&boot),
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(log.contains("server ready"), "{level}: {log}");
        let mut secrets_to_find = vec![
            "better-auth-secret-canary".to_string(),
            "upload-secret-canary-0123".to_string(),
            TEST_ENCRYPTION_KEY.to_string(),
            "sk-llm-canary-key-77".to_string(),
            "sk_live_conn_canary_9191".to_string(),
            "424242424242".to_string(),
        ];
        // Each token, and its secret part without the prefix.
        for t in [&admin, &bootstrap_key, &key] {
            secrets_to_find.push(t.to_string());
            secrets_to_find.push(t[4..].to_string());
        }
        for secret in &secrets_to_find {
            assert!(!log.contains(secret.as_str()), "{level}: {secret} logged");
        }
    }
}
