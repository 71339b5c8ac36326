//! Run documents and uploads: the `DocumentRepo` part of [`super::Database`], written once for both
//! backends. The bytes live in the object store; these rows say what they are and who may see them.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::tx::BeginWrite;
use super::*;

/// A document a run published. `status` is `pending` until its bytes are stored, then `ready`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DocumentRow {
    pub id: String,
    pub run_id: String,
    pub org_id: String,
    pub application_id: String,
    pub end_user_id: Option<String>,
    pub name: String,
    pub media_type: String,
    pub size: i64,
    pub storage_key: String,
    pub status: String,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

/// A file sent into the platform for a run's input. `status`: `pending` (waiting for its bytes),
/// `receiving` (a PUT is streaming), `ready`. `run_id` is the run that took it as input.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UploadRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub end_user_id: Option<String>,
    pub name: String,
    pub media_type: String,
    pub size: i64,
    pub storage_key: String,
    pub status: String,
    pub run_id: Option<String>,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

/// Equality filters of `GET /api/documents`.
#[derive(Debug, Clone, Default)]
pub struct DocumentFilter {
    pub run_id: Option<String>,
    pub end_user_id: Option<String>,
    pub media_type: Option<String>,
    pub name: Option<String>,
}

const DOC_COLS: &str = "id, run_id, org_id, application_id, end_user_id, name, media_type, size, \
    storage_key, status, created_at, completed_at";
const UPLOAD_COLS: &str = "id, org_id, application_id, end_user_id, name, media_type, size, \
    storage_key, status, run_id, expires_at, created_at, completed_at";

#[async_trait]
pub trait DocumentRepo: Send + Sync {
    /// Inserts a pending document unless its run already has `max_per_run` documents (`None` then).
    async fn insert_document_capped(
        &self,
        row: &DocumentRow,
        max_per_run: i64,
    ) -> DbResult<Option<DocumentRow>>;
    async fn get_document(&self, id: &str) -> DbResult<Option<DocumentRow>>;
    /// Marks a pending document ready with its stored size; false when it was not pending.
    async fn complete_document(&self, id: &str, size: i64, at: Timestamp) -> DbResult<bool>;
    /// The ready documents of a run, oldest first.
    async fn run_documents(&self, run_id: &str) -> DbResult<Vec<DocumentRow>>;
    /// The ready documents of several runs (one list page), oldest first.
    async fn documents_of_runs(&self, run_ids: &[String]) -> DbResult<Vec<DocumentRow>>;
    /// Ready documents of an application, newest first.
    async fn list_documents(
        &self,
        application_id: &str,
        filter: &DocumentFilter,
        page: &Page,
    ) -> DbResult<Paged<DocumentRow>>;
    async fn delete_document(&self, id: &str) -> DbResult<bool>;
    /// Up to `limit` documents created before `cutoff`, or pending since then (abandoned), oldest first.
    async fn documents_before(&self, cutoff: Timestamp, limit: i64) -> DbResult<Vec<DocumentRow>>;

    async fn insert_upload(&self, row: &UploadRow) -> DbResult<UploadRow>;
    async fn get_upload(&self, id: &str) -> DbResult<Option<UploadRow>>;
    /// `pending` → `receiving`: exactly one PUT streams an upload's bytes. False when it was not pending.
    async fn claim_upload(&self, id: &str) -> DbResult<bool>;
    /// `receiving` → `ready` (with the stored size), or back to `pending` after a failed PUT.
    async fn finish_upload(&self, id: &str, ready: Option<(i64, Timestamp)>) -> DbResult<()>;
    /// Attaches a ready, unused upload to a run; false when it is not ready or already used.
    async fn consume_upload(&self, id: &str, run_id: &str) -> DbResult<bool>;
    async fn run_uploads(&self, run_id: &str) -> DbResult<Vec<UploadRow>>;
    /// Up to `limit` uploads whose `expires_at` has passed.
    async fn expired_uploads(&self, at: Timestamp, limit: i64) -> DbResult<Vec<UploadRow>>;
    async fn delete_upload(&self, id: &str) -> DbResult<()>;
}

macro_rules! impl_document_repo {
    ($db:ty) => {
        #[async_trait]
        impl DocumentRepo for SqlDatabase<$db> {
            async fn insert_document_capped(
                &self,
                r: &DocumentRow,
                max_per_run: i64,
            ) -> DbResult<Option<DocumentRow>> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                // The run's row lock (PostgreSQL) serialises concurrent publishes of one run.
                sqlx::query("UPDATE runs SET last_event_sequence = last_event_sequence WHERE id = $1")
                    .bind(&r.run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM run_documents WHERE run_id = $1")
                        .bind(&r.run_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                if n >= max_per_run {
                    return Ok(None);
                }
                let sql = format!(
                    "INSERT INTO run_documents ({DOC_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                     $9, $10, $11, $12) RETURNING {DOC_COLS}"
                );
                let row = sqlx::query_as::<_, DocumentRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.run_id)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.end_user_id)
                    .bind(&r.name)
                    .bind(&r.media_type)
                    .bind(r.size)
                    .bind(&r.storage_key)
                    .bind(&r.status)
                    .bind(r.created_at)
                    .bind(r.completed_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(Some(row))
            }

            async fn get_document(&self, id: &str) -> DbResult<Option<DocumentRow>> {
                let sql = format!("SELECT {DOC_COLS} FROM run_documents WHERE id = $1");
                sqlx::query_as::<_, DocumentRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn complete_document(&self, id: &str, size: i64, at: Timestamp) -> DbResult<bool> {
                let r = sqlx::query(
                    "UPDATE run_documents SET status = 'ready', size = $2, completed_at = $3 \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(id)
                .bind(size)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn run_documents(&self, run_id: &str) -> DbResult<Vec<DocumentRow>> {
                let sql = format!(
                    "SELECT {DOC_COLS} FROM run_documents WHERE run_id = $1 AND status = 'ready' \
                     ORDER BY created_at, id"
                );
                sqlx::query_as::<_, DocumentRow>(&sql)
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn documents_of_runs(&self, run_ids: &[String]) -> DbResult<Vec<DocumentRow>> {
                if run_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let marks: Vec<String> = (1..=run_ids.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {DOC_COLS} FROM run_documents WHERE status = 'ready' AND run_id IN ({}) \
                     ORDER BY created_at, id",
                    marks.join(", ")
                );
                let mut q = sqlx::query_as::<_, DocumentRow>(&sql);
                for id in run_ids {
                    q = q.bind(id);
                }
                q.fetch_all(&self.pool).await.map_err(map_err)
            }

            async fn list_documents(
                &self,
                application_id: &str,
                f: &DocumentFilter,
                page: &Page,
            ) -> DbResult<Paged<DocumentRow>> {
                let mut filters = vec![
                    ("application_id", application_id.to_string()),
                    ("status", "ready".to_string()),
                ];
                for (col, v) in [
                    ("run_id", &f.run_id),
                    ("end_user_id", &f.end_user_id),
                    ("media_type", &f.media_type),
                    ("name", &f.name),
                ] {
                    if let Some(v) = v {
                        filters.push((col, v.clone()));
                    }
                }
                self.list_page("run_documents", DOC_COLS, &filters, page).await
            }

            async fn delete_document(&self, id: &str) -> DbResult<bool> {
                let r = sqlx::query("DELETE FROM run_documents WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn documents_before(
                &self,
                cutoff: Timestamp,
                limit: i64,
            ) -> DbResult<Vec<DocumentRow>> {
                let sql = format!(
                    "SELECT {DOC_COLS} FROM run_documents WHERE created_at < $1 \
                     ORDER BY created_at LIMIT $2"
                );
                sqlx::query_as::<_, DocumentRow>(&sql)
                    .bind(cutoff)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn insert_upload(&self, r: &UploadRow) -> DbResult<UploadRow> {
                let sql = format!(
                    "INSERT INTO uploads ({UPLOAD_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13) RETURNING {UPLOAD_COLS}"
                );
                sqlx::query_as::<_, UploadRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.end_user_id)
                    .bind(&r.name)
                    .bind(&r.media_type)
                    .bind(r.size)
                    .bind(&r.storage_key)
                    .bind(&r.status)
                    .bind(&r.run_id)
                    .bind(r.expires_at)
                    .bind(r.created_at)
                    .bind(r.completed_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn get_upload(&self, id: &str) -> DbResult<Option<UploadRow>> {
                let sql = format!("SELECT {UPLOAD_COLS} FROM uploads WHERE id = $1");
                sqlx::query_as::<_, UploadRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn claim_upload(&self, id: &str) -> DbResult<bool> {
                let r = sqlx::query(
                    "UPDATE uploads SET status = 'receiving' WHERE id = $1 AND status = 'pending'",
                )
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn finish_upload(
                &self,
                id: &str,
                ready: Option<(i64, Timestamp)>,
            ) -> DbResult<()> {
                let q = match ready {
                    Some((size, at)) => sqlx::query(
                        "UPDATE uploads SET status = 'ready', size = $2, completed_at = $3 \
                         WHERE id = $1 AND status = 'receiving'",
                    )
                    .bind(id)
                    .bind(size)
                    .bind(at),
                    None => sqlx::query(
                        "UPDATE uploads SET status = 'pending' WHERE id = $1 AND status = 'receiving'",
                    )
                    .bind(id),
                };
                q.execute(&self.pool).await.map_err(map_err)?;
                Ok(())
            }

            async fn consume_upload(&self, id: &str, run_id: &str) -> DbResult<bool> {
                let r = sqlx::query(
                    "UPDATE uploads SET run_id = $2 WHERE id = $1 AND status = 'ready' \
                     AND run_id IS NULL",
                )
                .bind(id)
                .bind(run_id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn run_uploads(&self, run_id: &str) -> DbResult<Vec<UploadRow>> {
                let sql = format!(
                    "SELECT {UPLOAD_COLS} FROM uploads WHERE run_id = $1 ORDER BY created_at, id"
                );
                sqlx::query_as::<_, UploadRow>(&sql)
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn expired_uploads(&self, at: Timestamp, limit: i64) -> DbResult<Vec<UploadRow>> {
                let sql = format!(
                    "SELECT {UPLOAD_COLS} FROM uploads WHERE expires_at < $1 \
                     ORDER BY expires_at LIMIT $2"
                );
                sqlx::query_as::<_, UploadRow>(&sql)
                    .bind(at)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn delete_upload(&self, id: &str) -> DbResult<()> {
                sqlx::query("DELETE FROM uploads WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }
        }
    };
}

impl_document_repo!(Sqlite);
impl_document_repo!(Postgres);
