//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT`, the real `appstrate` binary exports one trace per
//! request, and a run's trace follows it from `POST …/run` through the runner's sink calls and the
//! sidecar's model call, received by the OTLP receiver of test-support.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::otlp_receiver::{OtlpReceiver, ReceivedSpan};

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} span={} parent={:?} {:?}",
                s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn traces_follow_a_run_from_its_request_through_runner_and_sidecar() {
    let receiver = OtlpReceiver::start().await;
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"greeting": "Hello, Ada!", "language": "en"}}),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env = test_support::app::base_env(dir.path());
    for (k, v) in [
        ("PORT", port.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("APP_URL", format!("http://127.0.0.1:{port}")),
        ("LLM_BASE_URL", fake.url()),
        ("LLM_API_KEY", "sk-llm-trace-canary".to_string()),
        ("LLM_MODEL", "fake-model".to_string()),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        // Traces do not depend on the log level.
        ("LOG_LEVEL", "warn".to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    let command = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(&env);
        cmd
    };
    let boot = command(&["bootstrap"]).output().unwrap();
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let creds: Value = serde_json::from_slice(&boot.stdout).unwrap();
    let key = creds["apiKey"].as_str().unwrap().to_string();
    let mut server = command(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let archive = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/agents/hello.afps"
    ))
    .unwrap();
    let r = client
        .post(format!("{base}/api/packages/import"))
        .bearer_auth(&key)
        .header("Content-Type", "application/zip")
        .body(archive)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/api/agents/@examples/hello/run"))
        .bearer_auth(&key)
        .json(&json!({"input": {"name": "Ada"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let run: Value = r.json().await.unwrap();
    let run_id = run["id"].as_str().unwrap().to_string();
    let done: Value = client
        .get(format!("{base}/api/runs/{run_id}?wait=30"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "success", "{done}");

    // A graceful stop exports what is still buffered.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let _ = tokio::task::spawn_blocking(move || server.wait()).await;

    let spans = receiver
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().any(|s| s.name == "run") && s.iter().any(|s| s.name.starts_with("sidecar "))
        })
        .await;
    let all = describe(&spans);
    let find =
        |name: &str| -> Vec<&ReceivedSpan> { spans.iter().filter(|s| s.name == name).collect() };

    let run_span = *find("run")
        .iter()
        .find(|s| s.attribute("run.id") == Some(run_id.as_str()))
        .unwrap_or_else(|| panic!("no run span with run.id {run_id}:\n{all}"));
    assert!(spans.iter().all(|s| s.service == "appstrate"));
    let trace = &run_span.trace_id;

    // The run is a child of the request that started it.
    let start = find("POST /api/agents/{scope}/{name}/run");
    assert_eq!(start.len(), 1, "{all}");
    assert_eq!(&start[0].trace_id, trace, "{all}");
    assert_eq!(
        start[0].parent_span_id, None,
        "the start request is the root:\n{all}"
    );
    assert_eq!(
        run_span.parent_span_id.as_ref(),
        Some(&start[0].span_id),
        "{all}"
    );
    assert_eq!(start[0].attribute("http.response.status_code"), Some("201"));

    // The runner's calls (workspace, events, finalize) and the sidecar's model call are children of the run.
    for name in [
        "GET /api/runs/{id}/workspace",
        "POST /api/runs/{id}/events",
        "POST /api/runs/{id}/events/finalize",
        "sidecar POST /llm/{provider}/{*rest}",
    ] {
        let found = find(name);
        assert!(!found.is_empty(), "no {name} span:\n{all}");
        for s in found {
            assert_eq!(&s.trace_id, trace, "{name} is in another trace:\n{all}");
            assert_eq!(
                s.parent_span_id.as_ref(),
                Some(&run_span.span_id),
                "{name}:\n{all}"
            );
        }
    }

    // Any other request is a trace of its own.
    let other = find("GET /api/runs/{id}");
    assert!(!other.is_empty(), "{all}");
    assert!(
        other
            .iter()
            .all(|s| &s.trace_id != trace && s.parent_span_id.is_none()),
        "{all}"
    );
    let health = find("GET /health");
    assert!(!health.is_empty(), "{all}");

    // No secret in any span.
    for secret in [
        key.as_str(),
        "sk-llm-trace-canary",
        "test-upload-signing-secret",
    ] {
        assert!(!all.contains(secret), "a span carries a secret:\n{all}");
    }
    // The model never sees the run's trace ids.
    for req in fake.requests() {
        assert!(
            req.headers.iter().all(|(k, _)| k != "traceparent"),
            "traceparent reached the model"
        );
    }
}
