//! Models and providers per organization (docs/models.md): provider credentials (the key encrypted with
//! the connection keyring, never returned), the organization's models with their prices, the default
//! model of the organization and of each application, the model of each agent, the resolution of a
//! run's model, and the usage ledger. The domain speaks no HTTP: it takes plain values and returns
//! [`ModelsError`]; the JSON face maps the errors to problem documents.

pub mod provider;
pub mod resolve;
pub mod usage;

use serde::Serialize;
use sidecar::ssrf::{self, Policy, SsrfError};

use crate::config::{Config, LlmApi, LlmPricing};
use crate::infra::database::models::{ModelRow, ProviderCredentialRow};
use crate::infra::database::{now, DbError};
use crate::state::AppState;

pub use provider::TestResult;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// A bad input field: 400 `validation_failed` naming the field.
    #[error("{field}: {message}")]
    Invalid {
        field: String,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// No usable model for a run: 400 `model_not_configured`, saying what to set.
    #[error("{0}")]
    NotConfigured(String),
    /// The provider refused or could not be reached: 502.
    #[error("{message}")]
    Provider { code: String, message: String },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> ModelsError {
    ModelsError::Invalid {
        field: field.to_string(),
        code,
        message: message.into(),
    }
}

/// A kind of provider: its API shape and default endpoint.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderKind {
    pub provider_id: &'static str,
    pub display_name: &'static str,
    /// `openai-completions` or `anthropic-messages`.
    pub api: &'static str,
    /// `None`: the base URL is required.
    pub default_base_url: Option<&'static str>,
    /// Whether the provider lists its models (`GET /models`).
    pub lists_models: bool,
}

pub const PROVIDERS: [ProviderKind; 3] = [
    ProviderKind {
        provider_id: "openai",
        display_name: "OpenAI",
        api: "openai-completions",
        default_base_url: Some("https://api.openai.com/v1"),
        lists_models: true,
    },
    ProviderKind {
        provider_id: "anthropic",
        display_name: "Anthropic",
        api: "anthropic-messages",
        default_base_url: Some("https://api.anthropic.com"),
        lists_models: true,
    },
    ProviderKind {
        provider_id: "openai-compatible",
        display_name: "OpenAI-compatible endpoint",
        api: "openai-completions",
        default_base_url: None,
        lists_models: true,
    },
];

pub fn provider_kind(id: &str) -> Option<&'static ProviderKind> {
    PROVIDERS.iter().find(|p| p.provider_id == id)
}

fn api_of(kind: &ProviderKind) -> LlmApi {
    if kind.api == "anthropic-messages" {
        LlmApi::AnthropicMessages
    } else {
        LlmApi::OpenAiCompletions
    }
}

/// The SSRF policy of provider calls: the `EGRESS_ALLOW_INTERNAL_HOSTS` exemptions, as for integrations.
pub fn policy(config: &Config) -> Policy {
    Policy::with_exemptions(config.egress_allow_internal_hosts.iter())
}

/// A base URL: absolute `http(s)`, without credentials, query or fragment, whose host passes the
/// literal SSRF check (names are checked again, resolved and pinned, at every call).
fn check_base_url(raw: &str, config: &Config) -> Result<String, ModelsError> {
    let field = "baseUrl";
    if raw.len() > 2048 {
        return Err(invalid(
            field,
            "out_of_range",
            "must be at most 2048 characters",
        ));
    }
    let url = ssrf::parse_url(raw).map_err(|e| {
        invalid(
            field,
            "invalid_format",
            format!("must be an absolute http(s) URL ({e})"),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            field,
            "invalid_value",
            "must not carry credentials; put the key in apiKey",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            field,
            "invalid_value",
            "must not have a query or fragment",
        ));
    }
    ssrf::check_url_literal(&url, &policy(config)).map_err(|e| match e {
        SsrfError::BlockedName(_) | SsrfError::BlockedAddress { .. } => invalid(
            field,
            "blocked_address",
            format!(
                "points at a private, loopback or otherwise internal address ({e}); use a public \
                 endpoint, or list the host in EGRESS_ALLOW_INTERNAL_HOSTS for a trusted internal one"
            ),
        ),
        other => invalid(field, "invalid_value", other.to_string()),
    })?;
    Ok(raw.trim_end_matches('/').to_string())
}

fn check_api_key(key: &str) -> Result<(), ModelsError> {
    if key.is_empty() || key.len() > 4096 {
        return Err(invalid("apiKey", "out_of_range", "must be 1 to 4096 bytes"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "apiKey",
            "invalid_format",
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

/// A provider credential as returned: never the key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub object: &'static str,
    pub id: String,
    pub label: String,
    pub provider_id: String,
    pub api: &'static str,
    pub base_url: String,
    /// The model ids the provider listed at the last refresh, or null before any.
    pub available_models: Option<Vec<String>>,
    pub models_refreshed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ProviderCredentialRow> for CredentialView {
    fn from(r: ProviderCredentialRow) -> Self {
        let api = provider_kind(&r.provider_id)
            .map(|k| k.api)
            .unwrap_or("openai-completions");
        CredentialView {
            object: "model_provider_credential",
            id: r.id,
            label: r.label,
            provider_id: r.provider_id,
            api,
            base_url: r.base_url,
            available_models: r.available_models.map(|j| j.0),
            models_refreshed_at: r.models_refreshed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// What creating a credential takes.
pub struct NewCredential {
    pub label: Option<String>,
    pub provider_id: String,
    pub api_key: String,
    pub base_url: Option<String>,
}

/// A credential's editable parts; `None` leaves a part alone.
#[derive(Default)]
pub struct CredentialPatch {
    pub label: Option<String>,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
}

fn kind_field(provider_id: &str) -> Result<&'static ProviderKind, ModelsError> {
    provider_kind(provider_id).ok_or_else(|| {
        invalid(
            "providerId",
            "invalid_value",
            format!(
                "must be one of {}",
                PROVIDERS
                    .iter()
                    .map(|p| p.provider_id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// The endpoint of an inline (unsaved) credential, validated.
fn inline_endpoint(
    state: &AppState,
    input: &NewCredential,
) -> Result<(LlmApi, String), ModelsError> {
    let kind = kind_field(&input.provider_id)?;
    check_api_key(&input.api_key)?;
    let base = match (&input.base_url, kind.default_base_url) {
        (Some(b), _) => check_base_url(b, &state.config)?,
        (None, Some(d)) => d.to_string(),
        (None, None) => {
            return Err(invalid(
                "baseUrl",
                "required",
                format!("is required for provider {}", kind.provider_id),
            ))
        }
    };
    Ok((api_of(kind), base))
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn label_taken(what: &str, label: &str) -> ModelsError {
    ModelsError::Conflict {
        code: "label_taken",
        message: format!(
            "The organization already has a {what} labelled {label:?}; choose another label"
        ),
    }
}

/// `POST /api/model-provider-credentials`.
pub async fn create_credential(
    state: &AppState,
    org_id: &str,
    input: NewCredential,
) -> Result<CredentialView, ModelsError> {
    let (_, base_url) = inline_endpoint(state, &input)?;
    let kind = kind_field(&input.provider_id)?;
    let db = &state.infra.db;
    let label = match &input.label {
        Some(l) => l.trim().to_string(),
        None => {
            // Derived from the provider (and the host of a custom endpoint), made unique.
            let mut base = kind.display_name.to_string();
            if input.base_url.is_some() {
                if let Some(host) = url::Url::parse(&base_url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                {
                    base = format!("{base} ({host})");
                }
            }
            let taken: Vec<String> = db
                .list_provider_credentials(org_id)
                .await?
                .into_iter()
                .map(|c| c.label)
                .collect();
            let mut label = base.clone();
            let mut n = 2;
            while taken.contains(&label) {
                label = format!("{base} {n}");
                n += 1;
            }
            label
        }
    };
    let at = now();
    let row = ProviderCredentialRow {
        id: new_id("mpc"),
        org_id: org_id.to_string(),
        label: label.clone(),
        provider_id: kind.provider_id.to_string(),
        base_url,
        api_key_encrypted: state.keyring.encrypt(input.api_key.as_bytes()),
        available_models: None,
        models_refreshed_at: None,
        created_at: at,
        updated_at: at,
    };
    match db.insert_provider_credential(&row).await {
        Ok(r) => Ok(r.into()),
        Err(DbError::Conflict(_)) => Err(label_taken("provider credential", &label)),
        Err(e) => Err(e.into()),
    }
}

async fn load_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<ProviderCredentialRow, ModelsError> {
    state
        .infra
        .db
        .get_provider_credential(org_id, id)
        .await?
        .ok_or_else(|| ModelsError::NotFound(format!("Model provider credential {id} not found")))
}

/// The key of a stored credential, decrypted for one use.
fn credential_key(state: &AppState, c: &ProviderCredentialRow) -> Result<String, ModelsError> {
    state
        .keyring
        .decrypt(&c.api_key_encrypted)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ModelsError::Internal(format!(
                "The key of model provider credential {} cannot be decrypted (was \
                 CONNECTION_ENCRYPTION_KEY changed without keeping the old key in \
                 CONNECTION_ENCRYPTION_KEYS?); enter the key again",
                c.id
            ))
        })
}

fn credential_api(c: &ProviderCredentialRow) -> LlmApi {
    provider_kind(&c.provider_id)
        .map(api_of)
        .unwrap_or(LlmApi::OpenAiCompletions)
}

pub async fn list_credentials(
    state: &AppState,
    org_id: &str,
) -> Result<Vec<CredentialView>, ModelsError> {
    Ok(state
        .infra
        .db
        .list_provider_credentials(org_id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// `PUT /api/model-provider-credentials/{id}`: a new label, key or base URL. The provider stays.
pub async fn update_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
    patch: CredentialPatch,
) -> Result<CredentialView, ModelsError> {
    let mut row = load_credential(state, org_id, id).await?;
    if let Some(l) = patch.label {
        row.label = l.trim().to_string();
    }
    if let Some(k) = patch.api_key {
        check_api_key(&k)?;
        row.api_key_encrypted = state.keyring.encrypt(k.as_bytes());
    } else {
        // A rewritten row is re-encrypted with the active key (§17).
        let key = credential_key(state, &row)?;
        row.api_key_encrypted = state.keyring.encrypt(key.as_bytes());
    }
    if let Some(b) = patch.base_url {
        row.base_url = check_base_url(&b, &state.config)?;
    }
    row.updated_at = now();
    let label = row.label.clone();
    match state.infra.db.update_provider_credential(&row).await {
        Ok(r) => Ok(r.into()),
        Err(DbError::Conflict(_)) => Err(label_taken("provider credential", &label)),
        Err(DbError::NotFound) => Err(ModelsError::NotFound(format!(
            "Model provider credential {id} not found"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /api/model-provider-credentials/{id}`: the credential and its models. Choices naming those
/// models stay, and runs that would use them fail saying which choice to change.
pub async fn delete_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<(), ModelsError> {
    state
        .infra
        .db
        .delete_provider_credential(org_id, id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => {
                ModelsError::NotFound(format!("Model provider credential {id} not found"))
            }
            other => other.into(),
        })
}

/// `POST /api/model-provider-credentials/test`: tests a key before saving it.
pub async fn test_inline(
    state: &AppState,
    input: NewCredential,
) -> Result<TestResult, ModelsError> {
    let (api, base_url) = inline_endpoint(state, &input)?;
    let endpoint = provider::Endpoint {
        api,
        base_url: &base_url,
        api_key: &input.api_key,
    };
    Ok(provider::list_models(&endpoint, &policy(&state.config)).await)
}

/// `POST /api/model-provider-credentials/{id}/test`.
pub async fn test_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<TestResult, ModelsError> {
    let row = load_credential(state, org_id, id).await?;
    let key = credential_key(state, &row)?;
    let endpoint = provider::Endpoint {
        api: credential_api(&row),
        base_url: &row.base_url,
        api_key: &key,
    };
    Ok(provider::list_models(&endpoint, &policy(&state.config)).await)
}

/// `POST /api/model-provider-credentials/{id}/refresh-models`: asks the provider for its models and
/// keeps the list on the credential.
pub async fn refresh_models(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<CredentialView, ModelsError> {
    let mut row = load_credential(state, org_id, id).await?;
    let key = credential_key(state, &row)?;
    let endpoint = provider::Endpoint {
        api: credential_api(&row),
        base_url: &row.base_url,
        api_key: &key,
    };
    let result = provider::list_models(&endpoint, &policy(&state.config)).await;
    let Some(models) = result.models else {
        return Err(ModelsError::Provider {
            code: result.error.unwrap_or_else(|| "provider_error".into()),
            message: result
                .message
                .unwrap_or_else(|| "The provider did not list its models".into()),
        });
    };
    row.available_models = Some(sqlx::types::Json(models));
    row.models_refreshed_at = Some(now());
    row.api_key_encrypted = state.keyring.encrypt(key.as_bytes());
    row.updated_at = now();
    Ok(state
        .infra
        .db
        .update_provider_credential(&row)
        .await?
        .into())
}

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
    let cred = load_credential(state, org_id, &model.credential_id).await?;
    let key = credential_key(state, &cred)?;
    let endpoint = provider::Endpoint {
        api: credential_api(&cred),
        base_url: &cred.base_url,
        api_key: &key,
    };
    Ok(provider::test_model(&endpoint, &model.model_id, &policy(&state.config)).await)
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
