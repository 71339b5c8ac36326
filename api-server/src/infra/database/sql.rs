//! The SQL implementation of [`Database`], written once and instantiated for SQLite and PostgreSQL.
//!
//! The statements are portable: `$n` placeholders (SQLite reads `$n` as parameter n too), `RETURNING`,
//! `ON CONFLICT`, and column types that both drivers map the same way (`TEXT` ids, chrono timestamps,
//! `Json<T>`, `bool`). The macro keeps one copy of the logic without generic bounds on every call.

use super::tx::BeginWrite;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Pool, Postgres, QueryBuilder, Sqlite};

use super::*;

pub struct SqlDatabase<DB: sqlx::Database> {
    pub(super) pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlDatabase<DB> {
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

/// Opens (creating if needed) the Tier 0 database file: WAL, foreign keys on, 5 s busy timeout. A new file
/// is created in incremental auto-vacuum mode, so that retention can give freed pages back; a file
/// created before keeps its mode until `appstrate db prune` converts it.
pub async fn connect_sqlite(path: &Path) -> Result<SqlDatabase<Sqlite>, sqlx::Error> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(opts)
        .await?;
    Ok(SqlDatabase { pool })
}

/// The embedded migration sets (SPEC §4.3), applied at every boot.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a PostgreSQL server that refuses connections is waited for at boot (it may still be starting,
/// e.g. under docker compose).
pub const PG_CONNECT_WINDOW: Duration = Duration::from_secs(10);

/// Connects to PostgreSQL with a pool of at most 20 connections.
pub async fn connect_postgres(url: &str) -> Result<SqlDatabase<Postgres>, sqlx::Error> {
    connect_postgres_within(url, PG_CONNECT_WINDOW, 20).await
}

/// Connects to PostgreSQL. A refused connection is retried for `window`; any other failure (bad
/// password, unknown database, no answer) is returned at once. The first connection is made directly
/// rather than through the pool, so that the caller sees the server's real error instead of a pool
/// timeout.
pub async fn connect_postgres_within(
    url: &str,
    window: Duration,
    max_connections: u32,
) -> Result<SqlDatabase<Postgres>, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name("appstrate");
    let deadline = Instant::now() + window;
    let mut backoff = Duration::from_millis(50);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), opts.connect()).await {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                break;
            }
            Ok(Err(sqlx::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not answer within 10 s",
                )))
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    Ok(SqlDatabase { pool })
}

/// `postgres://user@host:port/db` for messages: the password and query are never shown.
pub fn describe_postgres_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let user = if u.username().is_empty() {
                String::new()
            } else {
                format!("{}@", u.username())
            };
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{user}{}{port}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            )
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

pub(super) fn map_err(e: sqlx::Error) -> DbError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            let name = d
                .constraint()
                .map(str::to_string)
                .unwrap_or_else(|| d.message().to_string());
            return DbError::Conflict(name);
        }
    }
    DbError::Sqlx(e)
}

pub(super) fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "org".into()
    } else {
        slug
    }
}

/// An API key row joined with its application's columns.
#[derive(sqlx::FromRow)]
struct KeyWithApplication {
    #[sqlx(flatten)]
    key: ApiKeyRow,
    app_name: String,
    app_is_default: bool,
    app_created_at: Timestamp,
    app_updated_at: Timestamp,
}

const APP_COLS: &str = "id, org_id, name, is_default, created_at, updated_at";
const ORG_COLS: &str = "id, name, slug, created_at, updated_at";
const ADMIN_COLS: &str = "id, org_id, token_prefix, created_at, last_used_at, revoked_at";
const KEY_COLS: &str = "id, org_id, application_id, name, key_prefix, scopes, expires_at, revoked_at, last_used_at, created_at";
const EU_COLS: &str =
    "id, org_id, application_id, name, email, external_id, metadata, created_at, updated_at";

/// The `disabled_reason` of the schedules of a deleted end-user.
pub const END_USER_DELETED: &str = "The schedule's end-user was deleted";

macro_rules! impl_sql_database {
    ($db:ty, $kind:literal, $migrator:expr) => {
        impl SqlDatabase<$db> {
            /// One page of `table`, newest first, restricted by equality `filters`.
            pub(super) async fn list_page<T>(
                &self,
                table: &str,
                cols: &str,
                filters: &[(&str, String)],
                page: &Page,
            ) -> DbResult<Paged<T>>
            where
                T: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                self.list_page_between(table, cols, filters, (None, None), page)
                    .await
            }

            /// [`list_page`] restricted to rows created in `[from, before)` (either end open).
            pub(super) async fn list_page_between<T>(
                &self,
                table: &str,
                cols: &str,
                filters: &[(&str, String)],
                created: (Option<Timestamp>, Option<Timestamp>),
                page: &Page,
            ) -> DbResult<Paged<T>>
            where
                T: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                let mut cursor = None;
                if let Some(after) = &page.starting_after {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "SELECT created_at FROM {table} WHERE id = "
                    ));
                    qb.push_bind(after.clone());
                    for (col, val) in filters {
                        qb.push(format!(" AND {col} = ")).push_bind(val.clone());
                    }
                    let at: Option<(Timestamp,)> = qb
                        .build_query_as()
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_err)?;
                    cursor = Some((at.ok_or(DbError::UnknownCursor)?.0, after.clone()));
                }
                let mut qb =
                    QueryBuilder::<$db>::new(format!("SELECT {cols} FROM {table} WHERE 1 = 1"));
                for (col, val) in filters {
                    qb.push(format!(" AND {col} = ")).push_bind(val.clone());
                }
                if let Some(from) = created.0 {
                    qb.push(" AND created_at >= ").push_bind(from);
                }
                if let Some(before) = created.1 {
                    qb.push(" AND created_at < ").push_bind(before);
                }
                if let Some((at, id)) = cursor {
                    // The redundant `created_at <=` lets the planner seek the (…, created_at, id) index
                    // instead of walking every newer row: the deepest page costs what the first one does.
                    qb.push(" AND created_at <= ")
                        .push_bind(at)
                        .push(" AND (created_at < ")
                        .push_bind(at)
                        .push(" OR (created_at = ")
                        .push_bind(at)
                        .push(" AND id < ")
                        .push_bind(id)
                        .push("))");
                }
                qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(page.limit as i64 + 1);
                let mut items: Vec<T> = qb
                    .build_query_as()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                let has_more = items.len() > page.limit as usize;
                items.truncate(page.limit as usize);
                Ok(Paged { items, has_more })
            }
        }

        #[async_trait]
        impl Database for SqlDatabase<$db> {
            fn kind(&self) -> &'static str {
                $kind
            }

            async fn migrate(&self) -> DbResult<usize> {
                // Applied versions before and after (the table does not exist before the first run).
                let applied = || async {
                    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations")
                        .fetch_one(&self.pool)
                        .await
                        .unwrap_or(0)
                };
                let before = applied().await;
                $migrator.run(&self.pool).await?;
                let after = applied().await;
                Ok(usize::try_from(after - before).unwrap_or(0))
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            async fn ping(&self) -> DbResult<()> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn find_org_by_name(&self, name: &str) -> DbResult<Option<OrgRow>> {
                let sql = format!(
                    "SELECT {ORG_COLS} FROM organizations WHERE name = $1 ORDER BY created_at LIMIT 1"
                );
                Ok(sqlx::query_as::<_, OrgRow>(&sql)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn ensure_org(&self, org_name: &str, app_name: &str) -> DbResult<BootstrapResult> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let sql = format!(
                    "SELECT {ORG_COLS} FROM organizations WHERE name = $1 ORDER BY created_at LIMIT 1"
                );
                let existing = sqlx::query_as::<_, OrgRow>(&sql)
                    .bind(org_name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if let Some(org) = existing {
                    let sql = format!(
                        "SELECT {APP_COLS} FROM applications WHERE org_id = $1 AND is_default = $2"
                    );
                    let application = sqlx::query_as::<_, ApplicationRow>(&sql)
                        .bind(&org.id)
                        .bind(true)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    tx.commit().await.map_err(map_err)?;
                    return Ok(BootstrapResult {
                        org,
                        application,
                        org_created: false,
                    });
                }
                let base = slugify(org_name);
                let taken: Option<(String,)> =
                    sqlx::query_as("SELECT id FROM organizations WHERE slug = $1")
                        .bind(&base)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?;
                let slug = if taken.is_some() {
                    format!("{base}-{}", &crate::crypto::random_hex(3))
                } else {
                    base
                };
                let at = now();
                let sql = format!(
                    "INSERT INTO organizations (id, name, slug, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $4) RETURNING {ORG_COLS}"
                );
                let org = sqlx::query_as::<_, OrgRow>(&sql)
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(org_name)
                    .bind(slug)
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let sql = format!(
                    "INSERT INTO applications (id, org_id, name, is_default, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) RETURNING {APP_COLS}"
                );
                let application = sqlx::query_as::<_, ApplicationRow>(&sql)
                    .bind(format!("app_{}", uuid::Uuid::new_v4()))
                    .bind(&org.id)
                    .bind(app_name)
                    .bind(true)
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(BootstrapResult {
                    org,
                    application,
                    org_created: true,
                })
            }

            async fn insert_admin_token(
                &self,
                id: &str,
                org_id: &str,
                hash: &str,
                prefix: &str,
            ) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO admin_tokens (id, org_id, token_hash, token_prefix, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(org_id)
                .bind(hash)
                .bind(prefix)
                .bind(now())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn find_admin_token(&self, hash: &str) -> DbResult<Option<AdminTokenRow>> {
                let sql = format!(
                    "SELECT {ADMIN_COLS} FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
                );
                Ok(sqlx::query_as::<_, AdminTokenRow>(&sql)
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_admin_tokens(&self) -> DbResult<Vec<AdminTokenRow>> {
                let sql = format!("SELECT {ADMIN_COLS} FROM admin_tokens ORDER BY created_at");
                Ok(sqlx::query_as::<_, AdminTokenRow>(&sql)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn revoke_admin_token(&self, id: &str) -> DbResult<()> {
                let done = sqlx::query(
                    "UPDATE admin_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn touch_admin_token(&self, id: &str, at: Timestamp) -> DbResult<()> {
                sqlx::query("UPDATE admin_tokens SET last_used_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn insert_application(
                &self,
                org_id: &str,
                name: &str,
                is_default: bool,
            ) -> DbResult<ApplicationRow> {
                let at = now();
                let sql = format!(
                    "INSERT INTO applications (id, org_id, name, is_default, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) RETURNING {APP_COLS}"
                );
                Ok(sqlx::query_as::<_, ApplicationRow>(&sql)
                    .bind(format!("app_{}", uuid::Uuid::new_v4()))
                    .bind(org_id)
                    .bind(name)
                    .bind(is_default)
                    .bind(at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn get_application(
                &self,
                org_id: &str,
                id: &str,
            ) -> DbResult<Option<ApplicationRow>> {
                let sql =
                    format!("SELECT {APP_COLS} FROM applications WHERE org_id = $1 AND id = $2");
                Ok(sqlx::query_as::<_, ApplicationRow>(&sql)
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_applications(
                &self,
                org_id: &str,
                only: Option<&str>,
                page: &Page,
            ) -> DbResult<Paged<ApplicationRow>> {
                let mut filters = vec![("org_id", org_id.to_string())];
                if let Some(id) = only {
                    filters.push(("id", id.to_string()));
                }
                self.list_page("applications", APP_COLS, &filters, page).await
            }

            async fn rename_application(
                &self,
                org_id: &str,
                id: &str,
                name: &str,
            ) -> DbResult<ApplicationRow> {
                let sql = format!(
                    "UPDATE applications SET name = $1, updated_at = $2 WHERE org_id = $3 AND id = $4 \
                     RETURNING {APP_COLS}"
                );
                sqlx::query_as::<_, ApplicationRow>(&sql)
                    .bind(name)
                    .bind(now())
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn delete_application(&self, org_id: &str, id: &str) -> DbResult<()> {
                let done = sqlx::query("DELETE FROM applications WHERE org_id = $1 AND id = $2")
                    .bind(org_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn insert_api_key(&self, key: &NewApiKey) -> DbResult<ApiKeyRow> {
                let sql = format!(
                    "INSERT INTO api_keys (id, org_id, application_id, name, key_hash, key_prefix, scopes, \
                     expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {KEY_COLS}"
                );
                Ok(sqlx::query_as::<_, ApiKeyRow>(&sql)
                    .bind(&key.id)
                    .bind(&key.org_id)
                    .bind(&key.application_id)
                    .bind(&key.name)
                    .bind(&key.key_hash)
                    .bind(&key.key_prefix)
                    .bind(Json(&key.scopes))
                    .bind(key.expires_at)
                    .bind(now())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn find_api_key_with_application(
                &self,
                hash: &str,
            ) -> DbResult<Option<(ApiKeyRow, ApplicationRow)>> {
                let sql = format!(
                    "SELECT k.id, k.org_id, k.application_id, k.name, k.key_prefix, k.scopes, k.expires_at, \
                     k.revoked_at, k.last_used_at, k.created_at, k.created_by, a.name AS app_name, a.is_default AS app_is_default, \
                     a.created_at AS app_created_at, a.updated_at AS app_updated_at \
                     FROM api_keys k JOIN applications a ON a.id = k.application_id WHERE k.key_hash = $1"
                );
                let row = sqlx::query_as::<_, KeyWithApplication>(&sql)
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(row.map(|r| {
                    let app = ApplicationRow {
                        id: r.key.application_id.clone(),
                        org_id: r.key.org_id.clone(),
                        name: r.app_name,
                        is_default: r.app_is_default,
                        created_at: r.app_created_at,
                        updated_at: r.app_updated_at,
                    };
                    (r.key, app)
                }))
            }

            async fn find_api_key(&self, hash: &str) -> DbResult<Option<ApiKeyRow>> {
                let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE key_hash = $1");
                Ok(sqlx::query_as::<_, ApiKeyRow>(&sql)
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_api_keys(
                &self,
                org_id: &str,
                application_id: &str,
                page: &Page,
            ) -> DbResult<Paged<ApiKeyRow>> {
                // Active keys only: revoked ones are filtered after paging would break cursors, so the
                // view is built into the query.
                let filters = [
                    ("org_id", org_id.to_string()),
                    ("application_id", application_id.to_string()),
                ];
                self.list_page("(SELECT * FROM api_keys WHERE revoked_at IS NULL) AS k", KEY_COLS, &filters, page)
                    .await
            }

            async fn revoke_api_key(
                &self,
                org_id: &str,
                application_id: &str,
                id: &str,
            ) -> DbResult<()> {
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE org_id = $2 AND application_id = $3 \
                     AND id = $4 AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(org_id)
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

            async fn touch_api_key(&self, id: &str, at: Timestamp) -> DbResult<()> {
                sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn insert_end_user(&self, row: &EndUserRow) -> DbResult<EndUserRow> {
                let sql = format!(
                    "INSERT INTO end_users ({EU_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     RETURNING {EU_COLS}"
                );
                Ok(sqlx::query_as::<_, EndUserRow>(&sql)
                    .bind(&row.id)
                    .bind(&row.org_id)
                    .bind(&row.application_id)
                    .bind(&row.name)
                    .bind(&row.email)
                    .bind(&row.external_id)
                    .bind(&row.metadata)
                    .bind(row.created_at)
                    .bind(row.updated_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn get_end_user(
                &self,
                application_id: &str,
                id: &str,
            ) -> DbResult<Option<EndUserRow>> {
                let sql = format!(
                    "SELECT {EU_COLS} FROM end_users WHERE application_id = $1 AND id = $2"
                );
                Ok(sqlx::query_as::<_, EndUserRow>(&sql)
                    .bind(application_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_end_users(
                &self,
                application_id: &str,
                filter: &EndUserFilter,
                page: &Page,
            ) -> DbResult<Paged<EndUserRow>> {
                let mut filters = vec![("application_id", application_id.to_string())];
                if let Some(v) = &filter.external_id {
                    filters.push(("external_id", v.clone()));
                }
                if let Some(v) = &filter.email {
                    filters.push(("email", v.clone()));
                }
                self.list_page("end_users", EU_COLS, &filters, page).await
            }

            async fn update_end_user(
                &self,
                application_id: &str,
                id: &str,
                patch: &EndUserPatch,
            ) -> DbResult<EndUserRow> {
                let mut qb = QueryBuilder::<$db>::new("UPDATE end_users SET updated_at = ");
                qb.push_bind(now());
                if let Some(v) = &patch.name {
                    qb.push(", name = ").push_bind(v.clone());
                }
                if let Some(v) = &patch.email {
                    qb.push(", email = ").push_bind(v.clone());
                }
                if let Some(v) = &patch.external_id {
                    qb.push(", external_id = ").push_bind(v.clone());
                }
                if let Some(v) = &patch.metadata {
                    qb.push(", metadata = ").push_bind(Json(v.clone()));
                }
                qb.push(" WHERE application_id = ")
                    .push_bind(application_id.to_string())
                    .push(" AND id = ")
                    .push_bind(id.to_string())
                    .push(format!(" RETURNING {EU_COLS}"));
                qb.build_query_as::<EndUserRow>()
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn delete_end_user(&self, application_id: &str, id: &str) -> DbResult<()> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                // Its schedules are disabled (§6); the foreign key then clears their end_user_id.
                sqlx::query(
                    "UPDATE schedules SET enabled = $1, next_run_at = NULL, updated_at = $2, \
                     disabled_reason = $5 WHERE application_id = $3 AND end_user_id = $4",
                )
                .bind(false)
                .bind(now())
                .bind(application_id)
                .bind(id)
                .bind(END_USER_DELETED)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let done = sqlx::query("DELETE FROM end_users WHERE application_id = $1 AND id = $2")
                    .bind(application_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }
        }
    };
}

impl_sql_database!(Sqlite, "sqlite", SQLITE_MIGRATOR);
impl_sql_database!(Postgres, "postgres", POSTGRES_MIGRATOR);

#[cfg(test)]
mod tests {
    use super::{describe_postgres_url, slugify};

    #[test]
    fn postgres_urls_are_described_without_their_password() {
        assert_eq!(
            describe_postgres_url(
                "postgres://app:s3cret@db.internal:5433/appstrate?sslmode=require"
            ),
            "postgres://app@db.internal:5433/appstrate"
        );
        assert_eq!(
            describe_postgres_url("postgresql://db/x"),
            "postgresql://db/x"
        );
        assert!(!describe_postgres_url("postgres://u:p%40ss@h/d").contains("p%40ss"));
    }

    #[test]
    fn slugs() {
        assert_eq!(slugify("Default"), "default");
        assert_eq!(slugify("  Acme, Inc. "), "acme-inc");
        assert_eq!(slugify("!!!"), "org");
    }
}
