//! The `history` scenario: the same figures with an (almost) empty history and with a long one, in the
//! same run, on SQLite and on PostgreSQL: boot, one watchdog sweep, `GET /api/runs?limit=50` at c=16,
//! the deepest cursor page, one retention batch, and the database size before and after retention.
//!
//! The history is written straight into the database with set-based SQL (a recursive CTE on SQLite,
//! `generate_series` on PostgreSQL): finished runs spread evenly over the last 400 days, oldest first, each
//! with the same number of log rows, so that log ids grow with time as they do in production.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use appstrate::config::RetentionConfig;
use appstrate::infra::database::{connect_postgres, connect_sqlite, now, Database, Timestamp};
use hyper::header::{HeaderValue, AUTHORIZATION};

use super::load::{self, LoadSpec, RequestTemplate};
use super::report::{Summary, Target};
use super::server::{Credentials, Server};
use super::{min_median_max, ms};

/// Days the seeded history spans (older than every default retention).
const SPAN_DAYS: i64 = 400;
/// Rows per seeding statement (one transaction each).
const SEED_CHUNK: i64 = 100_000;
/// Runs of the "empty" history: enough for a cursor page, nothing to speak of.
pub const BASELINE_RUNS: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// What the scenario measures on one database.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub runs: i64,
    pub logs: i64,
    pub seed: Duration,
    pub boot_median: Duration,
    pub watchdog_sweep: Duration,
    pub list_rps: f64,
    pub list_p99: Duration,
    pub list_errors: u64,
    pub deepest_page_p50: Duration,
    pub retention_batch: Duration,
    pub retention_batch_rows: u64,
    pub prune_all: Duration,
    pub pruned_runs: u64,
    pub size_before: i64,
    pub size_after: i64,
}

/// Where one measured database lives.
struct Target_ {
    env: Vec<(String, String)>,
    db: Arc<dyn Database>,
    /// Keeps the SQLite directory until the scenario ends.
    _dir: Option<tempfile::TempDir>,
    sqlite_path: Option<PathBuf>,
}

async fn open(backend: Backend, admin_url: Option<&str>) -> anyhow::Result<Target_> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::Builder::new()
                .prefix("appstrate-history-")
                .tempdir()?;
            let data = dir.path().join("data");
            let path = data.join("appstrate.db");
            let db = connect_sqlite(&path).await?;
            db.migrate().await?;
            Ok(Target_ {
                env: vec![("DATA_DIR".into(), data.to_string_lossy().into_owned())],
                db: Arc::new(db),
                _dir: Some(dir),
                sqlite_path: Some(path),
            })
        }
        Backend::Postgres => {
            let admin = admin_url.context("TEST_DATABASE_URL is unset")?;
            let url = crate::services::create_database(admin).await;
            let db = connect_postgres(&url).await?;
            db.migrate().await?;
            Ok(Target_ {
                env: vec![("DATABASE_URL".into(), url)],
                db: Arc::new(db),
                _dir: None,
                sqlite_path: None,
            })
        }
    }
}

fn creds_of(v: &serde_json::Value) -> anyhow::Result<Credentials> {
    let f = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("bootstrap JSON has no {k}"))
    };
    Ok(Credentials {
        org_id: f("orgId")?,
        application_id: f("applicationId")?,
        admin_token: f("adminToken")?,
        api_key: f("apiKey")?,
    })
}

/// Inserts `runs` finished runs with `logs_per_run` log rows each, oldest first.
async fn seed(
    backend: Backend,
    t: &Target_,
    creds: &Credentials,
    runs: i64,
    logs_per_run: i64,
    verbose: bool,
) -> anyhow::Result<()> {
    let base: Timestamp = now() - chrono::Duration::days(SPAN_DAYS);
    // Seconds between two runs (at least 1).
    let step = ((SPAN_DAYS * 86_400) / runs.max(1)).max(1);
    let (runs_sql, logs_sql) = match backend {
        Backend::Sqlite => (
            "WITH RECURSIVE s(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM s WHERE i < $2) \
             INSERT INTO runs (id, org_id, application_id, package_id, kind, agent_scope, agent_name, \
             run_number, status, input, result, timeout_seconds, started_at, completed_at, duration, \
             created_at, token_usage, cost_pricing_status, sink_secret_encrypted, sink_closed_at, \
             last_event_sequence) \
             SELECT printf('run_h%09d', i), $3, $4, '@bench/history', 'package', '@bench', 'history', \
             i + 1, 'success', '{\"topic\":\"history\"}', '{\"output\":{\"done\":true}}', 300, t, t, 1000, \
             t, '{\"input_tokens\":100,\"output_tokens\":20}', 'unpriced', 'v1:bench:x', t, 10 \
             FROM (SELECT i, strftime('%Y-%m-%dT%H:%M:%f+00:00', $5, '+' || (i * $6) || ' seconds') AS t \
             FROM s)",
            "WITH RECURSIVE s(j) AS (SELECT $1 UNION ALL SELECT j + 1 FROM s WHERE j < $2) \
             INSERT INTO run_logs (run_id, type, level, event, message, data, created_at) \
             SELECT printf('run_h%09d', j / $3), 'progress', 'info', 'log', \
             'step ' || (j % $3) || ' of a run of the history bench', NULL, \
             strftime('%Y-%m-%dT%H:%M:%f+00:00', $4, '+' || ((j / $3) * $5) || ' seconds') FROM s",
        ),
        Backend::Postgres => (
            "INSERT INTO runs (id, org_id, application_id, package_id, kind, agent_scope, agent_name, \
             run_number, status, input, result, timeout_seconds, started_at, completed_at, duration, \
             created_at, token_usage, cost_pricing_status, sink_secret_encrypted, sink_closed_at, \
             last_event_sequence) \
             SELECT 'run_h' || lpad(i::text, 9, '0'), $3, $4, '@bench/history', 'package', '@bench', \
             'history', i + 1, 'success', '{\"topic\":\"history\"}', '{\"output\":{\"done\":true}}', 300, \
             t, t, 1000, t, '{\"input_tokens\":100,\"output_tokens\":20}', 'unpriced', 'v1:bench:x', t, 10 \
             FROM (SELECT i, $5::timestamptz + (i * $6) * interval '1 second' AS t \
             FROM generate_series($1::bigint, $2::bigint) AS i) s",
            "INSERT INTO run_logs (run_id, type, level, event, message, data, created_at) \
             SELECT 'run_h' || lpad((j / $3)::text, 9, '0'), 'progress', 'info', 'log', \
             'step ' || (j % $3) || ' of a run of the history bench', NULL, \
             $4::timestamptz + ((j / $3) * $5) * interval '1 second' \
             FROM generate_series($1::bigint, $2::bigint) AS j",
        ),
    };
    let started = Instant::now();
    let mut lo = 0;
    while lo < runs {
        let hi = (lo + SEED_CHUNK).min(runs) - 1;
        exec(
            t,
            runs_sql,
            &[
                Bind::I(lo),
                Bind::I(hi),
                Bind::S(creds.org_id.clone()),
                Bind::S(creds.application_id.clone()),
                Bind::T(base),
                Bind::I(step),
            ],
        )
        .await
        .context("seeding runs")?;
        lo = hi + 1;
        if verbose {
            eprint!(
                "\r  runs {lo}/{runs} ({:.0} s)   ",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let total_logs = runs * logs_per_run;
    let mut lo = 0;
    while lo < total_logs {
        let hi = (lo + SEED_CHUNK).min(total_logs) - 1;
        exec(
            t,
            logs_sql,
            &[
                Bind::I(lo),
                Bind::I(hi),
                Bind::I(logs_per_run),
                Bind::T(base),
                Bind::I(step),
            ],
        )
        .await
        .context("seeding run logs")?;
        lo = hi + 1;
        if verbose {
            eprint!(
                "\r  run logs {lo}/{total_logs} ({:.0} s)   ",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if verbose {
        eprintln!();
    }
    // Fresh statistics, as autovacuum/ANALYZE would have them on a database that grew slowly.
    match backend {
        Backend::Sqlite => exec(t, "PRAGMA optimize", &[]).await?,
        Backend::Postgres => exec(t, "ANALYZE", &[]).await?,
    }
    Ok(())
}

enum Bind {
    I(i64),
    S(String),
    T(Timestamp),
}

async fn exec(t: &Target_, sql: &str, binds: &[Bind]) -> anyhow::Result<()> {
    match &t.sqlite_path {
        Some(path) => {
            use sqlx::Connection;
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display())).await?;
            let mut q = sqlx::query(sql);
            for b in binds {
                q = match b {
                    Bind::I(i) => q.bind(*i),
                    Bind::S(s) => q.bind(s.clone()),
                    // strftime reads `YYYY-MM-DD HH:MM:SS`.
                    Bind::T(ts) => q.bind(ts.format("%Y-%m-%d %H:%M:%S").to_string()),
                };
            }
            let mut tx = conn.begin().await?;
            q.execute(&mut *tx).await?;
            tx.commit().await?;
            conn.close().await?;
        }
        None => {
            let url = &t.env[0].1;
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let mut q = sqlx::query(sql);
            for b in binds {
                q = match b {
                    Bind::I(i) => q.bind(*i),
                    Bind::S(s) => q.bind(s.clone()),
                    Bind::T(ts) => q.bind(*ts),
                };
            }
            q.execute(&mut conn).await?;
            conn.close().await?;
        }
    }
    Ok(())
}

/// The scenario's options.
#[derive(Clone, Debug)]
pub struct HistoryOpts {
    pub runs: i64,
    pub logs_per_run: i64,
    pub boots: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub deep_pages: usize,
}

/// Measures one database holding `runs` runs.
async fn measure(
    backend: Backend,
    binary: &Path,
    packages: &Path,
    admin_url: Option<&str>,
    runs: i64,
    o: &HistoryOpts,
) -> anyhow::Result<Figures> {
    let t = open(backend, admin_url).await?;
    let creds =
        creds_of(&appstrate::cli::bootstrap_json(t.db.as_ref(), "Bench", "Default").await?)?;
    let seed_started = Instant::now();
    seed(
        backend,
        &t,
        &creds,
        runs,
        o.logs_per_run,
        runs > BASELINE_RUNS,
    )
    .await?;
    let mut f = Figures {
        runs,
        logs: runs * o.logs_per_run,
        seed: seed_started.elapsed(),
        ..Figures::default()
    };
    checkpoint(&t).await;
    f.size_before = t.db.database_size().await?;

    // Boot: spawn → /health 200, several times; the server's own retention job stays out of the way.
    let env: Vec<(&str, &str)> = t
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("RETENTION_INTERVAL_SECONDS", "86400")])
        .collect();
    let mut boots = Vec::new();
    for _ in 0..o.boots.saturating_sub(1) {
        let s = Server::start(binary, packages, &env)?;
        boots.push(s.boot);
        s.stop(Duration::from_secs(30))?;
    }
    let server = Server::start(binary, packages, &env)?;
    boots.push(server.boot);
    f.boot_median = min_median_max(&boots).map(|m| m.1).unwrap_or_default();

    // One watchdog sweep: its database read (no run is open, so nothing else happens).
    let mut sweeps = Vec::new();
    for _ in 0..21 {
        let t0 = Instant::now();
        let open = t.db.open_runs().await?;
        sweeps.push(t0.elapsed());
        if !open.is_empty() {
            bail!("the seeded history has open runs");
        }
    }
    f.watchdog_sweep = min_median_max(&sweeps).map(|m| m.1).unwrap_or_default();

    let auth = HeaderValue::from_str(&format!("Bearer {}", creds.api_key))?;
    let list = load::run(LoadSpec {
        addr: server.addr(),
        request: RequestTemplate::get("/api/runs?limit=50").header(AUTHORIZATION, auth.clone()),
        rotation: None,
        concurrency: 16,
        warmup: o.warmup,
        duration: o.duration,
        max_requests: None,
        server_pid: Some(server.pid()),
    })
    .await;
    f.list_rps = list.rps();
    f.list_p99 = list.p99();
    f.list_errors = list.errors();

    // The deepest page: after the second-oldest run, one run is left.
    let deep = load::run(LoadSpec {
        addr: server.addr(),
        request: RequestTemplate::get("/api/runs?limit=50&startingAfter=run_h000000001")
            .header(AUTHORIZATION, auth),
        rotation: None,
        concurrency: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(60),
        max_requests: Some(o.deep_pages as u64),
        server_pid: None,
    })
    .await;
    if deep.errors() > 0 {
        bail!("deepest page: {}", deep.error_breakdown());
    }
    f.deepest_page_p50 = deep.p50();
    server.stop(Duration::from_secs(30))?;

    // One retention batch with the default retention (90 / 30 / 30 days), 500 rows of each kind.
    let config = default_retention();
    let cutoffs = appstrate::retention::cutoffs(&config, now());
    let t0 = Instant::now();
    let batch = appstrate::retention::run_batch(
        t.db.as_ref(),
        &cutoffs,
        config.batch_size,
        Path::new("/nonexistent"),
        None,
    )
    .await?
    .context("the retention lock was held")?;
    f.retention_batch = t0.elapsed();
    f.retention_batch_rows = batch.total();

    // Everything else past its retention, as `appstrate db prune` does it.
    let t0 = Instant::now();
    let out = Command::new(binary)
        .args(["db", "prune"])
        .env_clear()
        .envs(Server::bench_env(super::server::free_port()?, packages))
        .envs(t.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()?;
    f.prune_all = t0.elapsed();
    if !out.status.success() {
        bail!(
            "appstrate db prune failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    f.pruned_runs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("runs "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    checkpoint(&t).await;
    f.size_after = t.db.database_size().await?;
    t.db.close().await;
    Ok(f)
}

fn default_retention() -> RetentionConfig {
    RetentionConfig {
        run_days: 90,
        run_log_days: 30,
        webhook_delivery_days: 30,
        interval_seconds: 3600,
        batch_size: 500,
    }
}

/// Folds the SQLite WAL into the file so that its size is the database's.
async fn checkpoint(t: &Target_) {
    if t.sqlite_path.is_some() {
        let _ = exec(t, "PRAGMA wal_checkpoint(TRUNCATE)", &[]).await;
    }
}

fn mb(bytes: i64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Runs the scenario on each backend and prints one table per backend.
pub async fn history_bench(
    binary: &Path,
    packages: &Path,
    backends: &[Backend],
    o: &HistoryOpts,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!(
        "\n== history: {} finished runs and {} log rows vs {BASELINE_RUNS} runs ==",
        o.runs,
        o.runs * o.logs_per_run
    );
    let admin_url = std::env::var("TEST_DATABASE_URL").ok();
    // The servers run in their own directories: a relative --bin would not be found from there.
    let binary = &binary
        .canonicalize()
        .with_context(|| format!("{}", binary.display()))?;
    for &backend in backends {
        if backend == Backend::Postgres && admin_url.is_none() {
            println!("{}: skipped (TEST_DATABASE_URL is unset)", backend.name());
            continue;
        }
        println!("\n-- history on {} --", backend.name());
        let empty = measure(
            backend,
            binary,
            packages,
            admin_url.as_deref(),
            BASELINE_RUNS,
            o,
        )
        .await
        .with_context(|| format!("{} baseline", backend.name()))?;
        println!("seeding {} runs …", o.runs);
        let full = measure(backend, binary, packages, admin_url.as_deref(), o.runs, o)
            .await
            .with_context(|| format!("{} history", backend.name()))?;
        println!(
            "seeded in {:.1} s; database {:.0} MB",
            full.seed.as_secs_f64(),
            mb(full.size_before)
        );
        print_table(&empty, &full);
        let name = backend.name();
        let within = |base: f64| Target::AtMost(base * 1.2);
        summary.add(
            format!("history {name}: boot median"),
            ms(full.boot_median),
            "ms",
            if backend == Backend::Sqlite {
                // Tier 0: within 20 % of the empty history and at most 50 ms.
                Target::AtMost((ms(empty.boot_median) * 1.2).min(50.0))
            } else {
                within(ms(empty.boot_median))
            },
        );
        summary.add(
            format!("history {name}: watchdog sweep"),
            ms(full.watchdog_sweep),
            "ms",
            within(ms(empty.watchdog_sweep).max(0.05)),
        );
        summary.add(
            format!("history {name}: GET /api/runs?limit=50 c=16"),
            full.list_rps,
            "req/s",
            Target::AtLeast(empty.list_rps * 0.8),
        );
        summary.add(
            format!("history {name}: deepest cursor page p50"),
            ms(full.deepest_page_p50),
            "ms",
            within(ms(empty.deepest_page_p50)),
        );
        summary.add(
            format!("history {name}: one retention batch"),
            ms(full.retention_batch),
            "ms",
            Target::None,
        );
        summary.add(
            format!("history {name}: database size after retention"),
            mb(full.size_after),
            "MB",
            Target::None,
        );
    }
    Ok(())
}

fn print_table(empty: &Figures, full: &Figures) {
    let row = |name: &str, a: String, b: String| println!("  {name:<42} {a:>14} {b:>14}");
    row(
        "",
        format!("{} runs", empty.runs),
        format!("{} runs", full.runs),
    );
    row("log rows", empty.logs.to_string(), full.logs.to_string());
    let d = |d: Duration| format!("{:.2} ms", ms(d));
    row("boot (median)", d(empty.boot_median), d(full.boot_median));
    row(
        "watchdog sweep (open runs, median)",
        d(empty.watchdog_sweep),
        d(full.watchdog_sweep),
    );
    row(
        "GET /api/runs?limit=50 c=16",
        format!("{:.0} req/s", empty.list_rps),
        format!("{:.0} req/s", full.list_rps),
    );
    row("  p99", d(empty.list_p99), d(full.list_p99));
    row(
        "  errors",
        empty.list_errors.to_string(),
        full.list_errors.to_string(),
    );
    row(
        "deepest cursor page (p50)",
        d(empty.deepest_page_p50),
        d(full.deepest_page_p50),
    );
    row(
        "one retention batch (500 per kind)",
        d(empty.retention_batch),
        d(full.retention_batch),
    );
    row(
        "  rows deleted by it",
        empty.retention_batch_rows.to_string(),
        full.retention_batch_rows.to_string(),
    );
    row(
        "appstrate db prune (the rest)",
        format!("{:.1} s", empty.prune_all.as_secs_f64()),
        format!("{:.1} s", full.prune_all.as_secs_f64()),
    );
    row(
        "  runs deleted",
        empty.pruned_runs.to_string(),
        full.pruned_runs.to_string(),
    );
    row(
        "database size before retention",
        format!("{:.1} MB", mb(empty.size_before)),
        format!("{:.1} MB", mb(full.size_before)),
    );
    row(
        "database size after retention",
        format!("{:.1} MB", mb(empty.size_after)),
        format!("{:.1} MB", mb(full.size_after)),
    );
}
