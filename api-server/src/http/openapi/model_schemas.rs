//! Documentation-only types of the models routes (docs/models.md): request bodies and hand-built answers.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// `POST /api/model-provider-credentials`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateCredentialRequest {
    /// `openai`, `anthropic` or `openai-compatible` (GET /api/model-provider-credentials/registry)
    provider_id: String,
    /// The provider key: stored encrypted, never returned
    api_key: String,
    /// Required for `openai-compatible`; otherwise the provider's default endpoint
    base_url: Option<String>,
    /// Unique in the organization; derived from the provider when absent
    label: Option<String>,
}

/// `POST /api/model-provider-credentials/test`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestCredentialRequest {
    provider_id: String,
    api_key: String,
    base_url: Option<String>,
}

/// `PUT /api/model-provider-credentials/{id}`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCredentialRequest {
    label: Option<String>,
    api_key: Option<String>,
    base_url: Option<String>,
}

/// Prices in USD per million tokens
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PricingRequest {
    input: f64,
    output: f64,
    /// Default: the input price
    cache_read: Option<f64>,
    /// Default: the input price
    cache_write: Option<f64>,
}

/// `POST /api/models`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateModelRequest {
    credential_id: String,
    /// The provider's model id, e.g. `gpt-4o` or `claude-sonnet-4-5`
    model_id: String,
    /// Unique in the organization; default: the model id
    label: Option<String>,
    context_window: Option<i64>,
    /// Absent or null: unpriced
    pricing: Option<PricingRequest>,
}

/// `POST /api/models/test`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestModelRequest {
    credential_id: String,
    /// The provider's model id
    model_id: String,
}

/// `PUT /api/models/{id}`: fields to change (`null` clears `contextWindow` or `pricing`)
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateModelRequest {
    credential_id: Option<String>,
    model_id: Option<String>,
    label: Option<String>,
    context_window: Option<i64>,
    pricing: Option<PricingRequest>,
}

/// `PUT /api/models/default`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetDefaultModelRequest {
    /// A model (`mdl_…`), or null to clear
    model_id: Option<String>,
    /// The application whose default this is; absent: the organization's
    application_id: Option<String>,
}

/// The default that was set
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultModel {
    /// `default_model`
    object: String,
    application_id: Option<String>,
    model_id: Option<String>,
}

/// `PUT /api/agents/{scope}/{name}/model`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetAgentModelRequest {
    /// A model (`mdl_…`), or null to clear the agent's choice
    model_id: Option<String>,
}

/// The model a run of the agent uses now
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveModel {
    /// `run`, `agent`, `application`, `organization` or `instance`
    source: String,
    /// The organization's model, null for the instance default
    model_ref: Option<String>,
    model_id: String,
    label: String,
}

/// An agent's model in one application
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentModel {
    /// `agent_model`
    object: String,
    agent_id: String,
    application_id: String,
    /// The agent's own choice, or null
    model_id: Option<String>,
    /// What its runs use now (null when none resolves)
    effective: Option<EffectiveModel>,
    /// Why no model resolves (`model_not_configured` detail), or null
    error: Option<String>,
}

/// The instance default (`LLM_*` environment)
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceModel {
    model_id: String,
    api: String,
    priced: bool,
}

/// The organization's models
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct ModelList {
    /// Always `list`
    object: String,
    data: Vec<crate::models::ModelView>,
    hasMore: bool,
    /// The organization's default model, or null
    defaultModelId: Option<String>,
    /// Application id → its default model
    applicationDefaults: BTreeMap<String, String>,
    /// The instance default, or null when `LLM_*` is not set
    instanceDefault: Option<InstanceModel>,
}

/// The provider kinds
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct ModelProviderList {
    object: String,
    data: Vec<crate::models::ProviderKind>,
    hasMore: bool,
}

/// The organization's provider credentials (never their keys)
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct CredentialList {
    object: String,
    data: Vec<crate::models::CredentialView>,
    hasMore: bool,
}
