//! Schedule persistence: the `ScheduleRepo` part of [`super::Database`], written once for both backends.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::*;

/// Who a schedule runs as, fixed at creation (§18.1).
pub const ACTOR_END_USER: &str = "end_user";
pub const ACTOR_API_KEY: &str = "api_key";
pub const ACTOR_ADMIN: &str = "admin";
/// A signed-in user (the dashboard): fires while the user is a member whose role may run agents.
pub const ACTOR_USER: &str = "user";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    /// `@scope/name`
    pub package_id: String,
    pub end_user_id: Option<String>,
    /// The API key the schedule runs as (also for an end-user actor: the key that impersonated it).
    pub api_key_id: Option<String>,
    /// `end_user`, `api_key`, `admin` or `user`
    pub actor_type: String,
    /// The admin token the schedule runs as (`admin` actor; NULL for schedules made before it was
    /// recorded).
    pub admin_token_id: Option<String>,
    pub name: Option<String>,
    pub enabled: bool,
    pub cron_expression: String,
    pub timezone: String,
    pub input: Json<Value>,
    pub version_override: Option<String>,
    pub last_run_at: Option<Timestamp>,
    pub next_run_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Why the platform disabled the schedule (its credential or actor is gone); NULL otherwise.
    pub disabled_reason: Option<String>,
    /// The signed-in user the schedule runs as (`user` actor).
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ScheduleFilter {
    pub package_id: Option<String>,
    pub end_user_id: Option<String>,
}

const SCHEDULE_COLS: &str = "id, org_id, application_id, package_id, end_user_id, api_key_id, actor_type, name, \
    enabled, cron_expression, timezone, input, version_override, last_run_at, next_run_at, created_at, updated_at, \
    admin_token_id, disabled_reason, user_id";

const ADMIN_COLS: &str = "id, org_id, token_prefix, created_at, last_used_at, revoked_at";

const KEY_COLS: &str =
    "id, org_id, application_id, name, key_prefix, scopes, expires_at, revoked_at, \
    last_used_at, created_at";

#[async_trait]
pub trait ScheduleRepo: Send + Sync {
    async fn insert_schedule(&self, row: &ScheduleRow) -> DbResult<ScheduleRow>;
    async fn get_schedule(&self, application_id: &str, id: &str) -> DbResult<Option<ScheduleRow>>;
    async fn list_schedules(
        &self,
        application_id: &str,
        filter: &ScheduleFilter,
        page: &Page,
    ) -> DbResult<Paged<ScheduleRow>>;
    /// Writes the editable columns (name, enabled, cron, timezone, input, version, next run, updated), the
    /// actor's credential (an edit can hand the schedule to its editor) and the disabled reason.
    async fn update_schedule(&self, row: &ScheduleRow) -> DbResult<ScheduleRow>;
    async fn delete_schedule(&self, application_id: &str, id: &str) -> DbResult<()>;
    /// Every enabled schedule, across organizations (the cron clock).
    async fn enabled_schedules(&self) -> DbResult<Vec<ScheduleRow>>;
    /// After a fire: `last_run_at` and the recomputed `next_run_at`.
    async fn mark_schedule_fired(
        &self,
        id: &str,
        last_run_at: Timestamp,
        next_run_at: Option<Timestamp>,
    ) -> DbResult<()>;
    /// Moves a stale `next_run_at` forward (occurrences that were never due, e.g. from before boot).
    async fn set_schedule_next_run(&self, id: &str, next_run_at: Option<Timestamp>)
        -> DbResult<()>;
    /// Disables a schedule whose actor, credential or agent disappeared, recording why.
    async fn disable_schedule(&self, id: &str, at: Timestamp, reason: &str) -> DbResult<()>;
    /// An API key by id, whatever its state (the actor of a schedule).
    async fn get_api_key_by_id(&self, id: &str) -> DbResult<Option<ApiKeyRow>>;
    /// An admin token by id, whatever its state (the actor of a schedule).
    async fn get_admin_token_by_id(&self, id: &str) -> DbResult<Option<AdminTokenRow>>;
}

macro_rules! impl_schedule_repo {
    ($db:ty) => {
        #[async_trait]
        impl ScheduleRepo for SqlDatabase<$db> {
            async fn insert_schedule(&self, r: &ScheduleRow) -> DbResult<ScheduleRow> {
                let sql = format!(
                    "INSERT INTO schedules ({SCHEDULE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING {SCHEDULE_COLS}"
                );
                Ok(sqlx::query_as::<_, ScheduleRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.package_id)
                    .bind(&r.end_user_id)
                    .bind(&r.api_key_id)
                    .bind(&r.actor_type)
                    .bind(&r.name)
                    .bind(r.enabled)
                    .bind(&r.cron_expression)
                    .bind(&r.timezone)
                    .bind(&r.input)
                    .bind(&r.version_override)
                    .bind(r.last_run_at)
                    .bind(r.next_run_at)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .bind(&r.admin_token_id)
                    .bind(&r.disabled_reason)
                    .bind(&r.user_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn get_schedule(
                &self,
                application_id: &str,
                id: &str,
            ) -> DbResult<Option<ScheduleRow>> {
                let sql = format!(
                    "SELECT {SCHEDULE_COLS} FROM schedules WHERE application_id = $1 AND id = $2"
                );
                Ok(sqlx::query_as::<_, ScheduleRow>(&sql)
                    .bind(application_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_schedules(
                &self,
                application_id: &str,
                filter: &ScheduleFilter,
                page: &Page,
            ) -> DbResult<Paged<ScheduleRow>> {
                let mut filters = vec![("application_id", application_id.to_string())];
                for (col, v) in [
                    ("package_id", &filter.package_id),
                    ("end_user_id", &filter.end_user_id),
                ] {
                    if let Some(v) = v {
                        filters.push((col, v.clone()));
                    }
                }
                self.list_page("schedules", SCHEDULE_COLS, &filters, page)
                    .await
            }

            async fn update_schedule(&self, r: &ScheduleRow) -> DbResult<ScheduleRow> {
                let sql = format!(
                    "UPDATE schedules SET name = $1, enabled = $2, cron_expression = $3, timezone = $4, \
                     input = $5, version_override = $6, next_run_at = $7, updated_at = $8, \
                     actor_type = $9, api_key_id = $10, admin_token_id = $11, disabled_reason = $12, \
                     user_id = $13 WHERE application_id = $14 AND id = $15 RETURNING {SCHEDULE_COLS}"
                );
                sqlx::query_as::<_, ScheduleRow>(&sql)
                    .bind(&r.name)
                    .bind(r.enabled)
                    .bind(&r.cron_expression)
                    .bind(&r.timezone)
                    .bind(&r.input)
                    .bind(&r.version_override)
                    .bind(r.next_run_at)
                    .bind(r.updated_at)
                    .bind(&r.actor_type)
                    .bind(&r.api_key_id)
                    .bind(&r.admin_token_id)
                    .bind(&r.disabled_reason)
                    .bind(&r.user_id)
                    .bind(&r.application_id)
                    .bind(&r.id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn delete_schedule(&self, application_id: &str, id: &str) -> DbResult<()> {
                let done =
                    sqlx::query("DELETE FROM schedules WHERE application_id = $1 AND id = $2")
                        .bind(application_id)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn enabled_schedules(&self) -> DbResult<Vec<ScheduleRow>> {
                let sql = format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE enabled = $1");
                Ok(sqlx::query_as::<_, ScheduleRow>(&sql)
                    .bind(true)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn mark_schedule_fired(
                &self,
                id: &str,
                last_run_at: Timestamp,
                next_run_at: Option<Timestamp>,
            ) -> DbResult<()> {
                // A schedule disabled meanwhile (by a fire or a request) keeps no next run.
                sqlx::query(
                    "UPDATE schedules SET last_run_at = $1, \
                     next_run_at = CASE WHEN enabled = $2 THEN $3 ELSE NULL END WHERE id = $4",
                )
                .bind(last_run_at)
                .bind(true)
                .bind(next_run_at)
                .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn set_schedule_next_run(
                &self,
                id: &str,
                next_run_at: Option<Timestamp>,
            ) -> DbResult<()> {
                sqlx::query("UPDATE schedules SET next_run_at = $1 WHERE id = $2 AND enabled = $3")
                    .bind(next_run_at)
                    .bind(id)
                    .bind(true)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn disable_schedule(&self, id: &str, at: Timestamp, reason: &str) -> DbResult<()> {
                sqlx::query(
                    "UPDATE schedules SET enabled = $1, next_run_at = NULL, updated_at = $2, \
                     disabled_reason = $3 WHERE id = $4",
                )
                .bind(false)
                .bind(at)
                .bind(reason)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn get_api_key_by_id(&self, id: &str) -> DbResult<Option<ApiKeyRow>> {
                let sql = format!("SELECT {KEY_COLS}, created_by FROM api_keys WHERE id = $1");
                Ok(sqlx::query_as::<_, ApiKeyRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn get_admin_token_by_id(&self, id: &str) -> DbResult<Option<AdminTokenRow>> {
                let sql = format!("SELECT {ADMIN_COLS} FROM admin_tokens WHERE id = $1");
                Ok(sqlx::query_as::<_, AdminTokenRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }
        }
    };
}

impl_schedule_repo!(Sqlite);
impl_schedule_repo!(Postgres);
