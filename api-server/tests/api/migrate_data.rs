//! `appstrate db migrate-data` (SPEC §5.1, acceptance 16 and 17): Tier 0 data created through the API
//! is copied into PostgreSQL by the real binary, and the server restarted on PostgreSQL serves the same
//! JSON to the same credentials.

use std::path::Path;
use std::process::Output;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::{system_packages_dir, TestApp};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::services;

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");
pub(crate) const BRIEFING: &str = "../../shared/fixtures/afps/agents/briefing-agent/agent.afps";
const CANARY: &str = "sk_live_MIGRATED_CANARY_77";

async fn migrate_data(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["db", "migrate-data"])
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run appstrate")
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) async fn send(req: reqwest::RequestBuilder) -> Value {
    let r = req.send().await.unwrap();
    let status = r.status();
    let url = r.url().path().to_string();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status}: {body}");
    body
}

/// Fields that legitimately change when a credential is used.
pub(crate) fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("lastUsedAt");
            map.remove("last_used_at");
            for (_, x) in map.iter_mut() {
                strip_volatile(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

/// Every GET answer a user of this deployment would look at, with the API key (and, for the org-level
/// routes, the admin token).
pub(crate) async fn snapshot(app: &TestApp, p: &Populated) -> Vec<(String, Value)> {
    let (run_id, schedule_id, end_user, webhook) =
        (&p.run_id, &p.schedule_id, &p.eu_id, &p.webhook_id);
    let key_paths = [
        "/api/end-users".to_string(),
        format!("/api/end-users/{end_user}"),
        "/api/packages".to_string(),
        "/api/packages/@examples/daily-briefing".to_string(),
        "/api/packages/@examples/daily-briefing/versions".to_string(),
        "/api/agents".to_string(),
        "/api/runs".to_string(),
        format!("/api/runs/{run_id}"),
        format!("/api/runs/{run_id}/logs"),
        "/api/schedules".to_string(),
        format!("/api/schedules/{schedule_id}"),
        "/api/packages/@appstrate/stripe/connections/primary".to_string(),
        "/api/webhooks".to_string(),
        format!("/api/webhooks/{webhook}"),
    ];
    let mut out = Vec::new();
    for path in key_paths {
        let mut v = send(app.key(Method::GET, &path)).await;
        strip_volatile(&mut v);
        out.push((path, v));
    }
    for path in ["/api/applications", "/api/api-keys"] {
        let mut v = send(app.admin(Method::GET, path)).await;
        strip_volatile(&mut v);
        out.push((format!("admin {path}"), v));
    }
    out
}

pub(crate) fn assert_same(before: &[(String, Value)], after: &[(String, Value)]) {
    assert_eq!(before.len(), after.len());
    for ((p, a), (_, b)) in before.iter().zip(after) {
        assert_eq!(a, b, "GET {p} differs after the migration");
    }
}

pub(crate) async fn wait_success(app: &TestApp, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let r = send(app.key(Method::GET, &format!("/api/runs/{id}?wait=10"))).await;
        if ["success", "failed", "timeout", "cancelled"].contains(&r["status"].as_str().unwrap()) {
            assert_eq!(r["status"], "success", "{r}");
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} did not finish: {r}"
        );
    }
}

pub(crate) async fn run_briefing(app: &TestApp) -> String {
    let run = send(
        app.key(Method::POST, "/api/agents/@examples/daily-briefing/run")
            .json(
                &json!({"input": {"topic": "Rust", "priority": "high", "audience": "engineers"}}),
            ),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    wait_success(app, &id).await;
    id
}

fn table_counts(stdout: &str) -> Vec<(String, i64)> {
    stdout
        .lines()
        .map(|l| {
            let (t, n) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                t.to_string(),
                n.parse().unwrap_or_else(|_| panic!("bad count in {l:?}")),
            )
        })
        .collect()
}

fn count(counts: &[(String, i64)], table: &str) -> i64 {
    counts
        .iter()
        .find(|(t, _)| t == table)
        .unwrap_or_else(|| panic!("{table} missing from {counts:?}"))
        .1
}

/// What [`populate`] created.
pub(crate) struct Populated {
    pub run_id: String,
    pub schedule_id: String,
    pub eu_id: String,
    pub second_app: Value,
    pub new_key: Value,
    pub webhook_id: String,
}

/// Data of every kind, created through the API: a second application, an API key, an end-user, the
/// imported briefing agent, an encrypted connection, a finished run with its logs and a schedule. The
/// server needs the fake LLM (one `output` turn) and the system packages.
pub(crate) async fn populate(app: &TestApp) -> Populated {
    let second_app = send(
        app.admin(Method::POST, "/api/applications")
            .json(&json!({"name": "Second"})),
    )
    .await;
    let new_key = send(app.admin(Method::POST, "/api/api-keys").json(&json!({
        "name": "ci key", "scopes": ["runs:read", "agents:read"]
    })))
    .await;
    let eu = send(app.key(Method::POST, "/api/end-users").json(&json!({
        "name": "Grace", "email": "grace@example.com", "externalId": "u-42", "metadata": {"plan": "team", "seats": 3}
    })))
    .await;
    let eu_id = eu["id"].as_str().unwrap().to_string();
    let fixture = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(BRIEFING)).unwrap();
    send(
        app.key(Method::POST, "/api/packages/import")
            .header("content-type", "application/zip")
            .body(fixture),
    )
    .await;
    send(
        app.key(
            Method::PUT,
            "/api/packages/@appstrate/stripe/connections/primary",
        )
        .json(&json!({"credentials": {"api_key": CANARY}})),
    )
    .await;
    let run_id = run_briefing(app).await;
    let schedule = send(
        app.key(
            Method::POST,
            "/api/agents/@examples/daily-briefing/schedules",
        )
        .json(&json!({
            "name": "new year", "cron_expression": "0 0 1 1 *", "timezone": "Europe/Paris",
            "input": {"topic": "Rust", "priority": "low", "audience": "all"}
        })),
    )
    .await;
    let schedule_id = schedule["id"].as_str().unwrap().to_string();
    // Only failures are delivered (to a closed loopback port): the successful runs send nothing.
    let webhook = send(app.key(Method::POST, "/api/webhooks").json(&json!({
        "url": "http://127.0.0.1:9/in", "events": ["run.failed"]
    })))
    .await;
    Populated {
        run_id,
        schedule_id,
        eu_id,
        second_app,
        new_key,
        webhook_id: webhook["id"].as_str().unwrap().to_string(),
    }
}

/// A server with the fake LLM and the system packages, on `backend`.
pub(crate) async fn llm_app_on(
    backend: test_support::Backend,
    fake: &FakeLlm,
    extra: &[(&str, &str)],
) -> Option<TestApp> {
    let llm_url = fake.url();
    let packages = system_packages_dir().to_string_lossy().into_owned();
    let mut env = vec![
        ("LLM_BASE_URL", llm_url.as_str()),
        ("LLM_API_KEY", "sk-test-migrate"),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        ("SYSTEM_PACKAGES_DIR", packages.as_str()),
    ];
    env.extend_from_slice(extra);
    test_support::spawn_app_on(backend, &env).await
}

/// A fake LLM whose every run ends with a valid `output` call (`runs` of them).
pub(crate) async fn briefing_llm(runs: usize) -> FakeLlm {
    let output = json!({"topic": "Rust", "keyFindings": ["fast"], "recommendation": "adopt", "confidence": "high"});
    FakeLlm::start(
        (0..runs)
            .map(|_| Turn::tool_call("output", json!({"data": output.clone()})))
            .collect::<Vec<_>>(),
    )
    .await
}

#[tokio::test]
async fn tier0_data_moves_to_postgres_and_is_served_identically() {
    let target = test_support::require!(services::postgres_database().await);
    let fake = briefing_llm(2).await;
    let mut app = llm_app_on(test_support::Backend::Sqlite, &fake, &[])
        .await
        .unwrap();
    let populated = populate(&app).await;
    let Populated {
        run_id,
        second_app,
        new_key,
        ..
    } = &populated;
    let before = snapshot(&app, &populated).await;
    let logs_before = before.iter().find(|(p, _)| p.ends_with("/logs")).unwrap().1["data"]
        .as_array()
        .unwrap()
        .len();
    assert!(logs_before > 2);

    let sqlite = format!("sqlite:{}", app.data_dir.join("appstrate.db").display());
    // While the Tier 0 server runs, its database is refused.
    let o = migrate_data(&["--from", &sqlite, "--to", &target]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("in use by another process"),
        "{}",
        text(&o.stderr)
    );

    app.stop().await;
    let o = migrate_data(&["--from", &sqlite, "--to", &target]).await;
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("password"), "{stderr}");
    let counts = table_counts(&text(&o.stdout));
    assert_eq!(count(&counts, "organizations"), 1);
    assert_eq!(count(&counts, "applications"), 2);
    assert_eq!(count(&counts, "api_keys"), 2);
    assert_eq!(count(&counts, "end_users"), 1);
    assert_eq!(count(&counts, "runs"), 1);
    assert_eq!(count(&counts, "run_logs") as usize, logs_before);
    assert_eq!(count(&counts, "schedules"), 1);
    assert_eq!(count(&counts, "connections"), 1);
    assert_eq!(count(&counts, "webhooks"), 1);
    assert_eq!(
        count(&counts, "packages"),
        13,
        "12 system packages and the agent"
    );
    // Parents before children; progress on stderr for every table.
    let order: Vec<&str> = counts.iter().map(|(t, _)| t.as_str()).collect();
    let pos = |t: &str| order.iter().position(|x| *x == t).unwrap();
    assert!(pos("organizations") < pos("applications"));
    assert!(pos("runs") < pos("run_logs"));
    assert!(pos("packages") < pos("package_versions"));
    for (t, n) in &counts {
        assert!(
            stderr.contains(&format!("{t}: {n} rows copied")),
            "{stderr}"
        );
    }

    // The same deployment restarted on PostgreSQL: same ids, same keys, same answers.
    app.start_again(&[("DATABASE_URL", target.as_str())], &[])
        .await;
    let h = send(app.client.get(app.url("/health"))).await;
    assert_eq!(h["adapters"]["database"], "postgres");
    assert_eq!(h["tier"], 1);
    let after = snapshot(&app, &populated).await;
    assert_same(&before, &after);
    assert_eq!(
        send(app.admin(
            Method::GET,
            &format!("/api/applications/{}", second_app["id"].as_str().unwrap())
        ))
        .await["name"],
        "Second"
    );
    // The key minted on Tier 0 still authenticates.
    let r = app
        .client
        .get(app.url("/api/runs"))
        .bearer_auth(new_key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The encrypted connection still decrypts with the deployment's key.
    let conn = app
        .state()
        .infra
        .db
        .get_connection(&app.app_id, None, "@appstrate/stripe", "primary")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        app.state()
            .keyring
            .decrypt_json(&conn.credentials_encrypted)
            .unwrap()["api_key"],
        CANARY
    );

    // New rows continue after the copied serial ids.
    let max_log_id = app
        .state()
        .infra
        .db
        .list_logs(run_id, None, &[], 1000)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .max()
        .unwrap();
    let second_run = run_briefing(&app).await;
    let new_logs = app
        .state()
        .infra
        .db
        .list_logs(&second_run, None, &[], 1000)
        .await
        .unwrap();
    assert!(!new_logs.is_empty());
    assert!(new_logs.iter().all(|l| l.id > max_log_id));
    assert_eq!(
        send(app.key(Method::GET, &format!("/api/runs/{second_run}"))).await["runNumber"],
        2
    );

    // Acceptance 17: a non-empty target is refused, naming a table, and left as it was.
    app.stop().await;
    let o = migrate_data(&["--from", &sqlite, "--to", &target]).await;
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not empty") && stderr.contains("--replace"),
        "{stderr}"
    );
    assert!(stderr.contains("table organizations has rows"), "{stderr}");
    assert!(o.stdout.is_empty());

    // --replace empties the target first (the second run disappears), in the same transaction.
    let o = migrate_data(&["--from", &sqlite, "--to", &target, "--replace"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(table_counts(&text(&o.stdout)), counts);
    app.start_again(&[], &[]).await;
    let replaced = snapshot(&app, &populated).await;
    assert_same(&before, &replaced);
    let r = app
        .key(Method::GET, &format!("/api/runs/{second_run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}

/// A target that refuses connections is reported naming --to, without the password, exit 1.
#[tokio::test]
async fn an_unreachable_target_is_reported_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appstrate.db");
    let db = appstrate::infra::database::connect_sqlite(&path)
        .await
        .unwrap();
    appstrate::infra::database::Database::migrate(&db)
        .await
        .unwrap();
    db.pool().close().await;
    let port = services::free_port();
    let to = format!("postgres://appstrate:pw-canary-99@127.0.0.1:{port}/appstrate");
    let o = migrate_data(&["--from", path.to_str().unwrap(), "--to", &to]).await;
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--to: cannot connect to PostgreSQL"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}/appstrate")),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-canary-99"), "{stderr}");

    // A missing source: exit 2, naming --from.
    let o = migrate_data(&["--from", "sqlite:/nonexistent/appstrate.db", "--to", &to]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--from: /nonexistent/appstrate.db does not exist"));
}

/// A Tier 0 server that was killed (SIGKILL, OOM) leaves its last transactions in the WAL file: they are
/// copied too.
#[tokio::test]
async fn a_killed_tier0_server_leaves_a_wal_whose_rows_are_copied() {
    let target = test_support::require!(services::postgres_database().await);
    let dir = tempfile::tempdir().unwrap();
    let port = services::free_port();
    let env = [
        ("BETTER_AUTH_SECRET", "better-auth-secret".to_string()),
        (
            "UPLOAD_SIGNING_SECRET",
            "upload-secret-0123456789".to_string(),
        ),
        (
            "CONNECTION_ENCRYPTION_KEY",
            test_support::app::TEST_ENCRYPTION_KEY.to_string(),
        ),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
        ("APP_URL", format!("http://127.0.0.1:{port}")),
        ("SYSTEM_PACKAGES_DIR", "./no-system-packages".to_string()),
    ];
    let command = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    };
    let out = command(&["bootstrap"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();

    let mut server = command(&["serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client
        .get(format!("{base}/health"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for i in 0..3 {
        let r = client
            .post(format!("{base}/api/end-users"))
            .bearer_auth(&key)
            .json(&json!({"externalId": format!("killed-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let wal = dir.path().join("data/appstrate.db-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "the killed server left no WAL: the scenario did not happen"
    );

    let from = dir.path().join("data/appstrate.db");
    let o = migrate_data(&["--from", from.to_str().unwrap(), "--to", &target]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let counts = table_counts(&text(&o.stdout));
    assert_eq!(count(&counts, "end_users"), 3);
    assert_eq!(count(&counts, "api_keys"), 1);
    assert_eq!(count(&counts, "admin_tokens"), 1);
}
