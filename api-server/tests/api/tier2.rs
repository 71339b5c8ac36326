//! Tier 2 end to end: two API instances sharing PostgreSQL and a private redis-server. Rate limits are
//! shared, runs are cancelled and streamed across instances, each cron occurrence fires exactly once,
//! killing an instance loses no scheduled work, and a Redis restart is survived.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::{runner_bin, TestApp, TEST_ENCRYPTION_KEY};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::require;
use test_support::services::{free_port, postgres_database, RedisServer};
use test_support::spawn_app_with;

const LIMITS: &str = r#"{"per_org_global_rate_per_min": 10000, "max_concurrent_per_org": 500}"#;

/// Instance A on `pg` + `redis` (with the fake LLM and `extra`), and its sibling B.
async fn pair(
    pg: &str,
    redis: &RedisServer,
    fake: &FakeLlm,
    extra: &[(&str, &str)],
) -> (TestApp, TestApp) {
    let url = fake.url();
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", pg),
        ("REDIS_URL", redis.url.as_str()),
        ("LLM_BASE_URL", url.as_str()),
        ("LLM_API_KEY", "sk-test-tiers"),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        ("PLATFORM_RUN_LIMITS", LIMITS),
    ];
    env.extend_from_slice(extra);
    let a = spawn_app_with(&env).await;
    let b = a.sibling(&[]).await;
    (a, b)
}

async fn json_of(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn inline_run(name: &str) -> Value {
    json!({
        "manifest": {"schema_version": "0.1", "name": name, "version": "1.0.0", "type": "agent",
                     "display_name": "Tier 2"},
        "prompt": "x",
    })
}

async fn start_inline(app: &TestApp, name: &str) -> String {
    let (s, b) = json_of(
        app.key(Method::POST, "/api/runs/inline")
            .json(&inline_run(name)),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

fn runner_pid(app: &TestApp, run_id: &str) -> Option<i32> {
    std::fs::read_to_string(app.data_dir.join(format!("runs/{run_id}/runner.pid")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

async fn wait_for_pid(app: &TestApp, run_id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = runner_pid(app, run_id) {
            return pid;
        }
        assert!(Instant::now() < deadline, "runner never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(app: &TestApp) -> (u16, Value) {
    json_of(app.client.get(app.url("/health"))).await
}

async fn wait_healthy(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = health(app).await;
        if s == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never healthy again: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The SSE stream of one run on `app`, read until it closes (after the terminal update).
async fn sse_events(app: &TestApp, run_id: &str) -> (Vec<String>, String) {
    let url = app.url(&format!(
        "/api/realtime/runs/{run_id}?token={}&verbose=true",
        app.api_key
    ));
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the stream closes after the terminal update")
        .unwrap();
    let events = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_string)
        .collect();
    (events, body)
}

fn last_data(body: &str) -> Value {
    serde_json::from_str(
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn two_instances_share_one_rate_limit_and_report_redis_in_health() {
    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![]).await;
    let (a, b) = pair(&pg, &redis, &fake, &[]).await;

    for app in [&a, &b] {
        let (s, h) = health(app).await;
        assert_eq!(s, 200, "{h}");
        assert_eq!(h["tier"], 2);
        assert_eq!(h["adapters"]["queue"], "redis");
        assert_eq!(h["adapters"]["pubsub"], "redis");
        assert_eq!(h["adapters"]["rate_limiter"], "redis");
        assert_eq!(h["adapters"]["database"], "postgres");
        assert_eq!(h["checks"]["redis"]["status"], "healthy");
    }

    // POST /api/api-keys: 10 per 60 s per caller, across both instances together.
    for i in 1..=10u32 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": format!("k{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.headers()["ratelimit"],
            format!("limit=10, remaining={}, reset=60", 10 - i).as_str()
        );
        assert_eq!(r.headers()["ratelimit-policy"], "10;w=60");
    }
    for app in [&a, &b] {
        let r = app
            .admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": "over"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let reset: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset));
        assert_eq!(
            r.headers()["ratelimit"],
            format!("limit=10, remaining=0, reset={reset}").as_str()
        );
    }
    // Exactly 10 keys were created (plus the bootstrap key).
    let (_, list) = json_of(a.admin(Method::GET, "/api/api-keys?limit=100")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 11);
}

#[tokio::test]
async fn a_run_on_one_instance_is_cancelled_and_streamed_through_the_other() {
    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![
        Turn::tool_call("log", json!({"level": "info", "message": "working on A"}))
            .with_delay(2000),
        Turn::tool_call("output", json!({"data": {"ok": true}})),
    ])
    .await;
    let (a, b) = pair(&pg, &redis, &fake, &[]).await;

    // SSE on B for a run executing on A.
    let id = start_inline(&a, "@tiers/streamed").await;
    let (events, body) = sse_events(&b, &id).await;
    assert_eq!(events[0], "ping");
    assert_eq!(events[1], "run_update");
    assert!(events.iter().any(|e| e == "run_log"), "{events:?}");
    assert!(body.contains("working on A"), "{body}");
    assert!(events.iter().any(|e| e == "run_metric"), "{events:?}");
    assert_eq!(events.last().unwrap(), "run_update");
    assert_eq!(last_data(&body)["status"], "success");
    assert!(runner_pid(&b, &id).is_none(), "the run executed on A");

    // Cancel through B a run whose runner lives on A (its model call hangs).
    fake.push(Turn::text("slow").with_delay(120_000));
    let id = start_inline(&a, "@tiers/cancelled").await;
    let pid = wait_for_pid(&a, &id).await;
    // A long-poll on A wakes when B cancels.
    let waiter = {
        let client = a.client.clone();
        let url = a.url(&format!("/api/runs/{id}?wait=30"));
        let key = a.api_key.clone();
        tokio::spawn(async move {
            let v: Value = client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (s, run) = json_of(b.key(Method::POST, &format!("/api/runs/{id}/cancel"))).await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["error"], "Cancelled by user");
    // The runner on A gets SIGTERM through appstrate:runs:cancel (SIGKILL after 5 s at worst).
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "runner on A still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "runner on A stopped {:?} after the cancel on B",
        t.elapsed()
    );
    let v = waiter.await.unwrap();
    assert_eq!(v["status"], "cancelled");
    let (_, on_a) = json_of(a.key(Method::GET, &format!("/api/runs/{id}"))).await;
    assert_eq!(on_a["status"], "cancelled");
}

/// `scheduled_for` of every run of a schedule, straight from the shared database.
async fn occurrences(pg: &str, schedule_id: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(pg).await.unwrap();
    sqlx::query_scalar(
        "SELECT scheduled_for FROM runs WHERE schedule_id = $1 ORDER BY scheduled_for",
    )
    .bind(schedule_id)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Every occurrence between the first and the last is there exactly once (`step` seconds apart).
fn assert_exactly_once(times: &[chrono::DateTime<chrono::Utc>], step: i64, at_least: usize) {
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "duplicate fires: {times:?}");
    assert!(
        times.len() >= at_least,
        "{} occurrences: {times:?}",
        times.len()
    );
    for w in times.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_seconds(),
            step,
            "gap or misaligned occurrence between {} and {}",
            w[0],
            w[1]
        );
    }
}

async fn create_agent_and_schedule(app: &TestApp, agent: &str, cron: &str) -> String {
    let body = json!({
        "manifest": {"schema_version": "0.1", "name": agent, "version": "1.0.0", "type": "agent",
                     "display_name": "Cron agent"},
        "files": {"prompt.md": "Say hello"}
    });
    let (s, b) = json_of(app.key(Method::POST, "/api/packages").json(&body)).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json_of(
        app.key(Method::POST, &format!("/api/agents/{agent}/schedules"))
            .json(&json!({"cron_expression": cron})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_cron_schedule_fires_each_occurrence_exactly_once_across_two_instances() {
    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![]).await;
    let (a, b) = pair(
        &pg,
        &redis,
        &fake,
        &[("SCHEDULER_POLL_INTERVAL_SECONDS", "1")],
    )
    .await;
    let id = create_agent_and_schedule(&a, "@tiers/every-second", "* * * * * *").await;

    let deadline = Instant::now() + Duration::from_secs(120);
    while occurrences(&pg, &id).await.len() < 22 {
        assert!(
            Instant::now() < deadline,
            "fewer than 22 occurrences in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (s, _) = json_of(
        b.key(Method::PUT, &format!("/api/schedules/{id}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200);
    // Let an in-flight tick finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let times = occurrences(&pg, &id).await;
    assert_exactly_once(&times, 1, 22);
}

#[tokio::test]
async fn a_redis_restart_is_survived_by_both_instances() {
    let pg = require!(postgres_database().await);
    let mut redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![]).await;
    let (a, b) = pair(
        &pg,
        &redis,
        &fake,
        &[("SCHEDULER_POLL_INTERVAL_SECONDS", "1")],
    )
    .await;
    let schedule = create_agent_and_schedule(&a, "@tiers/through-restart", "*/2 * * * * *").await;

    // Redis down: /health says so, rate-limited routes fail open.
    redis.stop();
    let (s, h) = health(&b).await;
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert_eq!(h["checks"]["redis"]["status"], "unhealthy");
    let r = b
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "while-down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "fail-open while Redis is down");
    assert!(r.headers().get("ratelimit").is_none());
    let metrics = b
        .client
        .get(b.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("appstrate_rate_limiter_errors_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back up (same data): everything recovers.
    redis.restart();
    let restarted = chrono::Utc::now();
    wait_healthy(&a).await;
    wait_healthy(&b).await;
    let r = b
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("ratelimit").is_some());

    // The cron clock kept going: occurrences after the restart, each once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let times = occurrences(&pg, &schedule).await;
        if times.iter().filter(|t| **t > restarted).count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fires after the restart: {times:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (s, _) = json_of(
        a.key(Method::PUT, &format!("/api/schedules/{schedule}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let times = occurrences(&pg, &schedule).await;
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "duplicate fires: {times:?}");
    // Scheduled runs are done with the fake LLM: wait for them before scripting the next run.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, open) = json_of(a.key(Method::GET, "/api/runs?status=running&limit=100")).await;
        let (_, pending) = json_of(a.key(Method::GET, "/api/runs?status=pending&limit=100")).await;
        if open["data"].as_array().unwrap().is_empty()
            && pending["data"].as_array().unwrap().is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "scheduled runs did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Pub/sub resumed: B streams a run executing on A (the snapshot comes from the database, every later
    // frame through Redis, and the stream closes only on the terminal update received from Redis).
    fake.push(
        Turn::tool_call(
            "log",
            json!({"level": "info", "message": "after the restart"}),
        )
        .with_delay(2000),
    );
    fake.push(Turn::tool_call("output", json!({"data": {"ok": true}})));
    let id = start_inline(&a, "@tiers/after-restart").await;
    let (events, body) = sse_events(&b, &id).await;
    assert!(body.contains("after the restart"), "{events:?}");
    assert_eq!(last_data(&body)["status"], "success");
}

// ---------------------------------------------------------------------------------------------------
// Real processes: SIGKILL one of two instances.
// ---------------------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");

fn process_env(
    pg: &str,
    redis: &str,
    llm: &str,
    storage: &str,
    port: u16,
) -> Vec<(&'static str, String)> {
    vec![
        ("BETTER_AUTH_SECRET", "s".into()),
        ("UPLOAD_SIGNING_SECRET", "0123456789abcdef".into()),
        ("CONNECTION_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY.into()),
        ("DATABASE_URL", pg.into()),
        ("REDIS_URL", redis.into()),
        ("FS_STORAGE_PATH", storage.into()),
        ("PORT", port.to_string()),
        ("HOST", "127.0.0.1".into()),
        ("LLM_BASE_URL", llm.into()),
        ("LLM_API_KEY", "sk-test".into()),
        ("LLM_MODEL", "m".into()),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1".into()),
        ("PLATFORM_RUN_LIMITS", LIMITS.into()),
        ("SCHEDULER_POLL_INTERVAL_SECONDS", "1".into()),
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

/// Kills (SIGKILL) and reaps the child on drop, so a failing test leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(dir: &std::path::Path, env: &[(&'static str, String)], port: u16) -> Server {
    let child = command(dir, &["serve"], env)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            if r.status() == 200 {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn killing_one_of_two_instances_loses_no_scheduled_occurrence() {
    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![]).await;
    let storage = tempfile::tempdir().unwrap();
    let storage_path = storage.path().to_string_lossy().into_owned();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(), free_port());
    let env_a = process_env(&pg, &redis.url, &fake.url(), &storage_path, port_a);
    let env_b = process_env(&pg, &redis.url, &fake.url(), &storage_path, port_b);
    let out = command(dir_a.path(), &["bootstrap"], &env_a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();

    let mut a = serve(dir_a.path(), &env_a, port_a).await;
    let _b = serve(dir_b.path(), &env_b, port_b).await;
    let client = reqwest::Client::new();
    let on = |port: u16, method: Method, path: &str| {
        client
            .request(method, format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(&key)
    };
    let agent = "@tiers/survivor";
    let (s, b) = json_of(on(port_b, Method::POST, "/api/packages").json(&json!({
        "manifest": {"schema_version": "0.1", "name": agent, "version": "1.0.0", "type": "agent",
                     "display_name": "Survivor"},
        "files": {"prompt.md": "Say hello"}
    })))
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json_of(
        on(
            port_b,
            Method::POST,
            &format!("/api/agents/{agent}/schedules"),
        )
        .json(&json!({"cron_expression": "*/2 * * * * *"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();

    let wait_for = |n: usize| {
        let pg = pg.clone();
        let id = id.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while occurrences(&pg, &id).await.len() < n {
                assert!(Instant::now() < deadline, "fewer than {n} occurrences");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for(4).await;
    // Crash A: no goodbye, its cron lease (if it held it) and connections just vanish.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed_at = occurrences(&pg, &id).await.len();
    wait_for(killed_at + 6).await;
    let (s, _) = json_of(
        on(port_b, Method::PUT, &format!("/api/schedules/{id}")).json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let times = occurrences(&pg, &id).await;
    assert_exactly_once(&times, 2, killed_at + 6);
}

#[tokio::test]
async fn an_unreachable_redis_stops_boot_naming_redis_url_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let closed = free_port();
    let mut env = process_env("", "", "http://127.0.0.1:9", "./storage", port);
    env.retain(|(k, _)| *k != "REDIS_URL" && *k != "DATABASE_URL");
    env.push((
        "REDIS_URL",
        format!("redis://:pa55-w0rd-x@127.0.0.1:{closed}"),
    ));
    let out = command(dir.path(), &["serve"], &env).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
    assert!(stderr.contains("redis-cli"), "{stderr}");
    assert!(!stderr.contains("pa55-w0rd-x"), "{stderr}");
}

/// A webhook retry queued by an instance that is then SIGKILLed is delivered by an instance started
/// afterwards: the job lives in Redis, not in the dead process.
#[tokio::test]
async fn a_webhook_retry_queued_by_a_killed_instance_is_delivered_by_another() {
    use appstrate::infra::queue::{RedisQueue, RedisQueueOptions};
    use test_support::webhook_receiver::{Reply, WebhookReceiver};

    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"ok": true}}),
    )])
    .await;
    let receiver = WebhookReceiver::start(vec![Reply::Status(500)]).await;
    let storage = tempfile::tempdir().unwrap();
    let storage_path = storage.path().to_string_lossy().into_owned();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(), free_port());
    let with_retry = |mut env: Vec<(&'static str, String)>| {
        env.push(("WEBHOOK_RETRY_DELAYS_SECONDS", "8".into()));
        env.push(("WEBHOOK_TIMEOUT_SECONDS", "5".into()));
        env
    };
    let env_a = with_retry(process_env(
        &pg,
        &redis.url,
        &fake.url(),
        &storage_path,
        port_a,
    ));
    let env_b = with_retry(process_env(
        &pg,
        &redis.url,
        &fake.url(),
        &storage_path,
        port_b,
    ));
    let out = command(dir_a.path(), &["bootstrap"], &env_a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let on = |port: u16, method: Method, path: &str| {
        client
            .request(method, format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(&key)
    };

    let mut a = serve(dir_a.path(), &env_a, port_a).await;
    let (s, hook) = json_of(on(port_a, Method::POST, "/api/webhooks").json(&json!({
        "url": receiver.url("/hook"), "events": ["run.success"]
    })))
    .await;
    assert_eq!(s, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let (s, run) =
        json_of(on(port_a, Method::POST, "/api/runs/inline").json(&inline_run("@tiers/hooked")))
            .await;
    assert_eq!(s, 201, "{run}");
    let run_id = run["id"].as_str().unwrap().to_string();
    let (_, run) = json_of(on(
        port_a,
        Method::GET,
        &format!("/api/runs/{run_id}?wait=30"),
    ))
    .await;
    assert_eq!(run["status"], "success", "{run}");

    // Attempt 1 gets a 500; A queues attempt 2 (8 s later) in Redis, then dies.
    let first = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(first[0].header("webhook-attempt").as_deref(), Some("1"));
    let queue = RedisQueue::new(
        appstrate::infra::redis_client::Redis::connect(&redis.url)
            .await
            .unwrap(),
        RedisQueueOptions::new(Duration::from_secs(30)),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.counts().await.unwrap().delayed != 1 {
        assert!(Instant::now() < deadline, "attempt 2 never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    assert_eq!(receiver.received().len(), 1, "A died before attempt 2");

    // A new instance picks the retry up from Redis.
    let _b = serve(dir_b.path(), &env_b, port_b).await;
    let got = receiver.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("webhook-attempt").as_deref(), Some("2"));
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert!(got[1].signed_with(hook["secret"].as_str().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = json_of(on(
            port_b,
            Method::GET,
            &format!("/api/webhooks/{hook_id}/deliveries"),
        ))
        .await;
        let rows = list["data"].as_array().cloned().unwrap_or_default();
        if rows
            .iter()
            .any(|d| d["attempt"] == 2 && d["status"] == "success")
        {
            break;
        }
        assert!(Instant::now() < deadline, "attempt 2 not recorded: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.delayed, counts.processing, counts.dead), (0, 0, 0));
}

/// A signed request to the event sink of `run_id` on `app`.
async fn sink_post(
    app: &TestApp,
    run_id: &str,
    secret: &str,
    path: &str,
    body: &Value,
    webhook_id: &str,
) -> reqwest::Response {
    let raw = body.to_string();
    let ts = chrono::Utc::now().timestamp();
    let sig = appstrate::runs::sink::sign(secret.as_bytes(), webhook_id, ts, raw.as_bytes());
    app.client
        .post(app.url(&format!("/api/runs/{run_id}{path}")))
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", format!("v1,{sig}"))
        .body(raw)
        .send()
        .await
        .unwrap()
}

fn progress(run_id: &str, seq: i64) -> Value {
    json!({"specversion": "1.0", "type": "appstrate.progress", "source": format!("/afps/runs/{run_id}"),
           "id": format!("evt-{seq}"), "time": "2026-11-23T00:00:00Z", "datacontenttype": "application/json",
           "data": {"message": format!("m{seq}")}, "sequence": seq})
}

async fn outcome(r: reqwest::Response) -> String {
    let status = r.status();
    let b: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{b}");
    b["outcome"].as_str().unwrap().to_string()
}

/// The event sink's replay memory, gap buffer and per-run lock live in Redis: an event id accepted by
/// A is a replay on B, out-of-order events buffered on different instances are persisted in order,
/// concurrent deliveries through both instances persist each sequence once, and a Redis outage is a
/// 503 `sink_unavailable` the runner can retry.
#[tokio::test]
async fn the_event_sink_dedupes_and_orders_events_across_instances() {
    use std::os::unix::fs::PermissionsExt;
    let pg = require!(postgres_database().await);
    let mut redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![]).await;
    // A workload that stays silent, so only the test talks to the sink.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silent-runner");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 120\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (a, b) = pair(
        &pg,
        &redis,
        &fake,
        &[("RUNNER_BIN", script.to_str().unwrap())],
    )
    .await;
    let run_id = start_inline(&a, "@tiers/sink").await;
    let row = a.state().infra.db.get_run(&run_id).await.unwrap().unwrap();
    let secret = String::from_utf8(
        a.state()
            .keyring
            .decrypt(&row.sink_secret_encrypted)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(a.state().infra.sink_memory.kind(), "redis");
    macro_rules! post {
        ($app:expr, $seq:expr, $id:expr) => {
            sink_post(
                $app,
                &run_id,
                &secret,
                "/events",
                &progress(&run_id, $seq),
                $id,
            )
        };
    }

    // Sequence 2 is early: buffered by A. The same webhook-id through B is a replay (the buffered event
    // is not in the database, so only the shared memory can know).
    assert_eq!(outcome(post!(&a, 2, "w-2").await).await, "buffered");
    assert_eq!(outcome(post!(&b, 2, "w-2").await).await, "replay");
    // 4 buffered by A, 3 by B; 1 through A persists 1 and drains 2, 3 and 4 in order.
    assert_eq!(outcome(post!(&a, 4, "w-4").await).await, "buffered");
    assert_eq!(outcome(post!(&b, 3, "w-3").await).await, "buffered");
    assert_eq!(outcome(post!(&a, 1, "w-1").await).await, "persisted");
    assert_eq!(outcome(post!(&b, 1, "w-1").await).await, "replay");

    // 5..=30 delivered concurrently, in reverse order, each through both instances.
    let mut tasks = tokio::task::JoinSet::new();
    for seq in (5..=30i64).rev() {
        for app in [&a, &b] {
            let (client, url) = (app.client.clone(), app.url(""));
            let (run_id, secret) = (run_id.clone(), secret.clone());
            tasks.spawn(async move {
                let raw = progress(&run_id, seq).to_string();
                let ts = chrono::Utc::now().timestamp();
                let id = format!("w-{seq}");
                let sig = appstrate::runs::sink::sign(secret.as_bytes(), &id, ts, raw.as_bytes());
                let r = client
                    .post(format!("{url}/api/runs/{run_id}/events"))
                    .header("content-type", "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", format!("v1,{sig}"))
                    .body(raw)
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            });
        }
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let logs: Value = b
        .key(Method::GET, &format!("/api/runs/{run_id}/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages: Vec<&str> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["event"] == "progress")
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=30).map(|i| format!("m{i}")).collect();
    assert_eq!(messages, expected, "each sequence once, in order");
    let row = b.state().infra.db.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(row.last_event_sequence, 30);

    // Redis down: the sink answers 503 sink_unavailable (problem+json), and the retry succeeds.
    redis.stop();
    let r = post!(&b, 31, "w-31").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "sink_unavailable", "{body}");
    redis.restart();
    wait_healthy(&b).await;
    assert_eq!(outcome(post!(&b, 31, "w-31").await).await, "persisted");
    assert_eq!(outcome(post!(&a, 31, "w-31").await).await, "replay");
}

/// Through Redis, 1,100 frames on the cancel channel and on one organization's events channel (a
/// stalled local subscriber on each), then a cancel on B of a run held by A: it still reaches A's
/// runner. An SSE client of another organization on A follows its own run to the end meanwhile.
#[tokio::test]
async fn after_a_burst_a_cancel_still_reaches_its_run_and_other_orgs_see_no_gap() {
    use appstrate::infra::pubsub::Channel;
    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(120_000)]).await;
    let (a, b) = pair(&pg, &redis, &fake, &[]).await;
    let other = appstrate::cli::bootstrap_json(a.state().infra.db.as_ref(), "Other", "Other")
        .await
        .unwrap();
    let other_key = other["apiKey"].as_str().unwrap().to_string();

    let id = start_inline(&a, "@tiers/burst").await;
    let pid = wait_for_pid(&a, &id).await;
    // The run is in its (slow) model call, so the turns pushed below are the other run's.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the runner never called the model"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = a
        .client
        .get(a.url(&format!("/api/realtime/runs?token={other_key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()).contains("ping"));

    // Stalled subscribers on A (never read), then the burst published through B.
    let on_a = a.state().infra.pubsub.clone();
    let _stalled_cancel = on_a.subscribe(&Channel::run_cancel()).await.unwrap();
    let busy = Channel::run_events(&a.org_id);
    let _stalled_events = on_a.subscribe(&busy).await.unwrap();
    let on_b = b.state().infra.pubsub.clone();
    for i in 0..1100 {
        on_b.publish(&Channel::run_cancel(), format!("run_elsewhere_{i}"))
            .await
            .unwrap();
        let frame = json!({"event": "run_log", "runId": format!("run_busy_{i}"),
            "applicationId": a.app_id, "status": "running", "terminal": false, "data": {}});
        on_b.publish(&busy, frame.to_string()).await.unwrap();
    }

    let t = Instant::now();
    let (s, run) = json_of(b.key(Method::POST, &format!("/api/runs/{id}/cancel"))).await;
    assert_eq!(s, 200, "{run}");
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the runner on A missed the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The other organization's run, started on B, streamed on A from start to end.
    fake.push(Turn::tool_call(
        "log",
        json!({"level": "info", "message": "quiet org"}),
    ));
    fake.push(Turn::tool_call("output", json!({"data": {"ok": true}})));
    let r = b
        .client
        .post(b.url("/api/runs/inline"))
        .bearer_auth(&other_key)
        .json(&inline_run("@tiers/quiet"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut body = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !body.contains("\"status\":\"success\"") {
        assert!(Instant::now() < deadline, "no terminal update: {body}");
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .expect("the stream stays open")
            .unwrap()
            .expect("the stream stays open");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.contains("\"status\":\"running\""), "{body}");
    assert!(body.contains("event: run_log"), "{body}");
    assert!(!body.contains("run_busy_"), "{body}");
}
