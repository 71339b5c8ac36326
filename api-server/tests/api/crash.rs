//! A server killed mid-run (SIGKILL) and restarted: the run is failed and its runner is gone.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::app::{runner_bin, TEST_ENCRYPTION_KEY};
use test_support::fake_llm::{FakeLlm, Turn};

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");

fn env(port: u16, llm: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BETTER_AUTH_SECRET", "s".into()),
        ("UPLOAD_SIGNING_SECRET", "0123456789abcdef".into()),
        ("CONNECTION_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY.into()),
        ("PORT", port.to_string()),
        ("HOST", "127.0.0.1".into()),
        ("LLM_BASE_URL", llm.into()),
        ("LLM_API_KEY", "sk-test".into()),
        ("LLM_MODEL", "m".into()),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1".into()),
        ("RUNNER_BIN", runner_bin().to_string_lossy().into_owned()),
        ("SYSTEM_PACKAGES_DIR", "./none".into()),
    ]
}

fn command(dir: &std::path::Path, args: &[&str], env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn serve(dir: &std::path::Path, env: &[(&'static str, String)], port: u16) -> Child {
    // The caller waits for the child (kill + wait, or SIGTERM + wait).
    #[allow(clippy::zombie_processes)]
    let child = command(dir, &["serve"], env)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            if r.status() == 200 {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) != Some("Z"))
        .unwrap_or(false)
}

#[tokio::test]
async fn runs_left_by_a_killed_server_are_failed_at_the_next_boot() {
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(120_000)]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = env(port, &fake.url());
    let out = command(dir.path(), &["bootstrap"], &env).output().unwrap();
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();

    let mut server = serve(dir.path(), &env, port).await;
    let client = reqwest::Client::new();
    let manifest = json!({"schema_version": "0.1", "name": "@tests/crash", "version": "1.0.0", "type": "agent", "display_name": "Crash"});
    let run: Value = client
        .post(format!("http://127.0.0.1:{port}/api/runs/inline"))
        .bearer_auth(&key)
        .json(&json!({"manifest": manifest, "prompt": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let pid_file = dir.path().join(format!("data/runs/{id}/runner.pid"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "runner never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));

    // Crash: no graceful shutdown, the runner survives its parent.
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(alive(pid), "the runner outlives a crashed server");

    let mut server = serve(dir.path(), &env, port).await;
    let run: Value = client
        .get(format!("http://127.0.0.1:{port}/api/runs/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"], "Server restarted while run was in progress");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "orphaned runner still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dir.path().join(format!("data/runs/{id}")).exists());
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert_eq!(server.wait().unwrap().code(), Some(0));
}
