//! Idempotency records (§8): the `IdempotencyRepo` part of [`super::Database`], written once for both
//! backends.
//!
//! A record belongs to the full identity of the caller: organization, application, credential (API key or
//! admin token) and impersonated end-user, plus the key. Two callers that send the same key never see each
//! other's record. The stored answer is a keyring envelope (it may hold a one-time secret, such as a new
//! webhook's `whsec_…`); the caller encrypts and decrypts it.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::*;

/// How long a request may hold an idempotency key in `processing` before the key is considered abandoned.
const IDEMPOTENCY_STALE_SECS: i64 = 120;

/// How long a completed record is kept (§8).
const IDEMPOTENCY_TTL_HOURS: i64 = 24;

/// Whose record: the caller's full identity and the `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    pub org_id: String,
    pub application_id: String,
    /// `apikey:<id>` or `admin:<id>`.
    pub credential: String,
    /// The impersonated end-user, or empty.
    pub end_user_id: String,
    pub key: String,
}

/// What an idempotency key currently holds (§8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key was free and is now held by this request.
    Acquired,
    /// Another request with this key is still being processed.
    InProgress { body_hash: String },
    /// A 2xx answer is stored.
    Completed {
        body_hash: String,
        status: u16,
        /// The stored body as written by [`IdempotencyRepo::idempotency_complete`] (an envelope).
        body: String,
    },
}

#[async_trait]
pub trait IdempotencyRepo: Send + Sync {
    /// Takes the key for this request, or reports what it holds. An expired record, or one left in
    /// `processing` for longer than the stale window, is dropped first.
    async fn idempotency_begin(
        &self,
        scope: &IdempotencyScope,
        body_hash: &str,
    ) -> DbResult<IdempotencyState>;
    /// Stores the 2xx answer (`body` as the caller encoded it).
    async fn idempotency_complete(
        &self,
        scope: &IdempotencyScope,
        status: u16,
        body: &str,
    ) -> DbResult<()>;
    /// Frees the key after a non-2xx answer.
    async fn idempotency_release(&self, scope: &IdempotencyScope) -> DbResult<()>;
    /// Deletes every record that expired before `at`; returns how many.
    async fn idempotency_sweep(&self, at: Timestamp) -> DbResult<u64>;
}

const WHERE_SCOPE: &str =
    "org_id = $1 AND application_id = $2 AND credential = $3 AND end_user_id = $4 AND idem_key = $5";

macro_rules! impl_idempotency_repo {
    ($db:ty) => {
        #[async_trait]
        impl IdempotencyRepo for SqlDatabase<$db> {
            async fn idempotency_begin(
                &self,
                s: &IdempotencyScope,
                body_hash: &str,
            ) -> DbResult<IdempotencyState> {
                let at = now();
                let stale = at - chrono::Duration::seconds(IDEMPOTENCY_STALE_SECS);
                sqlx::query(&format!(
                    "DELETE FROM idempotency_keys WHERE {WHERE_SCOPE} \
                     AND (expires_at < $6 OR (state = 'processing' AND created_at < $7))"
                ))
                .bind(&s.org_id)
                .bind(&s.application_id)
                .bind(&s.credential)
                .bind(&s.end_user_id)
                .bind(&s.key)
                .bind(at)
                .bind(stale)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (org_id, application_id, credential, end_user_id, \
                     idem_key, body_hash, state, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'processing', $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(&s.org_id)
                .bind(&s.application_id)
                .bind(&s.credential)
                .bind(&s.end_user_id)
                .bind(&s.key)
                .bind(body_hash)
                .bind(at)
                .bind(at + chrono::Duration::hours(IDEMPOTENCY_TTL_HOURS))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if inserted.rows_affected() == 1 {
                    return Ok(IdempotencyState::Acquired);
                }
                let row: Option<(String, String, Option<i32>, Option<String>)> =
                    sqlx::query_as(&format!(
                        "SELECT body_hash, state, status_code, response_enc FROM idempotency_keys \
                         WHERE {WHERE_SCOPE}"
                    ))
                    .bind(&s.org_id)
                    .bind(&s.application_id)
                    .bind(&s.credential)
                    .bind(&s.end_user_id)
                    .bind(&s.key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(match row {
                    // Released between our insert and read: treat as in progress; the client retries.
                    None => IdempotencyState::InProgress {
                        body_hash: body_hash.to_string(),
                    },
                    Some((hash, state, status, body)) if state == "done" => {
                        IdempotencyState::Completed {
                            body_hash: hash,
                            status: status.unwrap_or(200) as u16,
                            body: body.unwrap_or_default(),
                        }
                    }
                    Some((hash, _, _, _)) => IdempotencyState::InProgress { body_hash: hash },
                })
            }

            async fn idempotency_complete(
                &self,
                s: &IdempotencyScope,
                status: u16,
                body: &str,
            ) -> DbResult<()> {
                sqlx::query(&format!(
                    "UPDATE idempotency_keys SET state = 'done', status_code = $6, response_enc = $7 \
                     WHERE {WHERE_SCOPE}"
                ))
                .bind(&s.org_id)
                .bind(&s.application_id)
                .bind(&s.credential)
                .bind(&s.end_user_id)
                .bind(&s.key)
                .bind(status as i32)
                .bind(body)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn idempotency_release(&self, s: &IdempotencyScope) -> DbResult<()> {
                sqlx::query(&format!("DELETE FROM idempotency_keys WHERE {WHERE_SCOPE}"))
                    .bind(&s.org_id)
                    .bind(&s.application_id)
                    .bind(&s.credential)
                    .bind(&s.end_user_id)
                    .bind(&s.key)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn idempotency_sweep(&self, at: Timestamp) -> DbResult<u64> {
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < $1")
                    .bind(at)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(done.rows_affected())
            }
        }
    };
}

impl_idempotency_repo!(Sqlite);
impl_idempotency_repo!(Postgres);
