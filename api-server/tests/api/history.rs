//! Costs that follow live work, not history: the plans of every watched statement (`EXPLAIN`), retention
//! (batches, what is never deleted, the PostgreSQL lock, SQLite space reclaim, the background job and
//! its metrics, `appstrate db prune`), and slim run list pages (`fields=`).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use appstrate::infra::database::history::{watched_statements, Arg, Cutoffs, RETENTION_LOCK};
use appstrate::infra::database::runs::{NewLog, RunFilter, RunRow};
use appstrate::infra::database::schedules::ScheduleRow;
use appstrate::infra::database::webhooks::{DeliveryRow, WebhookRow};
use appstrate::infra::database::{
    connect_postgres, connect_sqlite, now, Database, Page, Timestamp,
};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::Connection;
use test_support::{services, Backend};

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");
const HISTORY_TABLES: [&str; 3] = ["runs", "run_logs", "webhook_deliveries"];

fn days_ago(d: i64) -> Timestamp {
    now() - chrono::Duration::days(d)
}

/// A run of `@acme/agent` created at `created_at` with `status`.
fn run(org_id: &str, app_id: &str, id: &str, status: &str, created_at: Timestamp) -> RunRow {
    RunRow {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        package_id: Some("@acme/agent".into()),
        end_user_id: None,
        api_key_id: None,
        schedule_id: None,
        kind: "package".into(),
        agent_scope: "@acme".into(),
        agent_name: "agent".into(),
        version_ref: None,
        run_number: 0,
        status: status.into(),
        input: Json(json!({"topic": "history", "blob": "x".repeat(64)})),
        result: None,
        error: None,
        model_label: None,
        timeout_seconds: 300,
        started_at: None,
        completed_at: None,
        duration: None,
        created_at,
        token_usage: Json(json!({})),
        cost: None,
        cost_pricing_status: "unpriced".into(),
        sink_secret_encrypted: "v1:k1:secret".into(),
        sink_closed_at: None,
        last_event_sequence: 0,
        last_heartbeat_at: Some(created_at),
        first_event_at: None,
        boot_deadline_at: None,
        scheduled_for: None,
        inline_manifest: None,
        inline_prompt: None,
        output_schema: None,
        last_output: None,
    }
}

fn log(message: &str) -> NewLog {
    NewLog {
        log_type: "progress".into(),
        level: "info".into(),
        event: "log".into(),
        message: message.into(),
        data: None,
    }
}

fn schedule(org_id: &str, app_id: &str, id: &str) -> ScheduleRow {
    let at = now();
    ScheduleRow {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        package_id: "@acme/agent".into(),
        end_user_id: None,
        api_key_id: None,
        actor_type: "api_key".into(),
        admin_token_id: None,
        name: None,
        enabled: true,
        cron_expression: "0 3 * * *".into(),
        timezone: "UTC".into(),
        input: Json(json!({})),
        version_override: None,
        last_run_at: None,
        next_run_at: None,
        created_at: at,
        updated_at: at,
        disabled_reason: None,
        user_id: None,
    }
}

fn webhook(org_id: &str, app_id: &str, id: &str) -> WebhookRow {
    let at = now();
    WebhookRow {
        id: id.into(),
        org_id: org_id.into(),
        application_id: app_id.into(),
        url: "https://hooks.example.com/x".into(),
        events: Json(json!(["run.success"])),
        package_id: None,
        payload_mode: "full".into(),
        enabled: true,
        secret_enc: "v1:k1:secret".into(),
        previous_secret_enc: None,
        previous_secret_expires_at: None,
        created_at: at,
        updated_at: at,
    }
}

fn delivery(webhook_id: &str, id: &str, created_at: Timestamp) -> DeliveryRow {
    DeliveryRow {
        id: id.into(),
        webhook_id: webhook_id.into(),
        event_id: format!("evt_{id}"),
        event_type: "run.success".into(),
        attempt: 1,
        status: "success".into(),
        status_code: Some(200),
        latency_ms: Some(12),
        error: None,
        created_at,
    }
}

fn all_runs() -> Page {
    Page {
        limit: 100,
        starting_after: None,
    }
}

async fn run_ids(db: &Arc<dyn Database>, app_id: &str) -> Vec<String> {
    let mut ids: Vec<String> = db
        .list_runs(app_id, &RunFilter::default(), &all_runs())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------------------
// EXPLAIN

/// The table a SQLite `SCAN …` plan line walks (`SCAN runs`, `SCAN runs USING INDEX x`, `SCAN r`),
/// resolved through the statement's aliases.
fn scanned_table(detail: &str, sql: &str) -> Option<String> {
    let name = detail.strip_prefix("SCAN ")?.split_whitespace().next()?;
    if HISTORY_TABLES.contains(&name) {
        return Some(name.to_string());
    }
    // `FROM runs r` / `FROM runs n`: the plan names the alias.
    HISTORY_TABLES
        .iter()
        .find(|t| sql.contains(&format!("{t} {name} ")) || sql.contains(&format!("{t} {name})")))
        .map(|t| t.to_string())
}

/// Every watched statement (watchdog, boot sweep, run start, list pages, retention) is planned without
/// a full scan of `runs`, `run_logs` or `webhook_deliveries` on SQLite: their cost follows live work
/// or the page asked for, not the history.
#[tokio::test]
async fn sqlite_plans_never_scan_a_history_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plans.db");
    connect_sqlite(&path)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    // Walking a partial index (e.g. `runs_open`) reads only the rows it holds: live work, not history.
    let partial: Vec<String> = sqlx::query_scalar(
        "SELECT il.name FROM sqlite_master m, pragma_index_list(m.name) il \
         WHERE m.type = 'table' AND il.partial = 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(partial.iter().any(|n| n == "runs_open"), "{partial:?}");
    let mut failures = Vec::new();
    let mut statements = watched_statements();
    statements.push(unindexed());
    for w in statements {
        let sql = format!("EXPLAIN QUERY PLAN {}", w.sql);
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql);
        for a in &w.args {
            q = match *a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
                Arg::Now => q.bind(now()),
            };
        }
        let plan: Vec<String> = q
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", w.name))
            .into_iter()
            .map(|r| r.3)
            .collect();
        for line in &plan {
            if let Some(table) = scanned_table(line, &w.sql) {
                let walk_by_pk = w.bounded_walk == Some(table.as_str()) && !line.contains("INDEX");
                let partial_index = partial
                    .iter()
                    .any(|p| line.ends_with(&format!("INDEX {p}")));
                if !walk_by_pk && !partial_index {
                    failures.push(format!("{}: {line}\n  plan: {plan:?}", w.name));
                }
            }
        }
    }
    let control = failures.iter().filter(|f| f.starts_with(CONTROL)).count();
    assert_eq!(
        control, 1,
        "the check must catch the unindexed control statement"
    );
    failures.retain(|f| !f.starts_with(CONTROL));
    assert!(failures.is_empty(), "full scans:\n{}", failures.join("\n"));
}

const CONTROL: &str = "control";

/// A statement no index serves: the plan check must flag it, or it proves nothing.
fn unindexed() -> appstrate::infra::database::history::Watched {
    appstrate::infra::database::history::Watched {
        name: CONTROL,
        sql: "SELECT id FROM run_logs WHERE message = $1".into(),
        args: vec![Arg::Text("x")],
        bounded_walk: None,
    }
}

/// The same on PostgreSQL. The tables are tiny, so sequential scans are priced out of the session
/// (`enable_seqscan = off`): a plan still showing `Seq Scan` on a history table has no index to use.
#[tokio::test]
async fn postgres_plans_never_scan_a_history_table() {
    let url = test_support::require!(services::postgres_database().await);
    connect_postgres(&url)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut failures = Vec::new();
    let mut statements = watched_statements();
    statements.push(unindexed());
    for w in statements {
        let sql = format!("EXPLAIN {}", w.sql);
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for a in &w.args {
            q = match *a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
                Arg::Now => q.bind(now()),
            };
        }
        let plan = q
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", w.name));
        for line in &plan {
            if let Some(table) = HISTORY_TABLES.iter().find(|t| {
                line.contains(&format!("Seq Scan on {t} "))
                    || line.ends_with(&format!("Seq Scan on {t}"))
            }) {
                failures.push(format!("{} ({table}): {}", w.name, plan.join("\n")));
            }
        }
    }
    let control = failures.iter().filter(|f| f.starts_with(CONTROL)).count();
    assert_eq!(
        control, 1,
        "the check must catch the unindexed control statement"
    );
    failures.retain(|f| !f.starts_with(CONTROL));
    assert!(
        failures.is_empty(),
        "sequential scans:\n{}",
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------------
// Retention at the database

/// A history: old finished runs with logs, an old open run, two old runs of a schedule (the last one
/// stays), an old run of a deleted schedule, a recent run with an old log row, old and new delivery
/// attempts.
async fn seed_history(db: &Arc<dyn Database>) -> (String, String) {
    let b = db.ensure_org("Acme", "Main").await.unwrap();
    let (org_id, app_id) = (b.org.id, b.application.id);
    for i in 0..3 {
        let id = format!("run_old_{i}");
        db.insert_run(&run(&org_id, &app_id, &id, "success", days_ago(100)), 100)
            .await
            .unwrap();
        for j in 0..4 {
            db.insert_log(&id, &log(&format!("old {j}")), days_ago(100))
                .await
                .unwrap();
        }
    }
    db.insert_run(
        &run(&org_id, &app_id, "run_open", "running", days_ago(100)),
        100,
    )
    .await
    .unwrap();
    db.insert_schedule(&schedule(&org_id, &app_id, "sch_live"))
        .await
        .unwrap();
    for (id, at) in [("run_sched_first", 101), ("run_sched_last", 100)] {
        let mut r = run(&org_id, &app_id, id, "failed", days_ago(at));
        r.schedule_id = Some("sch_live".into());
        r.scheduled_for = Some(days_ago(at));
        db.insert_run(&r, 100).await.unwrap();
    }
    let mut gone = run(
        &org_id,
        &app_id,
        "run_sched_deleted",
        "success",
        days_ago(100),
    );
    gone.schedule_id = Some("sch_gone".into());
    gone.scheduled_for = Some(days_ago(100));
    db.insert_run(&gone, 100).await.unwrap();
    db.insert_run(
        &run(&org_id, &app_id, "run_recent", "success", days_ago(10)),
        100,
    )
    .await
    .unwrap();
    db.insert_log("run_recent", &log("old line of a kept run"), days_ago(40))
        .await
        .unwrap();
    db.insert_log("run_recent", &log("new line"), days_ago(10))
        .await
        .unwrap();
    db.insert_webhook(&webhook(&org_id, &app_id, "wh_1"))
        .await
        .unwrap();
    for (id, at) in [("d1", 40), ("d2", 35), ("d3", 5)] {
        assert!(db
            .insert_delivery(&delivery("wh_1", id, days_ago(at)))
            .await
            .unwrap());
    }
    (org_id, app_id)
}

fn default_cutoffs() -> Cutoffs {
    Cutoffs {
        runs: Some(days_ago(90)),
        run_logs: Some(days_ago(30)),
        webhook_deliveries: Some(days_ago(30)),
    }
}

async fn retention_deletes_history_but_never_open_or_last_scheduled_runs(db: Arc<dyn Database>) {
    let (_, app_id) = seed_history(&db).await;
    let cutoffs = default_cutoffs();
    let preview = db.prune_preview(&cutoffs).await.unwrap();
    // run_old_{0,1,2}, run_sched_first, run_sched_deleted; 12 logs of those + 1 old log of run_recent.
    assert_eq!(
        (preview.runs, preview.run_logs, preview.webhook_deliveries),
        (5, 13, 2)
    );
    assert_eq!(
        run_ids(&db, &app_id).await.len(),
        8,
        "a preview deletes nothing"
    );

    // Batches of 2: each is bounded, and together they delete exactly what the preview counted.
    let (mut runs, mut logs, mut deliveries, mut batches) = (0, 0, 0, 0);
    loop {
        let c = db
            .prune_batch(&cutoffs, 2)
            .await
            .unwrap()
            .expect("no other instance");
        assert!(c.runs <= 2 && c.webhook_deliveries <= 2);
        batches += 1;
        runs += c.runs;
        logs += c.run_logs;
        deliveries += c.webhook_deliveries;
        if c.total() == 0 {
            break;
        }
        assert!(batches < 10);
    }
    assert_eq!((runs, logs, deliveries), (5, 13, 2));
    assert!(batches >= 3, "5 runs in batches of 2 take 3 batches");
    assert_eq!(
        run_ids(&db, &app_id).await,
        ["run_open", "run_recent", "run_sched_last"]
    );
    let kept: Vec<String> = db
        .list_logs("run_recent", None, &[], 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(kept, ["new line"]);
    for gone in ["run_old_0", "run_sched_first"] {
        assert!(db.get_run(gone).await.unwrap().is_none());
        assert!(db.list_logs(gone, None, &[], 100).await.unwrap().is_empty());
    }
    let left: Vec<String> = db
        .list_deliveries("wh_1", &all_runs())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, ["d3"]);
    assert_eq!(db.prune_preview(&cutoffs).await.unwrap().total(), 0);
}

async fn retention_of_zero_days_keeps_a_kind(db: Arc<dyn Database>) {
    let (_, app_id) = seed_history(&db).await;
    let keep_runs = Cutoffs {
        runs: None,
        ..default_cutoffs()
    };
    let c = db.prune_batch(&keep_runs, 100).await.unwrap().unwrap();
    assert_eq!((c.runs, c.run_logs, c.webhook_deliveries), (0, 13, 2));
    assert_eq!(run_ids(&db, &app_id).await.len(), 8);
}

mod retention {
    use super::*;

    async fn sqlite() -> (Arc<dyn Database>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = connect_sqlite(&dir.path().join("r.db")).await.unwrap();
        db.migrate().await.unwrap();
        (Arc::new(db), dir)
    }

    async fn postgres() -> Option<(Arc<dyn Database>, String)> {
        let url = services::postgres_database().await?;
        let db = connect_postgres(&url).await.unwrap();
        db.migrate().await.unwrap();
        Some((Arc::new(db), url))
    }

    #[tokio::test]
    async fn sqlite_deletes_history_but_never_open_or_last_scheduled_runs() {
        let (db, _dir) = sqlite().await;
        retention_deletes_history_but_never_open_or_last_scheduled_runs(db).await;
    }

    #[tokio::test]
    async fn postgres_deletes_history_but_never_open_or_last_scheduled_runs() {
        let (db, _) = test_support::require!(postgres().await);
        retention_deletes_history_but_never_open_or_last_scheduled_runs(db).await;
    }

    #[tokio::test]
    async fn sqlite_zero_days_keeps_a_kind() {
        let (db, _dir) = sqlite().await;
        retention_of_zero_days_keeps_a_kind(db).await;
    }

    #[tokio::test]
    async fn postgres_zero_days_keeps_a_kind() {
        let (db, _) = test_support::require!(postgres().await);
        retention_of_zero_days_keeps_a_kind(db).await;
    }

    /// While another instance holds the retention lock, a batch does nothing and says so.
    #[tokio::test]
    async fn postgres_one_instance_at_a_time() {
        let (db, url) = test_support::require!(postgres().await);
        let (_, app_id) = seed_history(&db).await;
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(RETENTION_LOCK)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert!(db
            .prune_batch(&default_cutoffs(), 100)
            .await
            .unwrap()
            .is_none());
        assert_eq!(run_ids(&db, &app_id).await.len(), 8);
        tx.rollback().await.unwrap();
        let c = db
            .prune_batch(&default_cutoffs(), 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.runs, 5);
    }

    /// A new SQLite file is in incremental auto-vacuum mode: the pages freed by a batch go back to the
    /// file system, and the file shrinks.
    #[tokio::test]
    async fn sqlite_gives_freed_space_back() {
        let (db, dir) = sqlite().await;
        let b = db.ensure_org("Acme", "Main").await.unwrap();
        let big = "y".repeat(2000);
        for i in 0..40 {
            let id = format!("run_{i:02}");
            db.insert_run(
                &run(&b.org.id, &b.application.id, &id, "success", days_ago(100)),
                100,
            )
            .await
            .unwrap();
            for _ in 0..25 {
                db.insert_log(&id, &log(&big), days_ago(100)).await.unwrap();
            }
        }
        let before = db.database_size().await.unwrap();
        assert!(before > 2_000_000, "{before}");
        let config = appstrate::config::RetentionConfig {
            run_days: 90,
            run_log_days: 30,
            webhook_delivery_days: 30,
            interval_seconds: 60,
            batch_size: 500,
        };
        let report = appstrate::retention::sweep(
            db.as_ref(),
            &config,
            dir.path(),
            None,
            Duration::ZERO,
            || false,
        )
        .await
        .unwrap();
        assert_eq!((report.deleted.runs, report.deleted.run_logs), (40, 1000));
        let after = db.database_size().await.unwrap();
        assert!(after < before / 4, "{before} bytes before, {after} after");
    }
}

// ---------------------------------------------------------------------------------------------------
// The background job, /metrics, and the CLI

async fn retention_job_prunes_and_counts_in_metrics(backend: Backend) {
    let Some(app) = test_support::spawn_app_on(
        backend,
        &[
            ("RUN_RETENTION_DAYS", "1"),
            ("RETENTION_INTERVAL_SECONDS", "1"),
        ],
    )
    .await
    else {
        return;
    };
    let db = app.state().infra.db.clone();
    db.insert_run(
        &run(
            &app.org_id,
            &app.app_id,
            "run_ancient",
            "success",
            days_ago(3),
        ),
        100,
    )
    .await
    .unwrap();
    db.insert_run(
        &run(&app.org_id, &app.app_id, "run_fresh", "success", now()),
        100,
    )
    .await
    .unwrap();
    // A leftover run directory of the process adapter goes with the run.
    let leftover = app.data_dir.join("runs/run_ancient");
    std::fs::create_dir_all(&leftover).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app
            .key(Method::GET, "/api/runs/run_ancient")
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the retention job never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The batch is counted in /metrics once it has committed and cleaned up after itself.
    let metrics = loop {
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("appstrate_retention_deleted_total{kind=\"runs\"} 1\n") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "no retention metrics: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("appstrate_retention_batches_total"));
    assert!(!leftover.exists());
    let r = app
        .key(Method::GET, "/api/runs/run_fresh")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a run within its retention stays");
}

on_both_backends!(retention_job_prunes_and_counts_in_metrics);

fn prune_cli(
    env: &std::collections::HashMap<String, String>,
    args: &[&str],
) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["db", "prune"])
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `appstrate db prune --dry-run` counts what would go and changes nothing; without the flag it deletes
/// exactly that.
#[tokio::test]
async fn db_prune_dry_run_then_prune() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_support::app::base_env(dir.path());
    let path = dir.path().join("data/appstrate.db");
    {
        let db: Arc<dyn Database> = Arc::new(connect_sqlite(&path).await.unwrap());
        db.migrate().await.unwrap();
        seed_history(&db).await;
        db.close().await;
    }
    let expected = "runs 5\nrun_logs 13\nwebhook_deliveries 2\n";
    let (code, stdout, stderr) = prune_cli(&env, &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, expected);
    assert!(stderr.contains("RUN_RETENTION_DAYS=90"), "{stderr}");
    assert!(stderr.contains("dry run"), "{stderr}");
    let (code, stdout, stderr) = prune_cli(&env, &["--dry-run"]);
    assert_eq!((code, stdout.as_str()), (0, expected), "{stderr}");

    let (code, stdout, stderr) = prune_cli(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, expected);
    let (code, stdout, _) = prune_cli(&env, &["--dry-run"]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "runs 0\nrun_logs 0\nwebhook_deliveries 0\n")
    );

    let mut keep = env.clone();
    keep.insert("RUN_RETENTION_DAYS".into(), "-1".into());
    let (code, _, stderr) = prune_cli(&keep, &["--dry-run"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("RUN_RETENTION_DAYS"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------
// Slim list pages

/// `GET /api/runs` keeps the documented run DTO by default; `fields=` returns only the keys asked for
/// (plus `id` and `object`), and refuses an unknown one naming the parameter.
async fn run_lists_take_fields(backend: Backend) {
    let Some(app) = test_support::spawn_app_on(backend, &[]).await else {
        return;
    };
    let db = app.state().infra.db.clone();
    let mut r = run(&app.org_id, &app.app_id, "run_a", "success", now());
    r.result = Some(Json(json!({"output": {"answer": 42}})));
    r.last_output = Some(Json(json!({"partial": true})));
    db.insert_run(&r, 100).await.unwrap();
    db.finalize_run(
        "run_a",
        &appstrate::infra::database::runs::Finalization {
            status: "success".into(),
            result: Some(json!({"output": {"answer": 42}})),
            error: None,
            completed_at: now(),
            duration_ms: Some(5),
            token_usage: json!({}),
            cost: None,
            cost_pricing_status: "unpriced".into(),
        },
    )
    .await
    .unwrap();
    let get = |path: &str| app.key(Method::GET, path).send();

    let full: Value = get("/api/runs").await.unwrap().json().await.unwrap();
    let row = &full["data"][0];
    let single: Value = get("/api/runs/run_a").await.unwrap().json().await.unwrap();
    assert_eq!(row, &single, "the default list row is the run DTO");
    assert_eq!(row["input"]["topic"], "history");
    assert_eq!(row["result"]["output"]["answer"], 42);

    let slim: Value = get("/api/runs?fields=status,createdAt")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut keys: Vec<&String> = slim["data"][0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["createdAt", "id", "object", "status"]);
    assert_eq!(slim["data"][0]["status"], "success");

    let with_result: Value = get("/api/runs?fields=result,input")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(with_result["data"][0]["result"]["output"]["answer"], 42);
    assert_eq!(with_result["data"][0]["input"]["topic"], "history");
    assert!(with_result["data"][0].get("status").is_none());

    let bad = get("/api/runs?fields=status,sink_secret_encrypted")
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["param"], "fields", "{body}");
}

on_both_backends!(run_lists_take_fields);

/// A cursor page deep in a long history answers the same rows as walking there page by page.
#[tokio::test]
async fn cursor_pages_stay_exact_with_ties() {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn Database> = Arc::new(connect_sqlite(&dir.path().join("p.db")).await.unwrap());
    db.migrate().await.unwrap();
    let b = db.ensure_org("Acme", "Main").await.unwrap();
    let at = days_ago(1);
    // Ten runs share one timestamp: the id breaks the tie.
    for i in 0..25 {
        let created = if i < 10 {
            at
        } else {
            at + chrono::Duration::seconds(i)
        };
        db.insert_run(
            &run(
                &b.org.id,
                &b.application.id,
                &format!("run_{i:02}"),
                "success",
                created,
            ),
            100,
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = db
            .list_run_summaries(
                &b.application.id,
                &RunFilter::default(),
                &Page {
                    limit: 4,
                    starting_after: after.clone(),
                },
                false,
            )
            .await
            .unwrap();
        assert!(page
            .items
            .iter()
            .all(|r| r.input.is_none() && r.result.is_none()));
        seen.extend(page.items.iter().map(|r| r.id.clone()));
        if !page.has_more {
            break;
        }
        after = page.items.last().map(|r| r.id.clone());
    }
    let mut expected: Vec<String> = (10..25).rev().map(|i| format!("run_{i:02}")).collect();
    expected.extend((0..10).rev().map(|i| format!("run_{i:02}")));
    assert_eq!(seen, expected);
}
