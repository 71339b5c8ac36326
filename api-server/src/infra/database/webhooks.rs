//! Webhook persistence: the `WebhookRepo` part of [`super::Database`], written once for both backends.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::tx::BeginWrite;
use super::*;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub url: String,
    /// JSON array of event types.
    pub events: Json<Value>,
    pub package_id: Option<String>,
    /// `full` or `summary`
    pub payload_mode: String,
    pub enabled: bool,
    /// Keyring envelope of the `whsec_…` secret.
    pub secret_enc: String,
    /// The secret being rotated out, valid until `previous_secret_expires_at`.
    pub previous_secret_enc: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl WebhookRow {
    pub fn event_types(&self) -> Vec<String> {
        self.events
            .0
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One delivery attempt (§19): `status` is `success`, `retrying` (another attempt is scheduled) or
/// `failed` (permanent, or the last attempt).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub attempt: i64,
    pub status: String,
    pub status_code: Option<i64>,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
    pub created_at: Timestamp,
}

const WEBHOOK_COLS: &str =
    "id, org_id, application_id, url, events, package_id, payload_mode, enabled, \
    secret_enc, previous_secret_enc, previous_secret_expires_at, created_at, updated_at";

const DELIVERY_COLS: &str =
    "id, webhook_id, event_id, event_type, attempt, status, status_code, latency_ms, error, created_at";

#[async_trait]
pub trait WebhookRepo: Send + Sync {
    async fn insert_webhook(&self, row: &WebhookRow) -> DbResult<WebhookRow>;
    /// Inserts the webhook unless its application already has `max`; `None` then. Creates in one
    /// application are serialised, so the cap holds under concurrent requests.
    async fn insert_webhook_capped(
        &self,
        row: &WebhookRow,
        max: i64,
    ) -> DbResult<Option<WebhookRow>>;
    async fn count_webhooks(&self, application_id: &str) -> DbResult<i64>;
    async fn get_webhook(&self, application_id: &str, id: &str) -> DbResult<Option<WebhookRow>>;
    /// By id alone (the delivery worker).
    async fn get_webhook_by_id(&self, id: &str) -> DbResult<Option<WebhookRow>>;
    async fn list_webhooks(&self, application_id: &str, page: &Page)
        -> DbResult<Paged<WebhookRow>>;
    /// Every enabled webhook of an application (event matching happens in the caller).
    async fn enabled_webhooks(&self, application_id: &str) -> DbResult<Vec<WebhookRow>>;
    /// Writes the editable columns and the secrets (url, events, package, mode, enabled, secrets, updated).
    async fn update_webhook(&self, row: &WebhookRow) -> DbResult<WebhookRow>;
    async fn delete_webhook(&self, application_id: &str, id: &str) -> DbResult<()>;
    /// Records one attempt. A second record of the same (webhook, event, attempt) is a no-op that
    /// answers `false` (a re-delivered job).
    async fn insert_delivery(&self, row: &DeliveryRow) -> DbResult<bool>;
    async fn list_deliveries(&self, webhook_id: &str, page: &Page) -> DbResult<Paged<DeliveryRow>>;
}

macro_rules! impl_webhook_repo {
    ($db:ty) => {
        #[async_trait]
        impl WebhookRepo for SqlDatabase<$db> {
            async fn insert_webhook(&self, r: &WebhookRow) -> DbResult<WebhookRow> {
                let sql = format!(
                    "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13) RETURNING {WEBHOOK_COLS}"
                );
                Ok(sqlx::query_as::<_, WebhookRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.url)
                    .bind(&r.events)
                    .bind(&r.package_id)
                    .bind(&r.payload_mode)
                    .bind(r.enabled)
                    .bind(&r.secret_enc)
                    .bind(&r.previous_secret_enc)
                    .bind(r.previous_secret_expires_at)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn insert_webhook_capped(
                &self,
                r: &WebhookRow,
                max: i64,
            ) -> DbResult<Option<WebhookRow>> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                // Takes the application's row lock (PostgreSQL) within the write lock that SQLite's
                // `BEGIN IMMEDIATE` already holds, so a concurrent create waits here and then counts
                // this one.
                sqlx::query("UPDATE applications SET updated_at = updated_at WHERE id = $1")
                    .bind(&r.application_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM webhooks WHERE application_id = $1")
                        .bind(&r.application_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                if n >= max {
                    return Ok(None);
                }
                let sql = format!(
                    "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13) RETURNING {WEBHOOK_COLS}"
                );
                let row = sqlx::query_as::<_, WebhookRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.url)
                    .bind(&r.events)
                    .bind(&r.package_id)
                    .bind(&r.payload_mode)
                    .bind(r.enabled)
                    .bind(&r.secret_enc)
                    .bind(&r.previous_secret_enc)
                    .bind(r.previous_secret_expires_at)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(Some(row))
            }

            async fn count_webhooks(&self, application_id: &str) -> DbResult<i64> {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM webhooks WHERE application_id = $1")
                        .bind(application_id)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err)?;
                Ok(n)
            }

            async fn get_webhook(
                &self,
                application_id: &str,
                id: &str,
            ) -> DbResult<Option<WebhookRow>> {
                let sql = format!(
                    "SELECT {WEBHOOK_COLS} FROM webhooks WHERE application_id = $1 AND id = $2"
                );
                Ok(sqlx::query_as::<_, WebhookRow>(&sql)
                    .bind(application_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn get_webhook_by_id(&self, id: &str) -> DbResult<Option<WebhookRow>> {
                let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1");
                Ok(sqlx::query_as::<_, WebhookRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_webhooks(
                &self,
                application_id: &str,
                page: &Page,
            ) -> DbResult<Paged<WebhookRow>> {
                let filters = [("application_id", application_id.to_string())];
                self.list_page("webhooks", WEBHOOK_COLS, &filters, page).await
            }

            async fn enabled_webhooks(&self, application_id: &str) -> DbResult<Vec<WebhookRow>> {
                let sql = format!(
                    "SELECT {WEBHOOK_COLS} FROM webhooks WHERE application_id = $1 AND enabled = $2 \
                     ORDER BY created_at, id"
                );
                Ok(sqlx::query_as::<_, WebhookRow>(&sql)
                    .bind(application_id)
                    .bind(true)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn update_webhook(&self, r: &WebhookRow) -> DbResult<WebhookRow> {
                let sql = format!(
                    "UPDATE webhooks SET url = $1, events = $2, package_id = $3, payload_mode = $4, \
                     enabled = $5, secret_enc = $6, previous_secret_enc = $7, \
                     previous_secret_expires_at = $8, updated_at = $9 \
                     WHERE application_id = $10 AND id = $11 RETURNING {WEBHOOK_COLS}"
                );
                sqlx::query_as::<_, WebhookRow>(&sql)
                    .bind(&r.url)
                    .bind(&r.events)
                    .bind(&r.package_id)
                    .bind(&r.payload_mode)
                    .bind(r.enabled)
                    .bind(&r.secret_enc)
                    .bind(&r.previous_secret_enc)
                    .bind(r.previous_secret_expires_at)
                    .bind(r.updated_at)
                    .bind(&r.application_id)
                    .bind(&r.id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn delete_webhook(&self, application_id: &str, id: &str) -> DbResult<()> {
                let done =
                    sqlx::query("DELETE FROM webhooks WHERE application_id = $1 AND id = $2")
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

            async fn insert_delivery(&self, r: &DeliveryRow) -> DbResult<bool> {
                let sql = format!(
                    "INSERT INTO webhook_deliveries ({DELIVERY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, \
                     $7, $8, $9, $10) ON CONFLICT (webhook_id, event_id, attempt) DO NOTHING"
                );
                let done = sqlx::query(&sql)
                    .bind(&r.id)
                    .bind(&r.webhook_id)
                    .bind(&r.event_id)
                    .bind(&r.event_type)
                    .bind(r.attempt)
                    .bind(&r.status)
                    .bind(r.status_code)
                    .bind(r.latency_ms)
                    .bind(&r.error)
                    .bind(r.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_deliveries(
                &self,
                webhook_id: &str,
                page: &Page,
            ) -> DbResult<Paged<DeliveryRow>> {
                let filters = [("webhook_id", webhook_id.to_string())];
                self.list_page("webhook_deliveries", DELIVERY_COLS, &filters, page)
                    .await
            }
        }
    };
}

impl_webhook_repo!(Sqlite);
impl_webhook_repo!(Postgres);
