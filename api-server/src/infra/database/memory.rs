//! Agent memory persistence: memories, pinned slots and the checkpoint of one agent in one application for
//! one end-user (or none). The `MemoryRepo` part of [`super::Database`], written once for both backends.
//!
//! Writes that check a limit (count and bytes) run in one write transaction that first takes the scope's
//! lock: SQLite's `BEGIN IMMEDIATE` already serialises writers; PostgreSQL takes a transaction advisory
//! lock on the scope key. Two runs writing together therefore never both slip under a limit, and never
//! lose each other's rows (each memory is its own row).

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::tx::BeginWrite;
use super::*;

/// Whose state: one agent in one application for one end-user (`None`: runs without an end-user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryScope {
    pub org_id: String,
    pub application_id: String,
    pub agent_id: String,
    pub end_user_id: Option<String>,
}

impl MemoryScope {
    /// `<application>|<agent>|<end-user or "-">`, the unique key of the scope.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.application_id,
            self.agent_id,
            self.end_user_id.as_deref().unwrap_or("-")
        )
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemoryRow {
    pub id: String,
    pub content: String,
    pub bytes: i64,
    pub run_id: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PinnedRow {
    pub id: String,
    pub name: String,
    pub value: Json<Value>,
    pub bytes: i64,
    pub run_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckpointRow {
    pub value: Json<Value>,
    pub run_id: String,
    pub run_created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A limited write that did not fit: what the scope already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub count: i64,
    pub bytes: i64,
}

/// The caps of a limited write.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_count: i64,
    pub max_bytes: i64,
}

/// How many rows a wipe removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wiped {
    pub memories: u64,
    pub pinned: u64,
    pub checkpoint: u64,
}

const MEMORY_COLS: &str = "id, content, bytes, run_id, created_at";
const PINNED_COLS: &str = "id, name, value, bytes, run_id, created_at, updated_at";

#[async_trait]
pub trait MemoryRepo: Send + Sync {
    /// Inserts a memory unless the scope would then hold more than the caps; `Err(Full)` then.
    async fn insert_memory_capped(
        &self,
        scope: &MemoryScope,
        row: &MemoryRow,
        caps: Caps,
    ) -> DbResult<Result<MemoryRow, Full>>;
    /// Every memory of the scope, newest first.
    async fn list_memories(&self, scope: &MemoryScope) -> DbResult<Vec<MemoryRow>>;
    async fn delete_memory(&self, scope: &MemoryScope, id: &str) -> DbResult<bool>;
    /// Creates or overwrites the slot `name` unless the scope would then exceed the caps.
    async fn upsert_pinned_capped(
        &self,
        scope: &MemoryScope,
        row: &PinnedRow,
        caps: Caps,
    ) -> DbResult<Result<PinnedRow, Full>>;
    /// Every pinned slot of the scope, most recently updated first.
    async fn list_pinned(&self, scope: &MemoryScope) -> DbResult<Vec<PinnedRow>>;
    /// Deletes the slot with this id or this name.
    async fn delete_pinned(&self, scope: &MemoryScope, id_or_name: &str) -> DbResult<bool>;
    async fn get_checkpoint(&self, scope: &MemoryScope) -> DbResult<Option<CheckpointRow>>;
    /// Writes the checkpoint of `run_id` unless the stored one comes from a run created later (the
    /// last-writer rule, docs/documents.md). Returns whether it was written.
    async fn write_checkpoint(
        &self,
        scope: &MemoryScope,
        value: &Value,
        run_id: &str,
        run_created_at: Timestamp,
        at: Timestamp,
    ) -> DbResult<bool>;
    /// Deletes the scope's memories, pinned slots and checkpoint.
    async fn wipe_memory(&self, scope: &MemoryScope) -> DbResult<Wiped>;
}

macro_rules! impl_memory_repo {
    ($db:ty, $lock:expr) => {
        impl SqlDatabase<$db> {
            /// The scope's lock for the rest of `tx` (PostgreSQL); SQLite's write lock is already held.
            async fn lock_scope(
                tx: &mut sqlx::Transaction<'static, $db>,
                key: &str,
            ) -> DbResult<()> {
                let lock: Option<&str> = $lock;
                if let Some(sql) = lock {
                    sqlx::query(sql)
                        .bind(key)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl MemoryRepo for SqlDatabase<$db> {
            async fn insert_memory_capped(
                &self,
                scope: &MemoryScope,
                row: &MemoryRow,
                caps: Caps,
            ) -> DbResult<Result<MemoryRow, Full>> {
                let key = scope.key();
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                Self::lock_scope(&mut tx, &key).await?;
                let (count, bytes): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM agent_memories \
                     WHERE scope_key = $1",
                )
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                if count + 1 > caps.max_count || bytes + row.bytes > caps.max_bytes {
                    return Ok(Err(Full { count, bytes }));
                }
                let sql = format!(
                    "INSERT INTO agent_memories (id, scope_key, org_id, application_id, agent_id, \
                     end_user_id, content, bytes, run_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {MEMORY_COLS}"
                );
                let inserted = sqlx::query_as::<_, MemoryRow>(&sql)
                    .bind(&row.id)
                    .bind(&key)
                    .bind(&scope.org_id)
                    .bind(&scope.application_id)
                    .bind(&scope.agent_id)
                    .bind(&scope.end_user_id)
                    .bind(&row.content)
                    .bind(row.bytes)
                    .bind(&row.run_id)
                    .bind(row.created_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(Ok(inserted))
            }

            async fn list_memories(&self, scope: &MemoryScope) -> DbResult<Vec<MemoryRow>> {
                let sql = format!(
                    "SELECT {MEMORY_COLS} FROM agent_memories WHERE scope_key = $1 \
                     ORDER BY created_at DESC, id DESC"
                );
                sqlx::query_as::<_, MemoryRow>(&sql)
                    .bind(scope.key())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn delete_memory(&self, scope: &MemoryScope, id: &str) -> DbResult<bool> {
                let r = sqlx::query("DELETE FROM agent_memories WHERE scope_key = $1 AND id = $2")
                    .bind(scope.key())
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn upsert_pinned_capped(
                &self,
                scope: &MemoryScope,
                row: &PinnedRow,
                caps: Caps,
            ) -> DbResult<Result<PinnedRow, Full>> {
                let key = scope.key();
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                Self::lock_scope(&mut tx, &key).await?;
                // The slot being overwritten does not count against the caps.
                let (count, bytes): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM agent_pinned \
                     WHERE scope_key = $1 AND name <> $2",
                )
                .bind(&key)
                .bind(&row.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                if count + 1 > caps.max_count || bytes + row.bytes > caps.max_bytes {
                    return Ok(Err(Full { count, bytes }));
                }
                let sql = format!(
                    "INSERT INTO agent_pinned (id, scope_key, org_id, application_id, agent_id, \
                     end_user_id, name, value, bytes, run_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
                     ON CONFLICT (scope_key, name) DO UPDATE SET value = excluded.value, \
                     bytes = excluded.bytes, run_id = excluded.run_id, updated_at = excluded.updated_at \
                     RETURNING {PINNED_COLS}"
                );
                let stored = sqlx::query_as::<_, PinnedRow>(&sql)
                    .bind(&row.id)
                    .bind(&key)
                    .bind(&scope.org_id)
                    .bind(&scope.application_id)
                    .bind(&scope.agent_id)
                    .bind(&scope.end_user_id)
                    .bind(&row.name)
                    .bind(&row.value)
                    .bind(row.bytes)
                    .bind(&row.run_id)
                    .bind(row.updated_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(Ok(stored))
            }

            async fn list_pinned(&self, scope: &MemoryScope) -> DbResult<Vec<PinnedRow>> {
                let sql = format!(
                    "SELECT {PINNED_COLS} FROM agent_pinned WHERE scope_key = $1 \
                     ORDER BY updated_at DESC, name"
                );
                sqlx::query_as::<_, PinnedRow>(&sql)
                    .bind(scope.key())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn delete_pinned(&self, scope: &MemoryScope, id_or_name: &str) -> DbResult<bool> {
                let r = sqlx::query(
                    "DELETE FROM agent_pinned WHERE scope_key = $1 AND (id = $2 OR name = $2)",
                )
                .bind(scope.key())
                .bind(id_or_name)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn get_checkpoint(&self, scope: &MemoryScope) -> DbResult<Option<CheckpointRow>> {
                sqlx::query_as::<_, CheckpointRow>(
                    "SELECT value, run_id, run_created_at, updated_at FROM agent_checkpoints \
                     WHERE scope_key = $1",
                )
                .bind(scope.key())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)
            }

            async fn write_checkpoint(
                &self,
                scope: &MemoryScope,
                value: &Value,
                run_id: &str,
                run_created_at: Timestamp,
                at: Timestamp,
            ) -> DbResult<bool> {
                // One statement: the conditional upsert is atomic on both databases.
                let r = sqlx::query(
                    "INSERT INTO agent_checkpoints (scope_key, org_id, application_id, agent_id, \
                     end_user_id, value, run_id, run_created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (scope_key) DO UPDATE SET value = excluded.value, \
                     run_id = excluded.run_id, run_created_at = excluded.run_created_at, \
                     updated_at = excluded.updated_at \
                     WHERE agent_checkpoints.run_created_at <= excluded.run_created_at",
                )
                .bind(scope.key())
                .bind(&scope.org_id)
                .bind(&scope.application_id)
                .bind(&scope.agent_id)
                .bind(&scope.end_user_id)
                .bind(Json(value))
                .bind(run_id)
                .bind(run_created_at)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() > 0)
            }

            async fn wipe_memory(&self, scope: &MemoryScope) -> DbResult<Wiped> {
                let key = scope.key();
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let mut wiped = Wiped::default();
                for (table, n) in [
                    ("agent_memories", &mut wiped.memories),
                    ("agent_pinned", &mut wiped.pinned),
                    ("agent_checkpoints", &mut wiped.checkpoint),
                ] {
                    *n = sqlx::query(&format!("DELETE FROM {table} WHERE scope_key = $1"))
                        .bind(&key)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                }
                tx.commit().await.map_err(map_err)?;
                Ok(wiped)
            }
        }
    };
}

impl_memory_repo!(Sqlite, None);
impl_memory_repo!(
    Postgres,
    Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
);
