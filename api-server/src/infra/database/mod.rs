//! The `Database` concern: one repository trait, implemented once in SQL (`sql.rs`) and instantiated for
//! SQLite (Tier 0) and PostgreSQL (Tier 1+). Callers only ever see `Arc<dyn Database>`.

pub mod documents;
pub mod history;
pub mod idempotency;
pub mod memory;
pub mod migrate_data;
pub mod models;
pub mod oauth;
mod packages;
pub mod people;
pub mod runs;
pub mod schedules;
pub mod schema;
mod sql;
mod tx;
pub mod usage;
pub mod webhooks;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

pub use documents::DocumentRepo;
pub use history::HistoryRepo;
pub use idempotency::{IdempotencyRepo, IdempotencyScope, IdempotencyState};
pub use memory::MemoryRepo;
pub use models::ModelRepo;
pub use oauth::OAuthRepo;
pub use packages::{
    ConnectionRow, NewPackageVersion, PackageFilter, PackageRepo, PackageRow, PackageVersionRow,
    PackageWithManifest,
};
pub use people::PeopleRepo;
pub use runs::RunRepo;
pub use schedules::ScheduleRepo;
pub use sql::{
    connect_postgres, connect_postgres_within, connect_sqlite, describe_postgres_url, SqlDatabase,
    PG_CONNECT_WINDOW, POSTGRES_MIGRATOR, SQLITE_MIGRATOR,
};
pub use usage::UsageRepo;
pub use webhooks::WebhookRepo;

pub type Timestamp = DateTime<Utc>;

/// Current time truncated to microseconds, the precision both databases keep.
pub fn now() -> Timestamp {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    /// A unique constraint was violated; the string names the constraint or columns.
    #[error("conflict on {0}")]
    Conflict(String),
    #[error("unknown pagination cursor")]
    UnknownCursor,
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type DbResult<T> = Result<T, DbError>;

/// Cursor pagination, newest first (§8).
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: u32,
    pub starting_after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApplicationRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub is_default: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminTokenRow {
    pub id: String,
    pub org_id: String,
    pub token_prefix: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub name: String,
    pub key_prefix: String,
    pub scopes: Json<Vec<String>>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The user who created the key (its permissions are capped by that user's role); read on the
    /// authentication path only.
    #[sqlx(default)]
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndUserRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub metadata: Json<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub name: String,
    pub key_hash: String,
    pub key_prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default)]
pub struct EndUserFilter {
    pub external_id: Option<String>,
    pub email: Option<String>,
}

/// A partial update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct EndUserPatch {
    pub name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct BootstrapResult {
    pub org: OrgRow,
    pub application: ApplicationRow,
    pub org_created: bool,
}

/// The whole repository: tenancy here, other areas in their own files as supertraits.
#[async_trait]
pub trait Database:
    IdempotencyRepo
    + PackageRepo
    + RunRepo
    + ScheduleRepo
    + WebhookRepo
    + HistoryRepo
    + PeopleRepo
    + MemoryRepo
    + DocumentRepo
    + ModelRepo
    + OAuthRepo
    + UsageRepo
    + Send
    + Sync
{
    /// `sqlite` or `postgres`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    /// Applies the pending migrations; returns how many were applied.
    async fn migrate(&self) -> DbResult<usize>;
    async fn ping(&self) -> DbResult<()>;
    /// Closes the pool at shutdown (SPEC §5.3): waits for connections in use to come back, and releases
    /// the SQLite file so that e.g. `appstrate db migrate-data` can open it.
    async fn close(&self);

    // Organizations and bootstrap
    async fn find_org_by_name(&self, name: &str) -> DbResult<Option<OrgRow>>;
    /// Creates the organization and its default application unless an organization with that name exists.
    async fn ensure_org(&self, org_name: &str, app_name: &str) -> DbResult<BootstrapResult>;

    // Admin tokens
    async fn insert_admin_token(
        &self,
        id: &str,
        org_id: &str,
        hash: &str,
        prefix: &str,
    ) -> DbResult<()>;
    /// The active token with this hash.
    async fn find_admin_token(&self, hash: &str) -> DbResult<Option<AdminTokenRow>>;
    async fn list_admin_tokens(&self) -> DbResult<Vec<AdminTokenRow>>;
    async fn revoke_admin_token(&self, id: &str) -> DbResult<()>;
    async fn touch_admin_token(&self, id: &str, at: Timestamp) -> DbResult<()>;

    // Applications
    async fn insert_application(
        &self,
        org_id: &str,
        name: &str,
        is_default: bool,
    ) -> DbResult<ApplicationRow>;
    async fn get_application(&self, org_id: &str, id: &str) -> DbResult<Option<ApplicationRow>>;
    async fn list_applications(
        &self,
        org_id: &str,
        only: Option<&str>,
        page: &Page,
    ) -> DbResult<Paged<ApplicationRow>>;
    async fn rename_application(
        &self,
        org_id: &str,
        id: &str,
        name: &str,
    ) -> DbResult<ApplicationRow>;
    async fn delete_application(&self, org_id: &str, id: &str) -> DbResult<()>;

    // API keys
    async fn insert_api_key(&self, key: &NewApiKey) -> DbResult<ApiKeyRow>;
    /// The key with this hash, whatever its state; the caller checks revocation and expiry.
    async fn find_api_key(&self, hash: &str) -> DbResult<Option<ApiKeyRow>>;
    /// The key with this hash together with its pinned application, in one query (the hot path of
    /// every API-key request).
    async fn find_api_key_with_application(
        &self,
        hash: &str,
    ) -> DbResult<Option<(ApiKeyRow, ApplicationRow)>>;
    async fn list_api_keys(
        &self,
        org_id: &str,
        application_id: &str,
        page: &Page,
    ) -> DbResult<Paged<ApiKeyRow>>;
    /// Soft revoke. `NotFound` when unknown or already revoked.
    async fn revoke_api_key(&self, org_id: &str, application_id: &str, id: &str) -> DbResult<()>;
    async fn touch_api_key(&self, id: &str, at: Timestamp) -> DbResult<()>;

    // End-users
    async fn insert_end_user(&self, row: &EndUserRow) -> DbResult<EndUserRow>;
    async fn get_end_user(&self, application_id: &str, id: &str) -> DbResult<Option<EndUserRow>>;
    async fn list_end_users(
        &self,
        application_id: &str,
        filter: &EndUserFilter,
        page: &Page,
    ) -> DbResult<Paged<EndUserRow>>;
    async fn update_end_user(
        &self,
        application_id: &str,
        id: &str,
        patch: &EndUserPatch,
    ) -> DbResult<EndUserRow>;
    async fn delete_end_user(&self, application_id: &str, id: &str) -> DbResult<()>;
}
