//! Run persistence: the `RunRepo` part of [`super::Database`], written once for both backends.
//!
//! The terminal write (`finalize`) and the event write (`persist_event`) are compare-and-set updates, so
//! concurrent finalizers, cancels and watchdogs produce exactly one winner.

use super::tx::BeginWrite;
use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::*;

#[derive(Debug, Clone, sqlx::FromRow)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct RunRow {
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
    pub input: Json<Value>,
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
    pub sink_secret_encrypted: String,
    pub sink_closed_at: Option<Timestamp>,
    pub last_event_sequence: i64,
    pub last_heartbeat_at: Option<Timestamp>,
    pub first_event_at: Option<Timestamp>,
    pub boot_deadline_at: Option<Timestamp>,
    pub scheduled_for: Option<Timestamp>,
    pub inline_manifest: Option<Json<Value>>,
    pub inline_prompt: Option<String>,
    pub output_schema: Option<Json<Value>>,
    pub last_output: Option<Json<Value>>,
}

impl RunRow {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "success" | "failed" | "timeout" | "cancelled"
        )
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunLogRow {
    pub id: i64,
    pub run_id: String,
    #[sqlx(rename = "type")]
    pub log_type: String,
    pub level: String,
    pub event: String,
    pub message: String,
    pub data: Option<Json<Value>>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewLog {
    pub log_type: String,
    pub level: String,
    pub event: String,
    pub message: String,
    pub data: Option<Value>,
}

/// The terminal write of `finalize_run`.
#[derive(Debug, Clone)]
pub struct Finalization {
    pub status: String,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub completed_at: Timestamp,
    pub duration_ms: Option<i64>,
    pub token_usage: Value,
    pub cost: Option<f64>,
    pub cost_pricing_status: String,
}

/// Side effects of an accepted event besides its log row.
#[derive(Debug, Clone, Default)]
pub struct EventEffects {
    pub log: Option<NewLog>,
    pub token_usage: Option<Value>,
    pub cost: Option<Option<f64>>,
    pub output: Option<Value>,
    /// The usage ledger row of the model call this event reports (docs/models.md).
    pub usage: Option<super::usage::NewUsage>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<String>,
    pub package_id: Option<String>,
    pub kind: Option<String>,
    pub schedule_id: Option<String>,
    pub end_user_id: Option<String>,
    /// Runs created at or after this instant.
    pub created_from: Option<Timestamp>,
    /// Runs created before this instant.
    pub created_before: Option<Timestamp>,
}

/// Why a run could not be inserted.
#[derive(Debug)]
pub enum InsertRunError {
    /// The org already has `max` pending or running runs.
    ConcurrencyExceeded,
    Db(DbError),
}

impl From<DbError> for InsertRunError {
    fn from(e: DbError) -> Self {
        InsertRunError::Db(e)
    }
}

pub const RUN_COLS: &str = "id, org_id, application_id, package_id, end_user_id, api_key_id, schedule_id, kind, \
    agent_scope, agent_name, version_ref, run_number, status, input, result, error, model_label, timeout_seconds, \
    started_at, completed_at, duration, created_at, token_usage, cost, cost_pricing_status, sink_secret_encrypted, \
    sink_closed_at, last_event_sequence, last_heartbeat_at, first_event_at, boot_deadline_at, scheduled_for, \
    inline_manifest, inline_prompt, output_schema, last_output";

pub const LOG_COLS: &str = "id, run_id, type, level, event, message, data, created_at";

pub const OPEN: &str = "('pending', 'running')";

#[async_trait]
pub trait RunRepo: Send + Sync {
    /// Inserts a `pending` run, assigning `run_number` = max + 1 per (application, agent), unless the org
    /// already has `max_active` open runs. Atomic per org on both backends.
    async fn insert_run(&self, run: &RunRow, max_active: i64) -> Result<RunRow, InsertRunError>;
    async fn get_run(&self, id: &str) -> DbResult<Option<RunRow>>;
    async fn list_runs(
        &self,
        application_id: &str,
        filter: &RunFilter,
        page: &Page,
    ) -> DbResult<Paged<RunRow>>;
    async fn count_open_runs(&self, org_id: &str) -> DbResult<i64>;
    /// `pending` → `running`; false when the run is no longer pending.
    async fn mark_running(&self, id: &str, at: Timestamp) -> DbResult<bool>;
    /// The single terminal write. True for the one caller that won.
    async fn finalize_run(&self, id: &str, f: &Finalization) -> DbResult<bool>;
    /// Persists event `sequence` if it is exactly last + 1 and the sink is open: CAS on the sequence, the
    /// log row and the heartbeat in one transaction. Returns the log row when one was written, and whether
    /// the CAS won.
    /// With `allow_gap` (draining at finalize) any sequence above the last one is accepted.
    async fn persist_event(
        &self,
        id: &str,
        sequence: i64,
        allow_gap: bool,
        effects: &EventEffects,
        at: Timestamp,
    ) -> DbResult<(bool, Option<RunLogRow>)>;
    async fn heartbeat(&self, id: &str, at: Timestamp) -> DbResult<()>;
    async fn insert_log(&self, id: &str, log: &NewLog, at: Timestamp) -> DbResult<RunLogRow>;
    async fn list_logs(
        &self,
        id: &str,
        since: Option<i64>,
        levels: &[&str],
        limit: i64,
    ) -> DbResult<Vec<RunLogRow>>;
    /// Every `pending` or `running` run (watchdog and boot cleanup).
    async fn open_runs(&self) -> DbResult<Vec<RunRow>>;
    /// `(package_id, count)` of the application's `pending` or `running` package runs, per package
    /// (`GET /api/agents` `running_runs`, and the in-use check of a package delete).
    async fn open_runs_by_package(&self, application_id: &str) -> DbResult<Vec<(String, i64)>>;
}

macro_rules! impl_run_repo {
    ($db:ty, $lock:expr) => {
        #[async_trait]
        impl RunRepo for SqlDatabase<$db> {
            async fn insert_run(&self, run: &RunRow, max_active: i64) -> Result<RunRow, InsertRunError> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let lock: Option<&str> = $lock;
                if let Some(lock) = lock {
                    sqlx::query(lock)
                        .bind(&run.org_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                let sql = format!(
                    "INSERT INTO runs (id, org_id, application_id, package_id, end_user_id, api_key_id, \
                     schedule_id, kind, agent_scope, agent_name, version_ref, run_number, status, input, \
                     model_label, timeout_seconds, created_at, token_usage, cost_pricing_status, \
                     sink_secret_encrypted, last_event_sequence, last_heartbeat_at, boot_deadline_at, \
                     scheduled_for, inline_manifest, inline_prompt, output_schema) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     (SELECT COALESCE(MAX(run_number), 0) + 1 FROM runs WHERE application_id = $3 \
                      AND agent_scope = $9 AND agent_name = $10), \
                     $12, $13, $14, $15, $16, $17, $18, $19, 0, $20, $21, $22, $23, $24, $25 \
                     WHERE (SELECT COUNT(*) FROM runs WHERE org_id = $2 AND status IN {OPEN}) < $26 \
                     RETURNING {RUN_COLS}"
                );
                let row = sqlx::query_as::<_, RunRow>(&sql)
                    .bind(&run.id)
                    .bind(&run.org_id)
                    .bind(&run.application_id)
                    .bind(&run.package_id)
                    .bind(&run.end_user_id)
                    .bind(&run.api_key_id)
                    .bind(&run.schedule_id)
                    .bind(&run.kind)
                    .bind(&run.agent_scope)
                    .bind(&run.agent_name)
                    .bind(&run.version_ref)
                    .bind(&run.status)
                    .bind(&run.input)
                    .bind(&run.model_label)
                    .bind(run.timeout_seconds)
                    .bind(run.created_at)
                    .bind(&run.token_usage)
                    .bind(&run.cost_pricing_status)
                    .bind(&run.sink_secret_encrypted)
                    .bind(run.last_heartbeat_at)
                    .bind(run.boot_deadline_at)
                    .bind(run.scheduled_for)
                    .bind(&run.inline_manifest)
                    .bind(&run.inline_prompt)
                    .bind(&run.output_schema)
                    .bind(max_active)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                row.ok_or(InsertRunError::ConcurrencyExceeded)
            }

            async fn get_run(&self, id: &str) -> DbResult<Option<RunRow>> {
                let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = $1");
                Ok(sqlx::query_as::<_, RunRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_runs(
                &self,
                application_id: &str,
                filter: &RunFilter,
                page: &Page,
            ) -> DbResult<Paged<RunRow>> {
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
                self.list_page_between(
                    "runs",
                    RUN_COLS,
                    &filters,
                    (filter.created_from, filter.created_before),
                    page,
                )
                .await
            }

            async fn count_open_runs(&self, org_id: &str) -> DbResult<i64> {
                let sql = format!("SELECT COUNT(*) FROM runs WHERE org_id = $1 AND status IN {OPEN}");
                let (n,): (i64,) = sqlx::query_as(&sql)
                    .bind(org_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(n)
            }

            async fn mark_running(&self, id: &str, at: Timestamp) -> DbResult<bool> {
                let done = sqlx::query(
                    "UPDATE runs SET status = 'running', started_at = $1 \
                     WHERE id = $2 AND status = 'pending' AND sink_closed_at IS NULL",
                )
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn finalize_run(&self, id: &str, f: &Finalization) -> DbResult<bool> {
                let done = sqlx::query(
                    "UPDATE runs SET status = $1, result = $2, error = $3, completed_at = $4, duration = $5, \
                     token_usage = $6, cost = $7, cost_pricing_status = $8, sink_closed_at = $4 \
                     WHERE id = $9 AND sink_closed_at IS NULL",
                )
                .bind(&f.status)
                .bind(f.result.clone().map(Json))
                .bind(&f.error)
                .bind(f.completed_at)
                .bind(f.duration_ms)
                .bind(Json(&f.token_usage))
                .bind(f.cost)
                .bind(&f.cost_pricing_status)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn persist_event(
                &self,
                id: &str,
                sequence: i64,
                allow_gap: bool,
                effects: &EventEffects,
                at: Timestamp,
            ) -> DbResult<(bool, Option<RunLogRow>)> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let mut qb = QueryBuilder::<$db>::new("UPDATE runs SET last_event_sequence = ");
                qb.push_bind(sequence)
                    .push(", last_heartbeat_at = ")
                    .push_bind(at)
                    .push(", first_event_at = COALESCE(first_event_at, ")
                    .push_bind(at)
                    .push(")");
                if let Some(usage) = &effects.token_usage {
                    qb.push(", token_usage = ").push_bind(Json(usage.clone()));
                }
                if let Some(cost) = &effects.cost {
                    qb.push(", cost = ").push_bind(*cost);
                }
                if let Some(output) = &effects.output {
                    qb.push(", last_output = ").push_bind(Json(output.clone()));
                }
                qb.push(" WHERE id = ").push_bind(id.to_string());
                if allow_gap {
                    qb.push(" AND last_event_sequence < ").push_bind(sequence);
                } else {
                    qb.push(" AND last_event_sequence = ").push_bind(sequence - 1);
                }
                qb.push(" AND sink_closed_at IS NULL");
                let done = qb.build().execute(&mut *tx).await.map_err(map_err)?;
                if done.rows_affected() != 1 {
                    tx.rollback().await.map_err(map_err)?;
                    return Ok((false, None));
                }
                if let Some(u) = &effects.usage {
                    super::usage::bind_usage!(u)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                let mut log_row = None;
                if let Some(log) = &effects.log {
                    let sql = format!(
                        "INSERT INTO run_logs (run_id, type, level, event, message, data, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {LOG_COLS}"
                    );
                    log_row = Some(
                        sqlx::query_as::<_, RunLogRow>(&sql)
                            .bind(id)
                            .bind(&log.log_type)
                            .bind(&log.level)
                            .bind(&log.event)
                            .bind(&log.message)
                            .bind(log.data.clone().map(Json))
                            .bind(at)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(map_err)?,
                    );
                }
                tx.commit().await.map_err(map_err)?;
                Ok((true, log_row))
            }

            async fn heartbeat(&self, id: &str, at: Timestamp) -> DbResult<()> {
                sqlx::query(
                    "UPDATE runs SET last_heartbeat_at = $1 WHERE id = $2 AND sink_closed_at IS NULL",
                )
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn insert_log(&self, id: &str, log: &NewLog, at: Timestamp) -> DbResult<RunLogRow> {
                let sql = format!(
                    "INSERT INTO run_logs (run_id, type, level, event, message, data, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {LOG_COLS}"
                );
                Ok(sqlx::query_as::<_, RunLogRow>(&sql)
                    .bind(id)
                    .bind(&log.log_type)
                    .bind(&log.level)
                    .bind(&log.event)
                    .bind(&log.message)
                    .bind(log.data.clone().map(Json))
                    .bind(at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_logs(
                &self,
                id: &str,
                since: Option<i64>,
                levels: &[&str],
                limit: i64,
            ) -> DbResult<Vec<RunLogRow>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {LOG_COLS} FROM run_logs WHERE run_id = "
                ));
                qb.push_bind(id.to_string());
                if let Some(since) = since {
                    qb.push(" AND id > ").push_bind(since);
                }
                if !levels.is_empty() {
                    qb.push(" AND level IN (");
                    let mut sep = qb.separated(", ");
                    for l in levels {
                        sep.push_bind(l.to_string());
                    }
                    qb.push(")");
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(limit);
                Ok(qb
                    .build_query_as::<RunLogRow>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn open_runs(&self) -> DbResult<Vec<RunRow>> {
                let sql = format!("SELECT {RUN_COLS} FROM runs WHERE status IN {OPEN}");
                Ok(sqlx::query_as::<_, RunRow>(&sql)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn open_runs_by_package(&self, application_id: &str) -> DbResult<Vec<(String, i64)>> {
                let sql = format!(
                    "SELECT package_id, COUNT(*) FROM runs WHERE application_id = $1 \
                     AND package_id IS NOT NULL AND status IN {OPEN} GROUP BY package_id"
                );
                Ok(sqlx::query_as::<_, (String, i64)>(&sql)
                    .bind(application_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }
        }
    };
}

impl_run_repo!(Sqlite, None);
impl_run_repo!(Postgres, Some("SELECT pg_advisory_xact_lock(hashtext($1))"));
