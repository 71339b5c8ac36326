//! A server killed mid-run (SIGKILL) and restarted: the run is failed and its runner is gone. A server
//! stopped gracefully (SIGTERM) mid-run lets the run finish within the grace period.

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

/// SIGTERM while a run waits on a slow model: with a generous grace the runner's `/events` and
/// `/events/finalize` are still accepted during the shutdown, so the run ends `success` with its output
/// and the server then exits 0 (§5.3 step 3).
#[tokio::test]
async fn a_run_finishing_during_the_shutdown_grace_keeps_its_output() {
    let fake = FakeLlm::start(vec![
        Turn::tool_call(
            "log",
            json!({"level": "info", "message": "before the slow call"}),
        ),
        Turn::tool_call("output", json!({"data": {"answer": 42}})).with_delay(2_500),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = env(port, &fake.url());
    env.push(("SHUTDOWN_GRACE_SECONDS", "60".into()));
    let out = command(dir.path(), &["bootstrap"], &env).output().unwrap();
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();

    let mut server = serve(dir.path(), &env, port).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let manifest = json!({"schema_version": "0.1", "name": "@tests/graceful", "version": "1.0.0", "type": "agent", "display_name": "Graceful"});
    let run: Value = client
        .post(format!("{base}/api/runs/inline"))
        .bearer_auth(&key)
        .json(&json!({"manifest": manifest, "prompt": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    // Mid-run: the first model call is answered (its log is stored), the second one is slow.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.requests().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the runner never reached the slow call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sigterm = Instant::now();
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Mutating API requests are refused meanwhile.
    let refused = client
        .post(format!("{base}/api/runs/inline"))
        .bearer_auth(&key)
        .json(&json!({"manifest": manifest, "prompt": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            panic!("the server did not exit after the run finished");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
    eprintln!("server exited {:?} after SIGTERM", sigterm.elapsed());

    let mut server = serve(dir.path(), &env, port).await;
    let run: Value = client
        .get(format!("{base}/api/runs/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs: Value = client
        .get(format!("{base}/api/runs/{id}/logs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert_eq!(server.wait().unwrap().code(), Some(0));
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["result"]["output"]["answer"], 42, "{run}");
    assert!(logs.to_string().contains("before the slow call"), "{logs}");
}
