//! The usage ledger (docs/models.md): one row per model call, and its totals. The `UsageRepo` part of
//! [`super::Database`], written once for both backends.

use async_trait::async_trait;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::*;

/// One row of the usage ledger: one model call.
#[derive(Debug, Clone)]
pub struct NewUsage {
    pub org_id: String,
    pub application_id: String,
    pub run_id: String,
    pub agent_id: String,
    pub model_ref: Option<String>,
    pub model_id: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost: Option<f64>,
    pub created_at: Timestamp,
}

/// How usage totals are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Organization,
    Application,
    Agent,
    Run,
    Model,
}

impl UsageGroup {
    fn column(self) -> &'static str {
        match self {
            UsageGroup::Organization => "org_id",
            UsageGroup::Application => "application_id",
            UsageGroup::Agent => "agent_id",
            UsageGroup::Run => "run_id",
            UsageGroup::Model => "model_id",
        }
    }
}

/// Which ledger rows to total: an organization's, created in `[from, to)`, optionally narrowed.
#[derive(Debug, Clone)]
pub struct UsageFilter {
    pub from: Timestamp,
    pub to: Timestamp,
    pub application_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
}

/// Totals of one group.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageTotalRow {
    #[sqlx(rename = "group_key")]
    pub key: String,
    pub calls: i64,
    pub priced_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost: Option<f64>,
}

/// The ledger insert, shared with the event write (which inserts in its own transaction).
pub(super) const INSERT_USAGE: &str =
    "INSERT INTO model_usage (org_id, application_id, run_id, agent_id, model_ref, model_id, \
     input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Binds a [`NewUsage`] to [`INSERT_USAGE`].
macro_rules! bind_usage {
    ($u:expr) => {
        sqlx::query($crate::infra::database::usage::INSERT_USAGE)
            .bind(&$u.org_id)
            .bind(&$u.application_id)
            .bind(&$u.run_id)
            .bind(&$u.agent_id)
            .bind(&$u.model_ref)
            .bind(&$u.model_id)
            .bind($u.input_tokens)
            .bind($u.output_tokens)
            .bind($u.cache_read_tokens)
            .bind($u.cache_write_tokens)
            .bind($u.cost)
            .bind($u.created_at)
    };
}
pub(super) use bind_usage;

#[async_trait]
pub trait UsageRepo: Send + Sync {
    async fn insert_usage(&self, u: &NewUsage) -> DbResult<()>;
    /// Totals of the organization's ledger rows matching `filter`, grouped, largest cost first.
    async fn usage_totals(
        &self,
        org_id: &str,
        filter: &UsageFilter,
        group: UsageGroup,
    ) -> DbResult<Vec<UsageTotalRow>>;
}

macro_rules! impl_usage_repo {
    ($db:ty) => {
        #[async_trait]
        impl UsageRepo for SqlDatabase<$db> {
            async fn insert_usage(&self, u: &NewUsage) -> DbResult<()> {
                bind_usage!(u)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn usage_totals(
                &self,
                org_id: &str,
                filter: &UsageFilter,
                group: UsageGroup,
            ) -> DbResult<Vec<UsageTotalRow>> {
                let key = group.column();
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {key} AS group_key, COUNT(*) AS calls, COUNT(cost) AS priced_calls, \
                     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
                     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
                     CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens, \
                     CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT) AS cache_write_tokens, \
                     SUM(cost) AS cost FROM model_usage WHERE org_id = "
                ));
                qb.push_bind(org_id.to_string())
                    .push(" AND created_at >= ")
                    .push_bind(filter.from)
                    .push(" AND created_at < ")
                    .push_bind(filter.to);
                for (col, v) in [
                    ("application_id", &filter.application_id),
                    ("agent_id", &filter.agent_id),
                    ("run_id", &filter.run_id),
                ] {
                    if let Some(v) = v {
                        qb.push(format!(" AND {col} = ")).push_bind(v.clone());
                    }
                }
                qb.push(format!(
                    " GROUP BY {key} ORDER BY COALESCE(SUM(cost), 0) DESC, {key} LIMIT 1000"
                ));
                qb.build_query_as::<UsageTotalRow>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }
        }
    };
}

impl_usage_repo!(Sqlite);
impl_usage_repo!(Postgres);
