//! Runs end to end: the real runner process, the in-process sidecar and the scripted fake LLM.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::{system_packages_dir, TestApp};
use test_support::fake_llm::{system_prompt, FakeLlm, Turn};
use test_support::{spawn_app_on, Backend};

const CANARY: &str = "sk-live-canary-4f1c2d9e";
const BRIEFING: &str = "../../shared/fixtures/afps/agents/briefing-agent/agent.afps";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("fixture")
}

pub(crate) async fn llm_app(fake: &FakeLlm, extra: &[(&str, &str)]) -> TestApp {
    llm_app_on(Backend::Sqlite, fake, extra)
        .await
        .expect("SQLite is always available")
}

pub(crate) async fn llm_app_on(
    backend: Backend,
    fake: &FakeLlm,
    extra: &[(&str, &str)],
) -> Option<TestApp> {
    let url = fake.url();
    let packages = system_packages_dir().to_string_lossy().into_owned();
    let mut env: Vec<(&str, &str)> = vec![
        ("LLM_BASE_URL", url.as_str()),
        ("LLM_API_KEY", CANARY),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        ("SYSTEM_PACKAGES_DIR", packages.as_str()),
    ];
    env.extend_from_slice(extra);
    spawn_app_on(backend, &env).await
}

async fn import(app: &TestApp, bytes: Vec<u8>) -> Value {
    let r = app
        .key(Method::POST, "/api/packages/import")
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "import failed: {}",
        r.text().await.unwrap()
    );
    r.json().await.unwrap()
}

pub(crate) async fn start(app: &TestApp, path: &str, body: Value) -> Value {
    let r = app
        .key(Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let b: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{b}");
    b
}

pub(crate) async fn wait_terminal(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = app
            .key(Method::GET, &format!("/api/runs/{id}?wait=10"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api/runs/{id}: {e}"));
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let r: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET /api/runs/{id} answered {code} {text:?}: {e}"));
        let status = r["status"]
            .as_str()
            .unwrap_or_else(|| panic!("GET /api/runs/{id} answered {code}: {r}"));
        if ["success", "failed", "timeout", "cancelled"].contains(&status) {
            return r;
        }
        if Instant::now() >= deadline {
            let logs = logs(app, id).await;
            panic!("run {id} did not finish: {r}\nlogs: {logs:#?}");
        }
    }
}

async fn logs(app: &TestApp, id: &str) -> Vec<Value> {
    let v: Value = app
        .key(Method::GET, &format!("/api/runs/{id}/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().unwrap().clone()
}

pub(crate) fn inline(manifest_extra: Value, prompt: &str) -> Value {
    let mut manifest = json!({
        "schema_version": "0.1",
        "name": "@tests/inline",
        "version": "1.0.0",
        "type": "agent",
        "display_name": "Inline test agent",
    });
    for (k, v) in manifest_extra.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    json!({"manifest": manifest, "prompt": prompt})
}

fn runner_pid(app: &TestApp, run_id: &str) -> Option<i32> {
    std::fs::read_to_string(app.data_dir.join(format!("runs/{run_id}/runner.pid")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: i32) -> bool {
    // A zombie has exited; /proc/<pid>/stat field 3 is its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

async fn wait_for_pid(app: &TestApp, run_id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = runner_pid(app, run_id) {
            return pid;
        }
        assert!(Instant::now() < deadline, "runner never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_backends!(briefing_agent_runs_to_success_and_never_sees_the_key);
async fn briefing_agent_runs_to_success_and_never_sees_the_key(backend: Backend) {
    let output = json!({"topic": "Rust", "keyFindings": ["fast"], "recommendation": "adopt", "confidence": "high"});
    let fake = FakeLlm::start(vec![
        // The first turn waits so the test can read the live runner's environment.
        Turn::tool_call("output", json!({"data": output})).with_delay(1500),
    ])
    .await;
    let app = test_support::require!(llm_app_on(backend, &fake, &[]).await);
    let imported = import(&app, fixture(BRIEFING)).await;
    assert_eq!(imported["created"], true);

    let run = start(
        &app,
        "/api/agents/@examples/daily-briefing/run",
        json!({"input": {"topic": "Rust", "priority": "high", "audience": "engineers"}}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("run_"));
    assert_eq!(run["status"], "pending");
    assert_eq!(run["kind"], "package");
    assert_eq!(run["runNumber"], 1);
    assert_eq!(run["timeout_seconds"], 300);

    // The live runner's environment holds no secret of the platform.
    let pid = wait_for_pid(&app, &id).await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let environ = String::from_utf8_lossy(&environ).into_owned();
    assert!(environ.contains(&format!("AGENT_RUN_ID={id}")), "{environ}");
    // The model key the runner holds is the run's sidecar token, not a platform secret.
    assert!(environ.contains("MODEL_API_KEY=sct_"), "{environ}");
    for secret in [
        CANARY,
        "CONNECTION_ENCRYPTION_KEY",
        "DATABASE_URL",
        "LLM_API_KEY",
        test_support::app::TEST_ENCRYPTION_KEY,
    ] {
        assert!(
            !environ.contains(secret),
            "{secret} in the runner environment"
        );
    }

    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"]["output"], output);
    assert!(done["token_usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(done["cost_pricing_status"], "unpriced");
    assert!(done["started_at"].is_string() && done["completed_at"].is_string());

    // The fake LLM saw the real key (through the sidecar) and the rendered prompt.
    let reqs = fake.requests();
    assert!(!reqs.is_empty());
    assert!(fake
        .authorizations()
        .iter()
        .all(|a| a == &format!("Bearer {CANARY}")));
    let system = system_prompt(&reqs[0]).unwrap();
    assert!(system.contains("**Rust**"), "{system}");
    assert!(system.contains("_No prior context — this is the first run._"));
    assert!(system.contains(&id));

    // Logs: platform breadcrumbs, the runner's progress, the output; never the key.
    let rows = logs(&app, &id).await;
    let events: Vec<&str> = rows.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert!(events.contains(&"output"), "{events:?}");
    assert!(rows
        .iter()
        .any(|l| l["message"] == "run created" && l["data"]["platform"] == true));
    assert!(rows.iter().any(|l| l["message"] == "run completed"));
    let everything = format!("{done}{}", Value::Array(rows));
    assert!(!everything.contains(CANARY));

    // The runner exits after its finalize; then its run directory and workspace are removed.
    let ws = std::env::temp_dir().join(format!("appstrate-ws-{id}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.data_dir.join(format!("runs/{id}")).exists() || ws.exists() {
        assert!(
            Instant::now() < deadline,
            "run directory or workspace left behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid));

    // A second run of the same agent numbers 2; the agents list counts nothing running.
    fake.push(Turn::tool_call("output", json!({"data": output})));
    let second = start(
        &app,
        "/api/agents/@examples/daily-briefing/run",
        json!({"input": {"topic": "Go"}}),
    )
    .await;
    assert_eq!(second["runNumber"], 2);
    wait_terminal(&app, second["id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn output_schema_rules_and_llm_retries() {
    let schema = json!({"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}});
    let fake = FakeLlm::start(vec![
        // Run 1: the model never calls output (and ignores the corrective turn).
        Turn::text("I am done."),
        Turn::text("Still no output."),
        // Run 2: an invalid output first, then a valid one.
        Turn::tool_call("output", json!({"data": {"answer": 42}})),
        Turn::tool_call("output", json!({"data": {"answer": "forty-two"}})),
        // Run 3: a 429 with Retry-After: 1, then success.
        Turn::error(429).retry_after(1),
        Turn::tool_call("output", json!({"data": {"answer": "ok"}})),
    ])
    .await;
    let app = llm_app(&fake, &[]).await;
    let body = inline(
        json!({"output": {"schema": schema}}),
        "Answer the question.",
    );

    let r1 = start(&app, "/api/runs/inline", body.clone()).await;
    assert_eq!(r1["kind"], "inline");
    assert_eq!(r1["packageId"], Value::Null);
    let r1 = wait_terminal(&app, r1["id"].as_str().unwrap()).await;
    assert_eq!(r1["status"], "failed");
    assert_eq!(
        r1["error"],
        "Agent finished without calling the required `output` tool"
    );

    let r2 = start(&app, "/api/runs/inline", body.clone()).await;
    let r2 = wait_terminal(&app, r2["id"].as_str().unwrap()).await;
    assert_eq!(r2["status"], "success", "{r2}");
    assert_eq!(r2["result"]["output"]["answer"], "forty-two");

    let r3 = start(&app, "/api/runs/inline", body).await;
    let id3 = r3["id"].as_str().unwrap().to_string();
    let r3 = wait_terminal(&app, &id3).await;
    assert_eq!(r3["status"], "success", "{r3}");
    let rows = logs(&app, &id3).await;
    assert!(
        rows.iter().any(|l| l["event"] == "adapter_error"),
        "the 429 is reported: {rows:?}"
    );
}

#[tokio::test]
async fn timeouts_are_clamped_and_enforced() {
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(20_000)]).await;
    let app = llm_app(&fake, &[]).await;
    let long = start(
        &app,
        "/api/runs/inline",
        inline(json!({"timeout": 5000}), "x"),
    )
    .await;
    assert_eq!(long["timeout_seconds"], 1800);
    let r = app
        .key(
            Method::POST,
            &format!("/api/runs/{}/cancel", long["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(20_000)]).await;
    let app = llm_app(&fake, &[]).await;
    let short = start(&app, "/api/runs/inline", inline(json!({"timeout": 2}), "x")).await;
    let done = wait_terminal(&app, short["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "timeout", "{done}");
    assert_eq!(done["error"], "Run timed out after 2s");
}

#[tokio::test]
async fn cancel_stops_the_runner_and_wait_long_polls() {
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(60_000)]).await;
    let app = llm_app(&fake, &[]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let pid = wait_for_pid(&app, &id).await;

    // wait=-1 is refused; wait=1 on a running run returns after about a second.
    let r = app
        .key(Method::GET, &format!("/api/runs/{id}?wait=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let t = Instant::now();
    let r: Value = app
        .key(Method::GET, &format!("/api/runs/{id}?wait=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(5));
    assert!(r["status"] == "running" || r["status"] == "pending");

    // A long-poll in flight wakes on the cancel.
    let waiter = {
        let client = app.client.clone();
        let url = app.url(&format!("/api/runs/{id}?wait=30"));
        let key = app.api_key.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v: Value = client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (v, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = app
        .key(Method::POST, &format!("/api/runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "cancelled");
    assert_eq!(b["error"], "Cancelled by user");
    while alive(pid) {
        assert!(t.elapsed() < Duration::from_secs(6), "runner still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (v, waited) = waiter.await.unwrap();
    assert_eq!(v["status"], "cancelled");
    assert!(waited < Duration::from_secs(15));

    let r = app
        .key(Method::POST, &format!("/api/runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "not_cancellable");
}

#[tokio::test]
async fn a_runner_that_stops_reporting_is_failed_by_the_watchdog() {
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(60_000)]).await;
    let app = llm_app(
        &fake,
        &[
            ("RUN_HEARTBEAT_INTERVAL_SECONDS", "1"),
            ("RUN_STALL_THRESHOLD_SECONDS", "3"),
            ("RUN_WATCHDOG_INTERVAL_SECONDS", "1"),
        ],
    )
    .await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let pid = wait_for_pid(&app, &id).await;
    // Wait for the runner's first event, then freeze it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !logs(&app, &id)
        .await
        .iter()
        .any(|l| l["event"] == "progress")
    {
        assert!(Instant::now() < deadline, "no runner event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let t = Instant::now();
    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .starts_with("Runner stopped reporting — no heartbeat for"),
        "{done}"
    );
    // stall (3 s) + 2 × watchdog interval (1 s), plus slack for a loaded machine.
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "frozen runner not killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(creation_errors_and_gates);
async fn creation_errors_and_gates(backend: Backend) {
    // No model configured.
    let app = test_support::require!(test_support::spawn_app_on(backend, &[]).await);
    let r = app
        .key(Method::POST, "/api/runs/inline")
        .json(&inline(json!({}), "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "model_not_configured"
    );

    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(30_000)]).await;
    let app = llm_app(
        &fake,
        &[("PLATFORM_RUN_LIMITS", r#"{"max_concurrent_per_org":1}"#)],
    )
    .await;
    // Unknown agent and version.
    let r = app
        .key(Method::POST, "/api/agents/@nobody/nothing/run")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "agent_not_found");
    import(&app, fixture(BRIEFING)).await;
    let r = app
        .key(
            Method::POST,
            "/api/agents/@examples/daily-briefing/run?version=9.9.9",
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "version_not_found"
    );
    // Unknown body field.
    let r = app
        .key(Method::POST, "/api/agents/@examples/daily-briefing/run")
        .json(&json!({"inputs": {}}))
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["errors"][0]["code"], "unknown_field");

    // Idempotent creation: one row, replayed answer.
    let send = || {
        app.key(Method::POST, "/api/runs/inline")
            .header("Idempotency-Key", "run-once")
            .json(&inline(json!({}), "x"))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);

    // The org already has one open run: the next is refused without rate-limit headers.
    let r = app
        .key(Method::POST, "/api/runs/inline")
        .json(&inline(json!({}), "y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("ratelimit-policy").is_some(),
        "the route limit headers stay"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "org_run_concurrency_exceeded"
    );
    let list: Value = app
        .key(Method::GET, "/api/runs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let r = app
        .key(Method::GET, "/api/runs?status=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn sse_stream_of_one_run() {
    let fake = FakeLlm::start(vec![
        Turn::tool_call("log", json!({"level": "info", "message": "working"})).with_delay(800),
        Turn::tool_call("output", json!({"data": {"ok": true}})),
    ])
    .await;
    let app = llm_app(&fake, &[]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let url = app.url(&format!(
        "/api/realtime/runs/{id}?token={}&verbose=true",
        app.api_key
    ));
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream ends by itself after the terminal update.
    let body = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("stream closes")
        .unwrap();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events[0], "ping");
    assert_eq!(events[1], "run_update");
    assert!(events.contains(&"run_log"), "{events:?}");
    assert!(events.contains(&"run_metric"), "{events:?}");
    assert_eq!(*events.last().unwrap(), "run_update");
    let last_data = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .unwrap();
    let last: Value = serde_json::from_str(last_data).unwrap();
    assert_eq!(last["status"], "success");
    assert!(body
        .lines()
        .any(|l| l.starts_with("id: ") && l.contains(':')));
    assert!(!body.contains(CANARY));

    // Bad credentials on the stream.
    let r = app
        .client
        .get(app.url(&format!("/api/realtime/runs/{id}?token=ask_bad")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// `api_call` through the sidecar: the credential reaches the provider exactly as the integration's
/// `delivery` says, never the agent; targets outside `authorized_uris` and private addresses are refused.
#[tokio::test]
async fn api_call_gets_the_credential_injected_by_the_sidecar() {
    use appstrate::packages::afps::build_zip;
    use test_support::fake_upstream::{FakeUpstream, UpstreamResponse};

    let upstream = FakeUpstream::start().await;
    upstream.on(
        "/allowed/items",
        UpstreamResponse::json(200, json!({"items": [1, 2]})),
    );
    let base = upstream.url();
    let secret = "tok-canary-91b3";
    let integration = json!({
        "schema_version": "0.1", "name": "@tests/fakeapi", "version": "1.0.0", "type": "integration",
        "display_name": "Fake API", "description": "A loopback provider",
        "auths": {"main": {
            "type": "api_key",
            "authorized_uris": [format!("{base}/allowed/**")],
            "credentials": {"schema": {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}},
            "delivery": {"http": {"in": "header", "name": "Authorization", "prefix": "Token", "value": "{$credential.token}"}}
        }}
    });
    let agent = json!({
        "schema_version": "0.1", "name": "@tests/caller", "version": "1.0.0", "type": "agent",
        "display_name": "Caller", "dependencies": {"integrations": {"@tests/fakeapi": "^1.0.0"}}
    });
    let fake = FakeLlm::start(vec![
        Turn::tool_call("api_call", json!({"integration": "@tests/fakeapi", "method": "GET", "url": format!("{base}/allowed/items"), "headers": {"Authorization": "Bearer forged"}})),
        Turn::tool_call("api_call", json!({"integration": "@tests/fakeapi", "method": "GET", "url": format!("{base}/elsewhere")})),
        Turn::tool_call("api_call", json!({"integration": "@tests/fakeapi", "method": "GET", "url": "http://169.254.169.254/latest/meta-data"})),
        Turn::tool_call("output", json!({"data": {"done": true}})),
    ])
    .await;
    let app = llm_app(&fake, &[]).await;
    import(
        &app,
        build_zip(&[("manifest.json", integration.to_string().as_bytes())]),
    )
    .await;
    import(
        &app,
        build_zip(&[
            ("manifest.json", agent.to_string().as_bytes()),
            ("prompt.md", b"Call the API."),
        ]),
    )
    .await;

    // Without a connection the run is refused up front.
    let r = app
        .key(Method::POST, "/api/agents/@tests/caller/run")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "missing_integration_connection"
    );
    let r = app
        .key(Method::PUT, "/api/packages/@tests/fakeapi/connections/main")
        .json(&json!({"credentials": {"token": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().contains(secret));

    let run = start(&app, "/api/agents/@tests/caller/run", json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    let pid = wait_for_pid(&app, &id).await;
    let environ =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
            .into_owned();
    assert!(!environ.contains(secret));
    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "success", "{done}");

    // Exactly one request reached the provider, with the rendered credential replacing the forged one.
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/allowed/items");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Token {secret}").as_str())
    );

    // The model saw the provider's answer, then the two refusals.
    let reqs = fake.requests();
    let bodies: Vec<String> = reqs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(bodies[1].contains("items"), "{}", bodies[1]);
    assert!(bodies[2].contains("target_not_authorized"), "{}", bodies[2]);
    assert!(
        bodies[3].contains("blocked_address") || bodies[3].contains("target_not_authorized"),
        "{}",
        bodies[3]
    );
    for b in &bodies {
        assert!(!b.contains(secret), "the credential reached the model");
    }
    let rows = logs(&app, &id).await;
    assert!(!Value::Array(rows).to_string().contains(secret));
    let run_json = app
        .key(Method::GET, &format!("/api/runs/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!run_json.contains(secret));
}

/// The project's example agent (examples/agents/hello.afps) runs to success: its input default is applied
/// and its output schema is enforced.
#[tokio::test]
async fn the_example_hello_agent_runs_to_success() {
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"greeting": "Hello, Ada!", "language": "en"}}),
    )])
    .await;
    let app = llm_app(&fake, &[]).await;
    import(&app, fixture("../examples/agents/hello.afps")).await;
    // Input is validated against the manifest's schema first.
    let r = app
        .key(Method::POST, "/api/agents/@examples/hello/run")
        .json(&json!({"input": {"name": ""}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "validation_failed");
    assert!(
        b["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("input."),
        "{b}"
    );

    let run = start(
        &app,
        "/api/agents/@examples/hello/run",
        json!({"input": {"name": "Ada"}}),
    )
    .await;
    assert_eq!(
        run["input"]["language"], "en",
        "the schema default is applied"
    );
    assert_eq!(run["timeout_seconds"], 60);
    let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"]["output"]["greeting"], "Hello, Ada!");
    let system = system_prompt(&fake.requests()[0]).unwrap();
    assert!(system.contains("Ada") || fake.requests()[0].body.windows(3).any(|w| w == b"Ada"));
}

/// A stand-in runner: a shell script (the platform treats it like the real runner binary).
fn script_runner(dir: &std::path::Path, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("runner.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// A runner that ignores SIGTERM is SIGKILLed once the 5 s grace has passed.
#[tokio::test]
async fn a_runner_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    // The ignored disposition survives exec, so `sleep` ignores SIGTERM too.
    let runner = script_runner(dir.path(), "trap '' TERM\nexec sleep 120");
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[("RUNNER_BIN", &runner)]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let pid = wait_for_pid(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid));

    let t = Instant::now();
    // The cancel answers once the workload is gone, so it runs alongside the checks.
    let cancel = {
        let request = app.key(Method::POST, &format!("/api/runs/{id}/cancel"));
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    // SIGTERM is ignored: still there well into the grace period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(pid), "the runner should have ignored SIGTERM");
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_millis(6500),
            "not SIGKILLed after the 5 s grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(4500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(cancel.await.unwrap(), 200);
    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "cancelled");
}

/// A runner that dies with code 3 fails the run with the exit code, and its last output lines are kept
/// with the run (an error log row), even when it exits right after writing them.
#[tokio::test]
async fn a_runner_exiting_with_code_3_keeps_its_last_output() {
    let dir = tempfile::tempdir().unwrap();
    let runner = script_runner(
        dir.path(),
        "i=0\nwhile [ $i -lt 300 ]; do echo \"noise $i\" >&2; i=$((i+1)); done\n\
         echo 'fatal: cannot open the workspace' >&2\nexit 3",
    );
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[("RUNNER_BIN", &runner)]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], "Agent process exited with code 3");
    let rows = logs(&app, &id).await;
    let output = rows
        .iter()
        .find(|l| l["event"] == "runner_output")
        .unwrap_or_else(|| panic!("no runner_output log: {rows:#?}"));
    assert_eq!(output["level"], "error");
    assert_eq!(output["type"], "system");
    assert!(
        output["message"]
            .as_str()
            .unwrap()
            .contains("fatal: cannot open the workspace"),
        "{output}"
    );
    let lines: Vec<&str> = output["data"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 50, "the last 50 lines");
    assert_eq!(*lines.last().unwrap(), "fatal: cannot open the workspace");
    assert_eq!(lines[0], "noise 251");
    assert_eq!(output["data"]["exitCode"], 3);
}

/// `per_org_global_rate_per_min`: the run after the limit is refused with 429.
#[tokio::test]
async fn the_per_org_run_rate_gate_answers_429() {
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(30_000)]).await;
    let app = llm_app(
        &fake,
        &[(
            "PLATFORM_RUN_LIMITS",
            r#"{"per_org_global_rate_per_min": 2, "max_concurrent_per_org": 50}"#,
        )],
    )
    .await;
    for i in 0..2 {
        start(
            &app,
            "/api/runs/inline",
            inline(json!({}), &format!("run {i}")),
        )
        .await;
    }
    let r = app
        .key(Method::POST, "/api/runs/inline")
        .json(&inline(json!({}), "one too many"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "org_run_rate_limited", "{b}");
    let list: Value = app
        .key(Method::GET, "/api/runs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "no third run row"
    );
}

/// The application-wide stream `/api/realtime/runs` carries a `run_update` for a run created after it
/// was opened.
#[tokio::test]
async fn the_app_wide_stream_reports_new_runs() {
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"ok": true}}),
    )])
    .await;
    let app = llm_app(&fake, &[]).await;
    let mut resp = app
        .client
        .get(app.url(&format!("/api/realtime/runs?token={}", app.api_key)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The opening ping: the subscription is in place.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("ping"));
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut statuses = Vec::new();
    while !statuses.contains(&"success".to_string()) {
        assert!(Instant::now() < deadline, "no terminal run_update: {text}");
        let chunk = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .expect("a frame")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        statuses = text
            .split("\n\n")
            .filter(|f| f.contains("event: run_update"))
            .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["id"] == id.as_str() || v["runId"] == id.as_str())
            .map(|v| v["status"].as_str().unwrap_or("").to_string())
            .collect();
    }
    assert!(
        statuses.iter().any(|s| s == "pending" || s == "running"),
        "{statuses:?}"
    );
    assert!(!text.contains(CANARY));
}

/// `allow_all_uris` lifts the URI allow-list, never the SSRF rules: metadata, private, loopback and
/// IPv4-mapped loopback addresses are still refused by the sidecar, and nothing reaches them.
#[tokio::test]
async fn allow_all_uris_still_blocks_internal_addresses() {
    use appstrate::packages::afps::build_zip;
    use test_support::fake_upstream::{FakeUpstream, UpstreamResponse};

    let upstream = FakeUpstream::start().await;
    upstream.on(
        "/secret",
        UpstreamResponse::json(200, json!({"leak": true})),
    );
    let port = upstream.url().rsplit(':').next().unwrap().to_string();
    let integration = json!({
        "schema_version": "0.1", "name": "@tests/anywhere", "version": "1.0.0", "type": "integration",
        "display_name": "Anywhere", "description": "Any URI",
        "auths": {"main": {
            "type": "api_key",
            "allow_all_uris": true,
            "credentials": {"schema": {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}},
            "delivery": {"http": {"in": "header", "name": "Authorization", "value": "{$credential.token}"}}
        }}
    });
    let agent = json!({
        "schema_version": "0.1", "name": "@tests/prober", "version": "1.0.0", "type": "agent",
        "display_name": "Prober", "dependencies": {"integrations": {"@tests/anywhere": "^1.0.0"}}
    });
    let targets = [
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.1/".to_string(),
        format!("http://[::1]:{port}/secret"),
        format!("http://[::ffff:127.0.0.1]:{port}/secret"),
    ];
    let mut turns: Vec<Turn> = targets
        .iter()
        .map(|url| {
            Turn::tool_call(
                "api_call",
                json!({"integration": "@tests/anywhere", "method": "GET", "url": url}),
            )
        })
        .collect();
    turns.push(Turn::tool_call("output", json!({"data": {"done": true}})));
    let fake = FakeLlm::start(turns).await;
    let app = llm_app(&fake, &[]).await;
    import(
        &app,
        build_zip(&[("manifest.json", integration.to_string().as_bytes())]),
    )
    .await;
    import(
        &app,
        build_zip(&[
            ("manifest.json", agent.to_string().as_bytes()),
            ("prompt.md", b"Probe."),
        ]),
    )
    .await;
    let r = app
        .key(
            Method::PUT,
            "/api/packages/@tests/anywhere/connections/main",
        )
        .json(&json!({"credentials": {"token": "tok-anywhere-77"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run = start(&app, "/api/agents/@tests/prober/run", json!({})).await;
    let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");

    let bodies: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), targets.len() + 1);
    for (i, target) in targets.iter().enumerate() {
        // The model's view after call i is request i + 1.
        assert!(
            bodies[i + 1].contains("blocked_address"),
            "{target} was not refused as a blocked address: {}",
            bodies[i + 1]
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "a loopback target was reached: {:?}",
        upstream.requests()
    );
}

/// `LLM_API=anthropic-messages`: a run end to end against the fake's messages API, with the key
/// injected by the sidecar (never in the runner's environment).
#[tokio::test]
async fn an_anthropic_run_succeeds_end_to_end() {
    let fake = FakeLlm::start(vec![
        Turn::tool_call("log", json!({"level": "info", "message": "thinking"})),
        Turn::tool_call("output", json!({"data": {"answer": 42}})).with_usage(11, 5),
    ])
    .await;
    let app = llm_app(&fake, &[("LLM_API", "anthropic-messages")]).await;
    let run = start(
        &app,
        "/api/runs/inline",
        inline(json!({}), "What is the answer?"),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"]["output"]["answer"], 42);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(
            r.header("x-api-key"),
            Some(CANARY),
            "injected by the sidecar"
        );
        assert!(r.header("anthropic-version").is_some());
        assert!(r.header("authorization").is_none());
    }
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert!(
        body["system"].to_string().contains("What is the answer?")
            || String::from_utf8_lossy(&reqs[0].body).contains("What is the answer?")
    );
    assert!(logs(&app, &id)
        .await
        .iter()
        .any(|l| l["message"] == "thinking"));
}

/// Graceful shutdown (SIGTERM) closes SSE streams and answers long-polls at once (§5.3 step 1), so
/// neither holds the server open: it exits 0 within a few seconds.
#[tokio::test]
async fn sigterm_ends_sse_streams_and_long_polls_promptly() {
    use std::process::{Command, Stdio};
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(120_000)]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env: Vec<(&str, String)> = vec![
        ("BETTER_AUTH_SECRET", "s".into()),
        ("UPLOAD_SIGNING_SECRET", "0123456789abcdef".into()),
        (
            "CONNECTION_ENCRYPTION_KEY",
            test_support::app::TEST_ENCRYPTION_KEY.into(),
        ),
        ("PORT", port.to_string()),
        ("HOST", "127.0.0.1".into()),
        ("LLM_BASE_URL", fake.url()),
        ("LLM_API_KEY", "sk-test".into()),
        ("LLM_MODEL", "m".into()),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1".into()),
        (
            "RUNNER_BIN",
            test_support::app::runner_bin()
                .to_string_lossy()
                .into_owned(),
        ),
        ("SYSTEM_PACKAGES_DIR", "./none".into()),
        ("SHUTDOWN_GRACE_SECONDS", "1".into()),
    ];
    let command = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appstrate"));
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd
    };
    let out = command(&["bootstrap"]).output().unwrap();
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();
    // Waited for below (SIGTERM + wait); killed if the test fails first.
    #[allow(clippy::zombie_processes)]
    let mut server = command(&["serve"]).stderr(Stdio::null()).spawn().unwrap();
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            unsafe {
                libc::kill(self.0 as i32, libc::SIGKILL);
            }
        }
    }
    let _guard = KillOnDrop(server.id());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run: Value = client
        .post(format!("{base}/api/runs/inline"))
        .bearer_auth(&key)
        .json(&inline(json!({}), "x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();

    // Two streams and a long-poll, read to their end in the background.
    let stream = |path: String| {
        let client = client.clone();
        tokio::spawn(async move {
            let resp = client.get(path).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let _ = resp.text().await;
            Instant::now()
        })
    };
    let one = stream(format!("{base}/api/realtime/runs/{id}?token={key}"));
    let all = stream(format!("{base}/api/realtime/runs?token={key}"));
    let poll = {
        let client = client.clone();
        let url = format!("{base}/api/runs/{id}?wait=55");
        let key = key.clone();
        tokio::spawn(async move {
            let r = client.get(url).bearer_auth(key).send().await.unwrap();
            let status = r.status().as_u16();
            let _ = r.text().await;
            (status, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!one.is_finished() && !all.is_finished() && !poll.is_finished());

    let sigterm = Instant::now();
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let ended = |t: Instant| t.duration_since(sigterm);
    let one = tokio::time::timeout(Duration::from_secs(5), one)
        .await
        .expect("the run stream ends at shutdown")
        .unwrap();
    let all = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("the app-wide stream ends at shutdown")
        .unwrap();
    let (status, answered) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll is answered at shutdown")
        .unwrap();
    assert_eq!(status, 200);
    for t in [one, all, answered] {
        assert!(ended(t) < Duration::from_secs(3), "{:?}", ended(t));
    }
    // Grace (1 s) for the run, then exit 0 — well before grace + 10 s.
    let deadline = Instant::now() + Duration::from_secs(8);
    let code = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
}

/// Process mode: the in-process sidecar listens on loopback, where any local process could reach it. It
/// refuses every caller without the run token, while the real runner (which holds it) completes its run.
#[tokio::test]
async fn the_sidecar_refuses_local_callers_without_the_run_token() {
    let output = json!({"done": true});
    // The first model answer waits, so the run is live while another local process tries the sidecar.
    let fake = FakeLlm::start(vec![
        Turn::tool_call("output", json!({"data": output})).with_delay(3000)
    ])
    .await;
    let app = llm_app(&fake, &[]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "Answer.")).await;
    let id = run["id"].as_str().unwrap().to_string();
    let pid = wait_for_pid(&app, &id).await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let env: std::collections::HashMap<String, String> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            String::from_utf8_lossy(kv)
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let sidecar = env["SIDECAR_URL"].clone();
    let token = env["MODEL_API_KEY"].clone();
    assert!(token.starts_with("sct_") && token.len() >= 36, "{token}");
    let proxy = env["HTTP_PROXY"].clone();
    assert!(
        proxy.contains(&format!("run:{token}@127.0.0.1:")),
        "{proxy}"
    );
    let proxy_addr = proxy.rsplit_once('@').unwrap().1.to_string();

    let other = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = other
        .post(format!("{sidecar}/llm/openai/chat/completions"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = other
        .post(format!("{sidecar}/proxy"))
        .header("x-target", fake.url())
        .header("x-integration", "@tests/any")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy_addr}")).unwrap())
        .build()
        .unwrap()
        .get(format!("{}/models", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    // With the token, the same process gets past the check (and stops at the missing header).
    let r = other
        .post(format!("{sidecar}/proxy"))
        .header("proxy-authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "missing_target");

    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"]["output"], output);
    // Only the runner's call reached the model, with the real key and without the token.
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(fake.authorizations(), vec![format!("Bearer {CANARY}")]);
    for r in fake.requests() {
        assert!(!format!("{:?}", r.headers).contains(&token));
    }
}
