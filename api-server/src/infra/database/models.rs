//! Models and providers per organization: the `ModelRepo` part of [`super::Database`], written once for
//! both backends (docs/models.md). The usage ledger is in `usage.rs`.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::*;

pub use super::usage::{NewUsage, UsageFilter, UsageGroup, UsageTotalRow};

/// A provider key of an organization. `api_key_encrypted` is a keyring envelope, never returned.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderCredentialRow {
    pub id: String,
    pub org_id: String,
    pub label: String,
    pub provider_id: String,
    pub base_url: String,
    pub api_key_encrypted: String,
    pub available_models: Option<Json<Vec<String>>>,
    pub models_refreshed_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A model of an organization, with its prices in USD per million tokens.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelRow {
    pub id: String,
    pub org_id: String,
    pub credential_id: String,
    pub model_id: String,
    pub label: String,
    pub context_window: Option<i64>,
    pub input_price: Option<f64>,
    pub output_price: Option<f64>,
    pub cache_read_price: Option<f64>,
    pub cache_write_price: Option<f64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The model a run resolved at creation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunModelRow {
    pub run_id: String,
    /// `run`, `agent`, `application`, `organization` or `instance`.
    pub source: String,
    /// The organization's model (`mdl_…`); `None` for the instance default.
    pub model_ref: Option<String>,
    pub model_id: String,
    /// The prices at creation (`{input, output, cache_read?, cache_write?}`), if priced.
    pub pricing: Option<Json<Value>>,
}

/// The model choices that apply to one agent of one application.
#[derive(Debug, Clone, Default)]
pub struct ModelChoices {
    pub agent: Option<String>,
    pub application: Option<String>,
    pub organization: Option<String>,
}

const CREDENTIAL_COLS: &str = "id, org_id, label, provider_id, base_url, api_key_encrypted, \
    available_models, models_refreshed_at, created_at, updated_at";

const MODEL_COLS: &str =
    "id, org_id, credential_id, model_id, label, context_window, input_price, \
    output_price, cache_read_price, cache_write_price, created_at, updated_at";

#[async_trait]
pub trait ModelRepo: Send + Sync {
    /// `Conflict` when the organization already has a credential with this label.
    async fn insert_provider_credential(
        &self,
        r: &ProviderCredentialRow,
    ) -> DbResult<ProviderCredentialRow>;
    async fn get_provider_credential(
        &self,
        org_id: &str,
        id: &str,
    ) -> DbResult<Option<ProviderCredentialRow>>;
    async fn list_provider_credentials(&self, org_id: &str)
        -> DbResult<Vec<ProviderCredentialRow>>;
    /// Writes label, base URL, key, listed models and `updated_at`.
    async fn update_provider_credential(
        &self,
        r: &ProviderCredentialRow,
    ) -> DbResult<ProviderCredentialRow>;
    /// Deletes the credential and its models.
    async fn delete_provider_credential(&self, org_id: &str, id: &str) -> DbResult<()>;

    async fn insert_model(&self, r: &ModelRow) -> DbResult<ModelRow>;
    async fn get_model(&self, org_id: &str, id: &str) -> DbResult<Option<ModelRow>>;
    async fn list_models(&self, org_id: &str) -> DbResult<Vec<ModelRow>>;
    /// Writes every editable column and `updated_at`.
    async fn update_model(&self, r: &ModelRow) -> DbResult<ModelRow>;
    async fn delete_model(&self, org_id: &str, id: &str) -> DbResult<()>;

    /// Sets (or with `None` clears) the organization's default model.
    async fn set_org_default_model(
        &self,
        org_id: &str,
        model_id: Option<&str>,
        at: Timestamp,
    ) -> DbResult<()>;
    async fn set_application_default_model(
        &self,
        org_id: &str,
        application_id: &str,
        model_id: Option<&str>,
        at: Timestamp,
    ) -> DbResult<()>;
    async fn set_agent_model(
        &self,
        org_id: &str,
        application_id: &str,
        package_id: &str,
        model_id: Option<&str>,
        at: Timestamp,
    ) -> DbResult<()>;
    /// The choices for (organization, application, agent); each level is looked up only when given.
    async fn model_choices(
        &self,
        org_id: &str,
        application_id: Option<&str>,
        package_id: Option<&str>,
    ) -> DbResult<ModelChoices>;
    /// The organization's default and each application's default `(application, model)`.
    async fn model_defaults(
        &self,
        org_id: &str,
    ) -> DbResult<(Option<String>, Vec<(String, String)>)>;

    async fn insert_run_model(&self, r: &RunModelRow) -> DbResult<()>;
    async fn get_run_model(&self, run_id: &str) -> DbResult<Option<RunModelRow>>;
}

macro_rules! impl_model_repo {
    ($db:ty) => {
        #[async_trait]
        impl ModelRepo for SqlDatabase<$db> {
            async fn insert_provider_credential(
                &self,
                r: &ProviderCredentialRow,
            ) -> DbResult<ProviderCredentialRow> {
                let sql = format!(
                    "INSERT INTO model_provider_credentials ({CREDENTIAL_COLS}) VALUES ($1, $2, $3, $4, \
                     $5, $6, $7, $8, $9, $10) RETURNING {CREDENTIAL_COLS}"
                );
                sqlx::query_as::<_, ProviderCredentialRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.label)
                    .bind(&r.provider_id)
                    .bind(&r.base_url)
                    .bind(&r.api_key_encrypted)
                    .bind(&r.available_models)
                    .bind(r.models_refreshed_at)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn get_provider_credential(
                &self,
                org_id: &str,
                id: &str,
            ) -> DbResult<Option<ProviderCredentialRow>> {
                let sql = format!(
                    "SELECT {CREDENTIAL_COLS} FROM model_provider_credentials \
                     WHERE org_id = $1 AND id = $2"
                );
                sqlx::query_as::<_, ProviderCredentialRow>(&sql)
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn list_provider_credentials(
                &self,
                org_id: &str,
            ) -> DbResult<Vec<ProviderCredentialRow>> {
                let sql = format!(
                    "SELECT {CREDENTIAL_COLS} FROM model_provider_credentials WHERE org_id = $1 \
                     ORDER BY created_at, id"
                );
                sqlx::query_as::<_, ProviderCredentialRow>(&sql)
                    .bind(org_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn update_provider_credential(
                &self,
                r: &ProviderCredentialRow,
            ) -> DbResult<ProviderCredentialRow> {
                let sql = format!(
                    "UPDATE model_provider_credentials SET label = $1, base_url = $2, \
                     api_key_encrypted = $3, available_models = $4, models_refreshed_at = $5, \
                     updated_at = $6 WHERE org_id = $7 AND id = $8 RETURNING {CREDENTIAL_COLS}"
                );
                sqlx::query_as::<_, ProviderCredentialRow>(&sql)
                    .bind(&r.label)
                    .bind(&r.base_url)
                    .bind(&r.api_key_encrypted)
                    .bind(&r.available_models)
                    .bind(r.models_refreshed_at)
                    .bind(r.updated_at)
                    .bind(&r.org_id)
                    .bind(&r.id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn delete_provider_credential(&self, org_id: &str, id: &str) -> DbResult<()> {
                let done = sqlx::query(
                    "DELETE FROM model_provider_credentials WHERE org_id = $1 AND id = $2",
                )
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

            async fn insert_model(&self, r: &ModelRow) -> DbResult<ModelRow> {
                let sql = format!(
                    "INSERT INTO models ({MODEL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12) RETURNING {MODEL_COLS}"
                );
                sqlx::query_as::<_, ModelRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.credential_id)
                    .bind(&r.model_id)
                    .bind(&r.label)
                    .bind(r.context_window)
                    .bind(r.input_price)
                    .bind(r.output_price)
                    .bind(r.cache_read_price)
                    .bind(r.cache_write_price)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn get_model(&self, org_id: &str, id: &str) -> DbResult<Option<ModelRow>> {
                let sql = format!("SELECT {MODEL_COLS} FROM models WHERE org_id = $1 AND id = $2");
                sqlx::query_as::<_, ModelRow>(&sql)
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn list_models(&self, org_id: &str) -> DbResult<Vec<ModelRow>> {
                let sql = format!(
                    "SELECT {MODEL_COLS} FROM models WHERE org_id = $1 ORDER BY created_at, id"
                );
                sqlx::query_as::<_, ModelRow>(&sql)
                    .bind(org_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn update_model(&self, r: &ModelRow) -> DbResult<ModelRow> {
                let sql = format!(
                    "UPDATE models SET credential_id = $1, model_id = $2, label = $3, \
                     context_window = $4, input_price = $5, output_price = $6, \
                     cache_read_price = $7, cache_write_price = $8, updated_at = $9 \
                     WHERE org_id = $10 AND id = $11 RETURNING {MODEL_COLS}"
                );
                sqlx::query_as::<_, ModelRow>(&sql)
                    .bind(&r.credential_id)
                    .bind(&r.model_id)
                    .bind(&r.label)
                    .bind(r.context_window)
                    .bind(r.input_price)
                    .bind(r.output_price)
                    .bind(r.cache_read_price)
                    .bind(r.cache_write_price)
                    .bind(r.updated_at)
                    .bind(&r.org_id)
                    .bind(&r.id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn delete_model(&self, org_id: &str, id: &str) -> DbResult<()> {
                let done = sqlx::query("DELETE FROM models WHERE org_id = $1 AND id = $2")
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

            async fn set_org_default_model(
                &self,
                org_id: &str,
                model_id: Option<&str>,
                at: Timestamp,
            ) -> DbResult<()> {
                match model_id {
                    None => {
                        sqlx::query("DELETE FROM org_default_models WHERE org_id = $1")
                            .bind(org_id)
                            .execute(&self.pool)
                            .await
                            .map_err(map_err)?;
                    }
                    Some(m) => {
                        sqlx::query(
                            "INSERT INTO org_default_models (org_id, model_id, updated_at) \
                             VALUES ($1, $2, $3) ON CONFLICT (org_id) DO UPDATE SET \
                             model_id = excluded.model_id, updated_at = excluded.updated_at",
                        )
                        .bind(org_id)
                        .bind(m)
                        .bind(at)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                    }
                }
                Ok(())
            }

            async fn set_application_default_model(
                &self,
                org_id: &str,
                application_id: &str,
                model_id: Option<&str>,
                at: Timestamp,
            ) -> DbResult<()> {
                match model_id {
                    None => {
                        sqlx::query(
                            "DELETE FROM application_default_models \
                             WHERE org_id = $1 AND application_id = $2",
                        )
                        .bind(org_id)
                        .bind(application_id)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                    }
                    Some(m) => {
                        sqlx::query(
                            "INSERT INTO application_default_models (application_id, org_id, \
                             model_id, updated_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (application_id) DO UPDATE SET \
                             model_id = excluded.model_id, updated_at = excluded.updated_at",
                        )
                        .bind(application_id)
                        .bind(org_id)
                        .bind(m)
                        .bind(at)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                    }
                }
                Ok(())
            }

            async fn set_agent_model(
                &self,
                org_id: &str,
                application_id: &str,
                package_id: &str,
                model_id: Option<&str>,
                at: Timestamp,
            ) -> DbResult<()> {
                match model_id {
                    None => {
                        sqlx::query(
                            "DELETE FROM agent_models WHERE org_id = $1 AND application_id = $2 \
                             AND package_id = $3",
                        )
                        .bind(org_id)
                        .bind(application_id)
                        .bind(package_id)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                    }
                    Some(m) => {
                        sqlx::query(
                            "INSERT INTO agent_models (application_id, org_id, package_id, \
                             model_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (application_id, package_id) DO UPDATE SET \
                             model_id = excluded.model_id, updated_at = excluded.updated_at",
                        )
                        .bind(application_id)
                        .bind(org_id)
                        .bind(package_id)
                        .bind(m)
                        .bind(at)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                    }
                }
                Ok(())
            }

            async fn model_choices(
                &self,
                org_id: &str,
                application_id: Option<&str>,
                package_id: Option<&str>,
            ) -> DbResult<ModelChoices> {
                let mut out = ModelChoices::default();
                if let (Some(app), Some(pkg)) = (application_id, package_id) {
                    out.agent = sqlx::query_as::<_, (String,)>(
                        "SELECT model_id FROM agent_models WHERE org_id = $1 \
                         AND application_id = $2 AND package_id = $3",
                    )
                    .bind(org_id)
                    .bind(app)
                    .bind(pkg)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .map(|r| r.0);
                }
                if let Some(app) = application_id {
                    out.application = sqlx::query_as::<_, (String,)>(
                        "SELECT model_id FROM application_default_models WHERE org_id = $1 \
                         AND application_id = $2",
                    )
                    .bind(org_id)
                    .bind(app)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .map(|r| r.0);
                }
                out.organization = sqlx::query_as::<_, (String,)>(
                    "SELECT model_id FROM org_default_models WHERE org_id = $1",
                )
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
                .map(|r| r.0);
                Ok(out)
            }

            async fn model_defaults(
                &self,
                org_id: &str,
            ) -> DbResult<(Option<String>, Vec<(String, String)>)> {
                let org = sqlx::query_as::<_, (String,)>(
                    "SELECT model_id FROM org_default_models WHERE org_id = $1",
                )
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
                .map(|r| r.0);
                let apps = sqlx::query_as::<_, (String, String)>(
                    "SELECT application_id, model_id FROM application_default_models \
                     WHERE org_id = $1 ORDER BY application_id",
                )
                .bind(org_id)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                Ok((org, apps))
            }

            async fn insert_run_model(&self, r: &RunModelRow) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO run_models (run_id, source, model_ref, model_id, pricing) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&r.run_id)
                .bind(&r.source)
                .bind(&r.model_ref)
                .bind(&r.model_id)
                .bind(&r.pricing)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn get_run_model(&self, run_id: &str) -> DbResult<Option<RunModelRow>> {
                sqlx::query_as::<_, RunModelRow>(
                    "SELECT run_id, source, model_ref, model_id, pricing FROM run_models \
                     WHERE run_id = $1",
                )
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)
            }

        }
    };
}

impl_model_repo!(Sqlite);
impl_model_repo!(Postgres);
