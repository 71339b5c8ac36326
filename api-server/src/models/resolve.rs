//! Which model a run uses (docs/models.md), in this order: the run's own `model`, the agent's model in
//! its application, the application's default, the organization's default, the instance default
//! (`LLM_*` environment). A choice that names a deleted model is an error saying which choice to
//! change — never a silent fall-through to the next level, whose key and prices may differ.

use serde::Serialize;

use super::{credential_api, credential_key, row_pricing, ModelsError};
use crate::config::{LlmApi, LlmPricing, Secret};
use crate::infra::database::models::ModelRow;
use crate::state::AppState;

/// Where a run's model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Run,
    Agent,
    Application,
    Organization,
    Instance,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Run => "run",
            Source::Agent => "agent",
            Source::Application => "application",
            Source::Organization => "organization",
            Source::Instance => "instance",
        }
    }
}

/// The model a run uses, with the credential the sidecar injects.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub source: Source,
    /// The organization's model (`mdl_…`), `None` for the instance default.
    pub model_ref: Option<String>,
    /// The provider's model id.
    pub model_id: String,
    /// `model_label` of the run.
    pub label: String,
    pub api: LlmApi,
    pub base_url: String,
    pub api_key: Secret<String>,
    pub pricing: Option<LlmPricing>,
}

/// What a run asks for.
pub struct Request<'a> {
    pub org_id: &'a str,
    pub application_id: &'a str,
    /// The agent's `@scope/name`; `None` for inline runs (no agent-level choice).
    pub agent_id: Option<&'a str>,
    /// The run's `model`: an organization model's id (`mdl_…`), its provider model id or its label.
    pub run_model: Option<&'a str>,
}

fn not_configured(message: String) -> ModelsError {
    ModelsError::NotConfigured(message)
}

/// The organization's model `row` with its credential's endpoint and key.
async fn with_credential(
    state: &AppState,
    row: ModelRow,
    source: Source,
) -> Result<Resolved, ModelsError> {
    let cred = state
        .infra
        .db
        .get_provider_credential(&row.org_id, &row.credential_id)
        .await?
        .ok_or_else(|| {
            not_configured(format!(
                "The provider credential of model {} ({}) no longer exists: edit the model \
                 (PUT /api/models/{}) to use another credential",
                row.label, row.id, row.id
            ))
        })?;
    let key = credential_key(state, &cred)?;
    Ok(Resolved {
        source,
        pricing: row_pricing(&row),
        model_ref: Some(row.id),
        model_id: row.model_id,
        label: row.label,
        api: credential_api(&cred),
        base_url: cred.base_url,
        api_key: Secret::new(key),
    })
}

/// A choice at one level: the named model, or an error saying the choice names a deleted model.
async fn chosen(
    state: &AppState,
    org_id: &str,
    model_id: &str,
    source: Source,
    fix: impl FnOnce() -> String,
) -> Result<Resolved, ModelsError> {
    match state.infra.db.get_model(org_id, model_id).await? {
        Some(row) => with_credential(state, row, source).await,
        None => Err(not_configured(fix())),
    }
}

/// Resolves the model of a run (§11.1 step 7).
pub async fn resolve(state: &AppState, req: &Request<'_>) -> Result<Resolved, ModelsError> {
    let db = &state.infra.db;
    let instance = state.config.llm.as_ref();
    if let Some(wanted) = req.run_model {
        let models = db.list_models(req.org_id).await?;
        let found = models
            .iter()
            .find(|m| m.id == wanted)
            .or_else(|| models.iter().find(|m| m.model_id == wanted))
            .or_else(|| models.iter().find(|m| m.label == wanted))
            .cloned();
        if let Some(row) = found {
            return with_credential(state, row, Source::Run).await;
        }
        if wanted.starts_with("mdl_") {
            return Err(not_configured(format!(
                "model: no model {wanted} in this organization (GET /api/models lists them)"
            )));
        }
        // A model id the organization does not offer runs on the instance default (its key and
        // `LLM_PRICING`), as before organizations had models of their own.
        return match instance {
            Some(llm) => Ok(Resolved {
                source: Source::Run,
                model_ref: None,
                model_id: wanted.to_string(),
                label: wanted.to_string(),
                api: llm.api,
                base_url: llm.base_url.clone(),
                api_key: Secret::new(llm.api_key.expose().clone()),
                pricing: state.config.llm_pricing,
            }),
            None => Err(not_configured(format!(
                "model: {wanted:?} is not a model of this organization (GET /api/models lists \
                 them; add it with POST /api/models), and the instance has no default model"
            ))),
        };
    }
    let choices = db
        .model_choices(req.org_id, Some(req.application_id), req.agent_id)
        .await?;
    if let (Some(m), Some(agent)) = (&choices.agent, req.agent_id) {
        return chosen(state, req.org_id, m, Source::Agent, || {
            format!(
                "The model chosen for agent {agent} ({m}) no longer exists: choose another with \
                 PUT /api/agents/{agent}/model, or clear the choice ({{\"modelId\": null}}) to use \
                 the application's or organization's default"
            )
        })
        .await;
    }
    if let Some(m) = &choices.application {
        let app = req.application_id;
        return chosen(state, req.org_id, m, Source::Application, || {
            format!(
                "The default model of application {app} ({m}) no longer exists: set another with \
                 PUT /api/models/default {{\"applicationId\": \"{app}\", \"modelId\": …}}, or clear \
                 it (\"modelId\": null) to use the organization's default"
            )
        })
        .await;
    }
    if let Some(m) = &choices.organization {
        return chosen(state, req.org_id, m, Source::Organization, || {
            format!(
                "The organization's default model ({m}) no longer exists: set another with \
                 PUT /api/models/default {{\"modelId\": …}}, or clear it (\"modelId\": null) to use \
                 the instance default"
            )
        })
        .await;
    }
    match instance {
        Some(llm) => Ok(Resolved {
            source: Source::Instance,
            model_ref: None,
            model_id: llm.model.clone(),
            label: llm.model.clone(),
            api: llm.api,
            base_url: llm.base_url.clone(),
            api_key: Secret::new(llm.api_key.expose().clone()),
            pricing: state.config.llm_pricing,
        }),
        None => {
            let agent = req
                .agent_id
                .map(|a| format!("choose one for the agent (PUT /api/agents/{a}/model), "))
                .unwrap_or_default();
            Err(not_configured(format!(
                "No model is configured: {agent}set a default for the application or the \
                 organization (PUT /api/models/default, after adding a provider key with \
                 POST /api/model-provider-credentials and a model with POST /api/models), or set \
                 LLM_BASE_URL, LLM_API_KEY and LLM_MODEL for the whole instance"
            )))
        }
    }
}
