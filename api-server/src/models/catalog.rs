//! The organization's models with their prices, the default model of the organization and of each
//! application, and the model of each agent.

use serde::Serialize;

use super::credentials::{credential_api, credential_key, load_credential};
use super::{invalid, label_taken, new_id, policy, provider, ModelsError, TestResult};
use crate::config::LlmPricing;
use crate::infra::database::models::ModelRow;
use crate::infra::database::{now, DbError};
use crate::state::AppState;

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PricingView {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
}

/// A model as returned.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub object: &'static str,
    pub id: String,
    pub credential_id: String,
    /// The provider's model id (what the provider is asked for).
    pub model_id: String,
    pub label: String,
    pub context_window: Option<i64>,
    /// Null: unpriced (runs report `cost: null`).
    pub pricing: Option<PricingView>,
    /// Whether this is the organization's default model.
    pub is_default: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The prices of a model row, when it has input and output prices.
pub fn row_pricing(r: &ModelRow) -> Option<LlmPricing> {
    Some(LlmPricing {
        input: r.input_price?,
        output: r.output_price?,
        cache_read: r.cache_read_price,
        cache_write: r.cache_write_price,
    })
}

fn model_view(r: ModelRow, org_default: Option<&str>) -> ModelView {
    let pricing = row_pricing(&r).map(|p| PricingView {
        input: p.input,
        output: p.output,
        cache_read: p.cache_read,
        cache_write: p.cache_write,
    });
    ModelView {
        object: "model",
        is_default: org_default == Some(r.id.as_str()),
        id: r.id,
        credential_id: r.credential_id,
        model_id: r.model_id,
        label: r.label,
        context_window: r.context_window,
        pricing,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// What creating a model takes.
pub struct NewModel {
    pub credential_id: String,
    pub model_id: String,
    pub label: Option<String>,
    pub context_window: Option<i64>,
    pub pricing: Option<LlmPricing>,
}

/// A model's editable parts: `None` leaves a part alone; `Some(None)` clears a nullable one.
#[derive(Default)]
pub struct ModelPatch {
    pub credential_id: Option<String>,
    pub model_id: Option<String>,
    pub label: Option<String>,
    pub context_window: Option<Option<i64>>,
    pub pricing: Option<Option<LlmPricing>>,
}

async fn credential_field(state: &AppState, org_id: &str, id: &str) -> Result<(), ModelsError> {
    if state
        .infra
        .db
        .get_provider_credential(org_id, id)
        .await?
        .is_none()
    {
        return Err(invalid(
            "credentialId",
            "not_found",
            format!("no model provider credential {id} in this organization"),
        ));
    }
    Ok(())
}

fn set_pricing(row: &mut ModelRow, p: Option<LlmPricing>) {
    row.input_price = p.map(|p| p.input);
    row.output_price = p.map(|p| p.output);
    row.cache_read_price = p.and_then(|p| p.cache_read);
    row.cache_write_price = p.and_then(|p| p.cache_write);
}

/// `POST /api/models`.
pub async fn create_model(
    state: &AppState,
    org_id: &str,
    input: NewModel,
) -> Result<ModelView, ModelsError> {
    credential_field(state, org_id, &input.credential_id).await?;
    let at = now();
    let label = input
        .label
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| input.model_id.clone());
    let mut row = ModelRow {
        id: new_id("mdl"),
        org_id: org_id.to_string(),
        credential_id: input.credential_id,
        model_id: input.model_id,
        label: label.clone(),
        context_window: input.context_window,
        input_price: None,
        output_price: None,
        cache_read_price: None,
        cache_write_price: None,
        created_at: at,
        updated_at: at,
    };
    set_pricing(&mut row, input.pricing);
    match state.infra.db.insert_model(&row).await {
        Ok(r) => Ok(model_view(r, None)),
        Err(DbError::Conflict(_)) => Err(label_taken("model", &label)),
        Err(e) => Err(e.into()),
    }
}

async fn load_model(state: &AppState, org_id: &str, id: &str) -> Result<ModelRow, ModelsError> {
    state
        .infra
        .db
        .get_model(org_id, id)
        .await?
        .ok_or_else(|| ModelsError::NotFound(format!("Model {id} not found")))
}

/// The models with the organization's default and each application's default.
pub struct ModelList {
    pub models: Vec<ModelView>,
    pub default_model_id: Option<String>,
    pub application_defaults: Vec<(String, String)>,
}

pub async fn list_models(state: &AppState, org_id: &str) -> Result<ModelList, ModelsError> {
    let db = &state.infra.db;
    let (org_default, apps) = db.model_defaults(org_id).await?;
    let models = db
        .list_models(org_id)
        .await?
        .into_iter()
        .map(|m| model_view(m, org_default.as_deref()))
        .collect();
    Ok(ModelList {
        models,
        default_model_id: org_default,
        application_defaults: apps,
    })
}

/// `PUT /api/models/{id}`. A new price applies to the calls made after it (docs/models.md).
pub async fn update_model(
    state: &AppState,
    org_id: &str,
    id: &str,
    patch: ModelPatch,
) -> Result<ModelView, ModelsError> {
    let mut row = load_model(state, org_id, id).await?;
    if let Some(c) = patch.credential_id {
        credential_field(state, org_id, &c).await?;
        row.credential_id = c;
    }
    if let Some(m) = patch.model_id {
        row.model_id = m;
    }
    if let Some(l) = patch.label {
        row.label = l.trim().to_string();
    }
    if let Some(cw) = patch.context_window {
        row.context_window = cw;
    }
    if let Some(p) = patch.pricing {
        set_pricing(&mut row, p);
    }
    row.updated_at = now();
    let label = row.label.clone();
    let saved = match state.infra.db.update_model(&row).await {
        Ok(r) => r,
        Err(DbError::Conflict(_)) => return Err(label_taken("model", &label)),
        Err(DbError::NotFound) => {
            return Err(ModelsError::NotFound(format!("Model {id} not found")))
        }
        Err(e) => return Err(e.into()),
    };
    let (org_default, _) = state.infra.db.model_defaults(org_id).await?;
    Ok(model_view(saved, org_default.as_deref()))
}

/// `DELETE /api/models/{id}`. Choices naming the model stay: a run that would use it fails, saying
/// which choice to change, and nothing else is affected.
pub async fn delete_model(state: &AppState, org_id: &str, id: &str) -> Result<(), ModelsError> {
    state
        .infra
        .db
        .delete_model(org_id, id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => ModelsError::NotFound(format!("Model {id} not found")),
            other => other.into(),
        })
}

/// `POST /api/models/{id}/test`: one token from the model, through its credential.
pub async fn test_model(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<TestResult, ModelsError> {
    let model = load_model(state, org_id, id).await?;
    test_model_on(state, org_id, &model.credential_id, &model.model_id).await
}

/// `POST /api/models/test`: tests a provider model id on a credential before adding the model.
pub async fn test_model_on(
    state: &AppState,
    org_id: &str,
    credential_id: &str,
    model_id: &str,
) -> Result<TestResult, ModelsError> {
    credential_field(state, org_id, credential_id).await?;
    let cred = load_credential(state, org_id, credential_id).await?;
    let key = credential_key(state, &cred)?;
    let endpoint = provider::Endpoint {
        api: credential_api(&cred),
        base_url: &cred.base_url,
        api_key: &key,
    };
    Ok(provider::test_model(&endpoint, model_id, &policy(&state.config)).await)
}

/// `PUT /api/models/default`: the organization's default, or with `application_id` that application's;
/// `None` clears it.
pub async fn set_default(
    state: &AppState,
    org_id: &str,
    model_id: Option<&str>,
    application_id: Option<&str>,
) -> Result<(), ModelsError> {
    let db = &state.infra.db;
    if let Some(m) = model_id {
        if db.get_model(org_id, m).await?.is_none() {
            return Err(invalid(
                "modelId",
                "not_found",
                format!("no model {m} in this organization"),
            ));
        }
    }
    let at = now();
    match application_id {
        None => db.set_org_default_model(org_id, model_id, at).await?,
        Some(app) => {
            if db.get_application(org_id, app).await?.is_none() {
                return Err(invalid(
                    "applicationId",
                    "not_found",
                    format!("no application {app} in this organization"),
                ));
            }
            db.set_application_default_model(org_id, app, model_id, at)
                .await?
        }
    }
    Ok(())
}

/// `PUT /api/agents/{scope}/{name}/model`: the agent's model in one application; `None` clears it.
pub async fn set_agent_model(
    state: &AppState,
    org_id: &str,
    application_id: &str,
    agent_id: &str,
    model_id: Option<&str>,
) -> Result<(), ModelsError> {
    let db = &state.infra.db;
    if let Some(m) = model_id {
        if db.get_model(org_id, m).await?.is_none() {
            return Err(invalid(
                "modelId",
                "not_found",
                format!("no model {m} in this organization"),
            ));
        }
    }
    db.set_agent_model(org_id, application_id, agent_id, model_id, now())
        .await?;
    Ok(())
}
