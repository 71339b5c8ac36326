//! Costs that follow live work, not history: the `HistoryRepo` part of [`super::Database`] (slim run list
//! pages, retention batches, space reclaim), written once for both backends.
//!
//! The statements that periodic or boot-time work runs are `pub` constants, so that a test can `EXPLAIN`
//! exactly what the code executes and fail on a full scan of a history table.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::runs::RunFilter;
use super::sql::{map_err, SqlDatabase};
use super::tx::BeginWrite;
use super::*;

/// One row of a run list page: the run DTO's columns only. `input` and `result` are `None` when the page
/// was asked without them (`fields=`); the internal columns (sink secret, inline manifest and prompt,
/// output schema, last output) are never read for a list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunSummaryRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub package_id: Option<String>,
    pub end_user_id: Option<String>,
    pub api_key_id: Option<String>,
    pub schedule_id: Option<String>,
    pub kind: String,
    pub agent_scope: String,
    pub agent_name: String,
    pub version_ref: Option<String>,
    pub run_number: i64,
    pub status: String,
    pub input: Option<Json<Value>>,
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    pub model_label: Option<String>,
    pub timeout_seconds: i64,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub duration: Option<i64>,
    pub created_at: Timestamp,
    pub token_usage: Json<Value>,
    pub cost: Option<f64>,
    pub cost_pricing_status: String,
}

impl From<&super::runs::RunRow> for RunSummaryRow {
    fn from(r: &super::runs::RunRow) -> Self {
        Self {
            id: r.id.clone(),
            org_id: r.org_id.clone(),
            application_id: r.application_id.clone(),
            package_id: r.package_id.clone(),
            end_user_id: r.end_user_id.clone(),
            api_key_id: r.api_key_id.clone(),
            schedule_id: r.schedule_id.clone(),
            kind: r.kind.clone(),
            agent_scope: r.agent_scope.clone(),
            agent_name: r.agent_name.clone(),
            version_ref: r.version_ref.clone(),
            run_number: r.run_number,
            status: r.status.clone(),
            input: Some(r.input.clone()),
            result: r.result.clone(),
            error: r.error.clone(),
            model_label: r.model_label.clone(),
            timeout_seconds: r.timeout_seconds,
            started_at: r.started_at,
            completed_at: r.completed_at,
            duration: r.duration,
            created_at: r.created_at,
            token_usage: r.token_usage.clone(),
            cost: r.cost,
            cost_pricing_status: r.cost_pricing_status.clone(),
        }
    }
}

const SUMMARY_COLS: &str = "id, org_id, application_id, package_id, end_user_id, api_key_id, schedule_id, \
    kind, agent_scope, agent_name, version_ref, run_number, status, {input}, {result}, error, model_label, \
    timeout_seconds, started_at, completed_at, duration, created_at, token_usage, cost, cost_pricing_status";

/// The oldest finished runs past their retention (`$1` cutoff, `$2` batch size). Open runs and the last
/// run of an existing schedule are never chosen.
pub const PRUNE_RUNS: &str = "SELECT r.id FROM runs r WHERE r.created_at < $1 \
    AND r.status IN ('success', 'failed', 'timeout', 'cancelled') \
    AND (r.schedule_id IS NULL \
      OR EXISTS (SELECT 1 FROM runs n WHERE n.schedule_id = r.schedule_id AND n.scheduled_for > r.scheduled_for) \
      OR NOT EXISTS (SELECT 1 FROM schedules s WHERE s.id = r.schedule_id)) \
    ORDER BY r.created_at LIMIT $2";

/// The oldest log rows past their retention (`$1` cutoff, `$2` batch size). Log ids grow with time, so
/// the oldest `$2` rows by id are read (a bounded walk of the primary key) and those older than the
/// cutoff kept: no index on `created_at` is needed on the largest table.
pub const PRUNE_LOGS: &str =
    "SELECT id FROM (SELECT id, created_at FROM run_logs ORDER BY id LIMIT $2) \
    oldest WHERE created_at < $1";

/// The oldest webhook delivery attempts past their retention (`$1` cutoff, `$2` batch size).
pub const PRUNE_DELIVERIES: &str = "SELECT id FROM webhook_deliveries WHERE created_at < $1 \
    ORDER BY created_at LIMIT $2";

/// The PostgreSQL advisory lock held (per transaction) by the instance running a retention batch.
pub const RETENTION_LOCK: i64 = 0x6170_7073_7472_7431; // "appstrt1"

/// A sample argument of a [`Watched`] statement.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Text(&'static str),
    Int(i64),
    /// The current time.
    Now,
}

/// A statement run by a periodic or boot-time loop, or on a hot path, over a history table (`runs`,
/// `run_logs`, `webhook_deliveries`): its cost must follow live work or the page asked for, never the
/// table's size. The `EXPLAIN` test runs each one.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: &'static str,
    pub sql: String,
    pub args: Vec<Arg>,
    /// The plan may walk this table's primary key because the statement stops after `LIMIT` rows.
    pub bounded_walk: Option<&'static str>,
}

/// Every watched statement, as the code executes it.
pub fn watched_statements() -> Vec<Watched> {
    use super::runs::{LOG_COLS, OPEN, RUN_COLS};
    let w = |name, sql: String, args: Vec<Arg>| Watched {
        name,
        sql,
        args,
        bounded_walk: None,
    };
    vec![
        w(
            "open runs (watchdog, boot orphan sweep)",
            format!("SELECT {RUN_COLS} FROM runs WHERE status IN {OPEN}"),
            vec![],
        ),
        w(
            "open runs of an organization (run start)",
            format!("SELECT COUNT(*) FROM runs WHERE org_id = $1 AND status IN {OPEN}"),
            vec![Arg::Text("org")],
        ),
        w(
            "next run number of an agent (run start)",
            "SELECT COALESCE(MAX(run_number), 0) + 1 FROM runs WHERE application_id = $1 \
             AND agent_scope = $2 AND agent_name = $3"
                .into(),
            vec![Arg::Text("app"), Arg::Text("@scope"), Arg::Text("name")],
        ),
        w(
            "open runs per package (GET /api/agents)",
            format!(
                "SELECT package_id, COUNT(*) FROM runs WHERE application_id = $1 \
                 AND package_id IS NOT NULL AND status IN {OPEN} GROUP BY package_id"
            ),
            vec![Arg::Text("app")],
        ),
        w(
            "deepest cursor page of GET /api/runs",
            "SELECT id FROM runs WHERE 1 = 1 AND application_id = $1 AND created_at <= $2 \
             AND (created_at < $3 OR (created_at = $4 AND id < $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
                .into(),
            vec![
                Arg::Text("app"),
                Arg::Now,
                Arg::Now,
                Arg::Now,
                Arg::Text("run_x"),
                Arg::Int(51),
            ],
        ),
        w(
            "a run's logs after a cursor",
            format!("SELECT {LOG_COLS} FROM run_logs WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3"),
            vec![Arg::Text("run_x"), Arg::Int(0), Arg::Int(1000)],
        ),
        w(
            "retention: runs",
            PRUNE_RUNS.into(),
            vec![Arg::Now, Arg::Int(500)],
        ),
        Watched {
            bounded_walk: Some("run_logs"),
            ..w(
                "retention: run logs",
                PRUNE_LOGS.into(),
                vec![Arg::Now, Arg::Int(500)],
            )
        },
        w(
            "retention: webhook deliveries",
            PRUNE_DELIVERIES.into(),
            vec![Arg::Now, Arg::Int(500)],
        ),
    ]
}

/// Rows of each kind older than its cutoff. `None` keeps that kind forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cutoffs {
    pub runs: Option<Timestamp>,
    pub run_logs: Option<Timestamp>,
    pub webhook_deliveries: Option<Timestamp>,
}

impl Cutoffs {
    pub fn is_empty(&self) -> bool {
        self.runs.is_none() && self.run_logs.is_none() && self.webhook_deliveries.is_none()
    }
}

/// Rows deleted (or, for a dry run, that would be deleted), per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneCounts {
    pub runs: u64,
    /// Log rows past their own retention plus those of the deleted runs.
    pub run_logs: u64,
    pub webhook_deliveries: u64,
    /// The ids of the deleted runs (empty for a dry run).
    pub run_ids: Vec<String>,
}

impl PruneCounts {
    pub fn total(&self) -> u64 {
        self.runs + self.run_logs + self.webhook_deliveries
    }
}

#[async_trait]
pub trait HistoryRepo: Send + Sync {
    /// A page of the application's runs with the DTO's columns; `input` and `result` only with `large`.
    async fn list_run_summaries(
        &self,
        application_id: &str,
        filter: &RunFilter,
        page: &Page,
        large: bool,
    ) -> DbResult<Paged<RunSummaryRow>>;
    /// One retention batch in one short transaction: at most `batch` runs, `batch` log rows and `batch`
    /// delivery attempts. `None` when another instance holds the retention lock (PostgreSQL).
    async fn prune_batch(&self, cutoffs: &Cutoffs, batch: i64) -> DbResult<Option<PruneCounts>>;
    /// What retention would delete now (`appstrate db prune --dry-run`); reads every candidate.
    async fn prune_preview(&self, cutoffs: &Cutoffs) -> DbResult<PruneCounts>;
    /// Gives free pages back to the file system: SQLite `incremental_vacuum` of at most `pages` pages
    /// (0: all of them; only when the file is in incremental auto-vacuum mode); PostgreSQL's autovacuum does this itself.
    async fn reclaim_space(&self, pages: i64) -> DbResult<()>;
    /// Converts a SQLite file created before incremental auto-vacuum (a full `VACUUM`, which rewrites
    /// the file); true when it did. Nothing on PostgreSQL.
    async fn enable_incremental_vacuum(&self) -> DbResult<bool>;
    /// The database's size in bytes (SQLite: the main file's pages × page size, free pages included; PostgreSQL: `pg_database_size`).
    async fn database_size(&self) -> DbResult<i64>;
}

macro_rules! impl_history_repo {
    ($db:ty, $null_json:literal, $lock:expr) => {
        #[async_trait]
        impl HistoryRepo for SqlDatabase<$db> {
            async fn list_run_summaries(
                &self,
                application_id: &str,
                filter: &RunFilter,
                page: &Page,
                large: bool,
            ) -> DbResult<Paged<RunSummaryRow>> {
                let mut filters = vec![("application_id", application_id.to_string())];
                for (col, v) in [
                    ("status", &filter.status),
                    ("package_id", &filter.package_id),
                    ("kind", &filter.kind),
                    ("schedule_id", &filter.schedule_id),
                    ("end_user_id", &filter.end_user_id),
                ] {
                    if let Some(v) = v {
                        filters.push((col, v.clone()));
                    }
                }
                let (input, result) = if large {
                    ("input".to_string(), "result".to_string())
                } else {
                    (
                        format!("{} AS input", $null_json),
                        format!("{} AS result", $null_json),
                    )
                };
                let cols = SUMMARY_COLS
                    .replace("{input}", &input)
                    .replace("{result}", &result);
                self.list_page("runs", &cols, &filters, page).await
            }

            async fn prune_batch(
                &self,
                cutoffs: &Cutoffs,
                batch: i64,
            ) -> DbResult<Option<PruneCounts>> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let lock: Option<&str> = $lock;
                if let Some(lock) = lock {
                    let held: bool = sqlx::query_scalar(lock)
                        .bind(RETENTION_LOCK)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    if !held {
                        tx.rollback().await.map_err(map_err)?;
                        return Ok(None);
                    }
                }
                let mut counts = PruneCounts::default();
                if let Some(cutoff) = cutoffs.runs {
                    let ids: Vec<String> = sqlx::query_scalar(PRUNE_RUNS)
                        .bind(cutoff)
                        .bind(batch)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    if !ids.is_empty() {
                        let in_ids = |qb: &mut QueryBuilder<$db>| {
                            let mut sep = qb.separated(", ");
                            for id in &ids {
                                sep.push_bind(id.clone());
                            }
                            qb.push(")");
                        };
                        let mut qb =
                            QueryBuilder::<$db>::new("SELECT COUNT(*) FROM run_logs WHERE run_id IN (");
                        in_ids(&mut qb);
                        let (logs,): (i64,) = qb
                            .build_query_as()
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        counts.run_logs += logs as u64;
                        // run_logs go with their run (ON DELETE CASCADE).
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM runs WHERE id IN (");
                        in_ids(&mut qb);
                        let done = qb.build().execute(&mut *tx).await.map_err(map_err)?;
                        counts.runs = done.rows_affected();
                    }
                    counts.run_ids = ids;
                }
                if let Some(cutoff) = cutoffs.run_logs {
                    let sql = format!("DELETE FROM run_logs WHERE id IN ({PRUNE_LOGS})");
                    let done = sqlx::query(&sql)
                        .bind(cutoff)
                        .bind(batch)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    counts.run_logs += done.rows_affected();
                }
                if let Some(cutoff) = cutoffs.webhook_deliveries {
                    let sql = format!("DELETE FROM webhook_deliveries WHERE id IN ({PRUNE_DELIVERIES})");
                    let done = sqlx::query(&sql)
                        .bind(cutoff)
                        .bind(batch)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    counts.webhook_deliveries = done.rows_affected();
                }
                tx.commit().await.map_err(map_err)?;
                Ok(Some(counts))
            }

            async fn prune_preview(&self, cutoffs: &Cutoffs) -> DbResult<PruneCounts> {
                let mut counts = PruneCounts::default();
                let never = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
                let runs_cutoff = cutoffs.runs.unwrap_or(never);
                let logs_cutoff = cutoffs.run_logs.unwrap_or(never);
                let eligible = PRUNE_RUNS.replace(" ORDER BY r.created_at LIMIT $2", "");
                if cutoffs.runs.is_some() {
                    let sql = format!("SELECT COUNT(*) FROM ({eligible}) eligible");
                    let n: i64 = sqlx::query_scalar(&sql)
                        .bind(runs_cutoff)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err)?;
                    counts.runs = n as u64;
                }
                if cutoffs.runs.is_some() || cutoffs.run_logs.is_some() {
                    let sql = format!(
                        "SELECT COUNT(*) FROM run_logs WHERE created_at < $2 OR run_id IN ({eligible})"
                    );
                    let n: i64 = sqlx::query_scalar(&sql)
                        .bind(runs_cutoff)
                        .bind(logs_cutoff)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err)?;
                    counts.run_logs = n as u64;
                }
                if let Some(cutoff) = cutoffs.webhook_deliveries {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM webhook_deliveries WHERE created_at < $1",
                    )
                    .bind(cutoff)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?;
                    counts.webhook_deliveries = n as u64;
                }
                Ok(counts)
            }

            async fn reclaim_space(&self, pages: i64) -> DbResult<()> {
                <$db as Maintenance>::reclaim(&self.pool, pages).await
            }

            async fn enable_incremental_vacuum(&self) -> DbResult<bool> {
                <$db as Maintenance>::enable_incremental(&self.pool).await
            }

            async fn database_size(&self) -> DbResult<i64> {
                <$db as Maintenance>::size(&self.pool).await
            }
        }
    };
}

impl_history_repo!(Sqlite, "NULL", None);
impl_history_repo!(
    Postgres,
    "NULL::jsonb",
    Some("SELECT pg_try_advisory_xact_lock($1)")
);

/// Dialect-specific maintenance, chosen by the pool's type.
trait Maintenance: sqlx::Database {
    async fn reclaim(pool: &sqlx::Pool<Self>, pages: i64) -> DbResult<()>;
    async fn enable_incremental(pool: &sqlx::Pool<Self>) -> DbResult<bool>;
    async fn size(pool: &sqlx::Pool<Self>) -> DbResult<i64>;
}

/// SQLite's `auto_vacuum` mode 2 is `INCREMENTAL`.
const SQLITE_INCREMENTAL: i64 = 2;

impl Maintenance for Sqlite {
    async fn reclaim(pool: &sqlx::Pool<Self>, pages: i64) -> DbResult<()> {
        let mut conn = pool.acquire().await.map_err(map_err)?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
        if mode == SQLITE_INCREMENTAL {
            // The pragma returns no rows; each step frees one page.
            sqlx::query(&format!("PRAGMA incremental_vacuum({pages})"))
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn enable_incremental(pool: &sqlx::Pool<Self>) -> DbResult<bool> {
        let mut conn = pool.acquire().await.map_err(map_err)?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
        if mode == SQLITE_INCREMENTAL {
            return Ok(false);
        }
        // The mode of an existing file only changes with a full VACUUM.
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        sqlx::query("VACUUM")
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(true)
    }

    async fn size(pool: &sqlx::Pool<Self>) -> DbResult<i64> {
        // The file's pages, free ones included: what `incremental_vacuum` gives back shows here.
        let (used,): (i64,) = sqlx::query_as("SELECT page_count FROM pragma_page_count()")
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
        let (page,): (i64,) = sqlx::query_as("SELECT page_size FROM pragma_page_size()")
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
        Ok(used * page)
    }
}

impl Maintenance for Postgres {
    async fn reclaim(_pool: &sqlx::Pool<Self>, _pages: i64) -> DbResult<()> {
        Ok(())
    }

    async fn enable_incremental(_pool: &sqlx::Pool<Self>) -> DbResult<bool> {
        Ok(false)
    }

    async fn size(pool: &sqlx::Pool<Self>) -> DbResult<i64> {
        let n: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
        Ok(n)
    }
}
