//! Models and providers per organization (docs/models.md): `/api/model-provider-credentials*`,
//! `/api/models*` (organization-level) and `/api/agents/{scope}/{name}/model` (application-level); the
//! usage report is in `usage.rs`. Thin: every rule lives in `crate::models`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use crate::config::LlmPricing;
use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::middleware::{rate_limit, Limit};
use crate::models::{self, ModelsError};
use crate::state::AppState;

impl From<ModelsError> for ApiError {
    fn from(e: ModelsError) -> Self {
        crate::domain::DomainError::from(e).into()
    }
}

pub fn router(state: &AppState) -> Router<AppState> {
    // Each test spends a call on the provider.
    let tests = || {
        from_fn_with_state(
            (
                state.clone(),
                Limit {
                    limit: 10,
                    window_secs: 60,
                },
            ),
            rate_limit,
        )
    };
    Router::new()
        .route("/api/model-provider-credentials/registry", get(registry))
        .route(
            "/api/model-provider-credentials",
            get(list_credentials).post(create_credential),
        )
        .route(
            "/api/model-provider-credentials/test",
            post(test_inline).route_layer(tests()),
        )
        .route(
            "/api/model-provider-credentials/{id}",
            put(update_credential).delete(delete_credential),
        )
        .route(
            "/api/model-provider-credentials/{id}/test",
            post(test_credential).route_layer(tests()),
        )
        .route(
            "/api/model-provider-credentials/{id}/refresh-models",
            post(refresh_models).route_layer(tests()),
        )
        .route("/api/models", get(list_models).post(create_model))
        .route("/api/models/default", put(set_default))
        .route(
            "/api/models/test",
            post(test_model_inline).route_layer(tests()),
        )
        .route("/api/models/{id}", put(update_model).delete(delete_model))
        .route(
            "/api/models/{id}/test",
            post(test_model).route_layer(tests()),
        )
        .route(
            "/api/agents/{scope}/{name}/model",
            get(get_agent_model).put(put_agent_model),
        )
        .route("/api/usage", get(super::usage::usage))
}

#[utoipa::path(get, path = "/api/model-provider-credentials/registry", tag = "models",
    operation_id = "listModelProviders", summary = "The provider kinds a credential can use",
    responses((status = 200, body = crate::http::openapi::ModelProviderList), (status = 403)))]
pub async fn registry(Extension(auth): Extension<Auth>) -> Result<Response, ApiError> {
    auth.require_permission("models:read")?;
    Ok(
        Json(json!({"object": "list", "data": models::PROVIDERS, "hasMore": false}))
            .into_response(),
    )
}

#[utoipa::path(get, path = "/api/model-provider-credentials", tag = "models",
    operation_id = "listModelProviderCredentials", summary = "List the organization's provider credentials (never their keys)",
    responses((status = 200, body = crate::http::openapi::CredentialList), (status = 403)))]
pub async fn list_credentials(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:read")?;
    let data = models::list_credentials(&state, &auth.org_id).await?;
    Ok(Json(json!({"object": "list", "data": data, "hasMore": false})).into_response())
}

/// `{providerId, apiKey, baseUrl?, label?}` (create and inline test).
fn parse_new_credential(body: &Value, with_label: bool) -> Result<models::NewCredential, ApiError> {
    let mut f = Fields::new(body, "");
    let provider_id = f.string("providerId", true, 1, 64);
    let api_key = f.string("apiKey", true, 1, 4096);
    let base_url = f.string("baseUrl", false, 1, 2048);
    let label = if with_label {
        f.string("label", false, 1, 100)
    } else {
        None
    };
    f.finish()?;
    Ok(models::NewCredential {
        label,
        provider_id: provider_id.unwrap_or_default(),
        api_key: api_key.unwrap_or_default(),
        base_url,
    })
}

#[utoipa::path(post, path = "/api/model-provider-credentials", tag = "models",
    operation_id = "createModelProviderCredential", summary = "Store a provider key (encrypted; never returned)",
    request_body = crate::http::openapi::CreateCredentialRequest,
    responses((status = 201, body = crate::models::CredentialView), (status = 400), (status = 403), (status = 409)))]
pub async fn create_credential(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let input = parse_new_credential(&body, true)?;
    let view = models::create_credential(&state, &auth.org_id, input).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(post, path = "/api/model-provider-credentials/test", tag = "models",
    operation_id = "testModelProviderKey", summary = "Test a provider key before storing it",
    request_body = crate::http::openapi::TestCredentialRequest,
    responses((status = 200, body = crate::models::TestResult), (status = 400), (status = 403), (status = 429)))]
pub async fn test_inline(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let input = parse_new_credential(&body, false)?;
    Ok(Json(models::test_inline(&state, input).await?).into_response())
}

#[utoipa::path(put, path = "/api/model-provider-credentials/{id}", tag = "models",
    operation_id = "updateModelProviderCredential", summary = "Change a credential's label, key or base URL",
    params(("id" = String, Path)),
    request_body = crate::http::openapi::UpdateCredentialRequest,
    responses((status = 200, body = crate::models::CredentialView), (status = 400), (status = 403), (status = 404), (status = 409)))]
pub async fn update_credential(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let mut f = Fields::new(&body, "");
    let patch = models::CredentialPatch {
        label: f.string("label", false, 1, 100),
        api_key: f.string("apiKey", false, 1, 4096),
        base_url: f.string("baseUrl", false, 1, 2048),
    };
    f.finish()?;
    let view = models::update_credential(&state, &auth.org_id, &id, patch).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(delete, path = "/api/model-provider-credentials/{id}", tag = "models",
    operation_id = "deleteModelProviderCredential", summary = "Delete a credential and its models",
    params(("id" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete_credential(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    models::delete_credential(&state, &auth.org_id, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/model-provider-credentials/{id}/test", tag = "models",
    operation_id = "testModelProviderCredential", summary = "Test a stored credential: success, or the provider's error",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::models::TestResult), (status = 403), (status = 404), (status = 429)))]
pub async fn test_credential(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    Ok(Json(models::test_credential(&state, &auth.org_id, &id).await?).into_response())
}

#[utoipa::path(post, path = "/api/model-provider-credentials/{id}/refresh-models", tag = "models",
    operation_id = "refreshProviderModels", summary = "Ask the provider for its models and keep the list",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::models::CredentialView), (status = 403), (status = 404), (status = 429), (status = 502)))]
pub async fn refresh_models(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    Ok(Json(models::refresh_models(&state, &auth.org_id, &id).await?).into_response())
}

#[utoipa::path(get, path = "/api/models", tag = "models",
    operation_id = "listModels", summary = "List the organization's models and defaults",
    responses((status = 200, body = crate::http::openapi::ModelList), (status = 403)))]
pub async fn list_models(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:read")?;
    let list = models::list_models(&state, &auth.org_id).await?;
    let apps: Map<String, Value> = list
        .application_defaults
        .into_iter()
        .map(|(a, m)| (a, json!(m)))
        .collect();
    let instance = state.config.llm.as_ref().map(|l| {
        json!({"modelId": l.model, "api": match l.api {
            crate::config::LlmApi::OpenAiCompletions => "openai-completions",
            crate::config::LlmApi::AnthropicMessages => "anthropic-messages",
        }, "priced": state.config.llm_pricing.is_some()})
    });
    Ok(Json(json!({
        "object": "list",
        "data": list.models,
        "hasMore": false,
        "defaultModelId": list.default_model_id,
        "applicationDefaults": apps,
        "instanceDefault": instance,
    }))
    .into_response())
}

/// A number ≥ 0 at `key`; absent → `None`.
fn price(f: &mut Fields<'_>, obj: &Map<String, Value>, key: &str, prefix: &str) -> Option<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64().filter(|x| x.is_finite() && *x >= 0.0) {
            Some(x) => Some(x),
            None => {
                f.error(
                    &format!("{prefix}.{key}"),
                    "invalid_value",
                    "must be a number ≥ 0 (USD per million tokens)",
                );
                None
            }
        },
    }
}

/// `pricing`: absent → `None`; `null` → `Some(None)`; `{input, output, cacheRead?, cacheWrite?}`.
fn parse_pricing<'a>(f: &mut Fields<'a>) -> Option<Option<LlmPricing>> {
    match f.raw("pricing") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Object(obj)) => {
            for k in obj.keys() {
                if !["input", "output", "cacheRead", "cacheWrite"].contains(&k.as_str()) {
                    f.error(
                        &format!("pricing.{k}"),
                        "unknown_field",
                        "is not a known field",
                    );
                }
            }
            for k in ["input", "output"] {
                if obj.get(k).is_none_or(Value::is_null) {
                    f.error(&format!("pricing.{k}"), "required", "is required");
                }
            }
            let input = price(f, obj, "input", "pricing");
            let output = price(f, obj, "output", "pricing");
            let cache_read = price(f, obj, "cacheRead", "pricing");
            let cache_write = price(f, obj, "cacheWrite", "pricing");
            Some(input.zip(output).map(|(input, output)| LlmPricing {
                input,
                output,
                cache_read,
                cache_write,
            }))
        }
        Some(_) => {
            f.error(
                "pricing",
                "invalid_type",
                "must be an object {input, output, cacheRead?, cacheWrite?} or null",
            );
            None
        }
    }
}

/// `contextWindow`: absent → `None`; `null` → `Some(None)`; a positive integer.
fn parse_context_window<'a>(f: &mut Fields<'a>) -> Option<Option<i64>> {
    match f.raw("contextWindow") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => match v.as_i64().filter(|n| *n > 0) {
            Some(n) => Some(Some(n)),
            None => {
                f.error(
                    "contextWindow",
                    "invalid_value",
                    "must be a positive integer (tokens)",
                );
                None
            }
        },
    }
}

#[utoipa::path(post, path = "/api/models", tag = "models",
    operation_id = "createModel", summary = "Add a model on a provider credential, with its prices",
    request_body = crate::http::openapi::CreateModelRequest,
    responses((status = 201, body = crate::models::ModelView), (status = 400), (status = 403), (status = 409)))]
pub async fn create_model(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let mut f = Fields::new(&body, "");
    let credential_id = f.string("credentialId", true, 1, 100);
    let model_id = f.string("modelId", true, 1, 200);
    let label = f.string("label", false, 1, 100);
    let context_window = parse_context_window(&mut f).flatten();
    let pricing = parse_pricing(&mut f).flatten();
    f.finish()?;
    let input = models::NewModel {
        credential_id: credential_id.unwrap_or_default(),
        model_id: model_id.unwrap_or_default(),
        label,
        context_window,
        pricing,
    };
    let view = models::create_model(&state, &auth.org_id, input).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(put, path = "/api/models/default", tag = "models",
    operation_id = "setDefaultModel", summary = "Set or clear the default model of the organization or of one application",
    request_body = crate::http::openapi::SetDefaultModelRequest,
    responses((status = 200, body = crate::http::openapi::DefaultModel), (status = 400), (status = 403)))]
pub async fn set_default(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let mut f = Fields::new(&body, "");
    let model_id = f.nullable_string("modelId", 100);
    if model_id.is_none() && body.is_object() {
        f.error(
            "modelId",
            "required",
            "is required (a model id, or null to clear)",
        );
    }
    let application_id = f.string("applicationId", false, 1, 100);
    f.finish()?;
    let model_id = model_id.flatten();
    models::set_default(
        &state,
        &auth.org_id,
        model_id.as_deref(),
        application_id.as_deref(),
    )
    .await?;
    Ok(Json(
        json!({"object": "default_model", "applicationId": application_id, "modelId": model_id}),
    )
    .into_response())
}

#[utoipa::path(put, path = "/api/models/{id}", tag = "models",
    operation_id = "updateModel", summary = "Change a model (a new price applies to later calls only)",
    params(("id" = String, Path)),
    request_body = crate::http::openapi::UpdateModelRequest,
    responses((status = 200, body = crate::models::ModelView), (status = 400), (status = 403), (status = 404), (status = 409)))]
pub async fn update_model(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let mut f = Fields::new(&body, "");
    let patch = models::ModelPatch {
        credential_id: f.string("credentialId", false, 1, 100),
        model_id: f.string("modelId", false, 1, 200),
        label: f.string("label", false, 1, 100),
        context_window: parse_context_window(&mut f),
        pricing: parse_pricing(&mut f),
    };
    f.finish()?;
    Ok(Json(models::update_model(&state, &auth.org_id, &id, patch).await?).into_response())
}

#[utoipa::path(delete, path = "/api/models/{id}", tag = "models",
    operation_id = "deleteModel", summary = "Delete a model (runs that chose it then fail, saying what to change)",
    params(("id" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete_model(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    models::delete_model(&state, &auth.org_id, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/models/{id}/test", tag = "models",
    operation_id = "testModel", summary = "Ask the model for one token through its credential",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::models::TestResult), (status = 403), (status = 404), (status = 429)))]
pub async fn test_model(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    Ok(Json(models::test_model(&state, &auth.org_id, &id).await?).into_response())
}

#[utoipa::path(post, path = "/api/models/test", tag = "models",
    operation_id = "testModelBeforeAdding", summary = "Ask a provider model for one token through a credential, before adding it",
    request_body = crate::http::openapi::TestModelRequest,
    responses((status = 200, body = crate::models::TestResult), (status = 400), (status = 403), (status = 429)))]
pub async fn test_model_inline(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("models:write")?;
    let mut f = Fields::new(&body, "");
    let credential_id = f.string("credentialId", true, 1, 100);
    let model_id = f.string("modelId", true, 1, 200);
    f.finish()?;
    let result = models::test_model_on(
        &state,
        &auth.org_id,
        &credential_id.unwrap_or_default(),
        &model_id.unwrap_or_default(),
    )
    .await?;
    Ok(Json(result).into_response())
}

/// The agent's choice and what a run of it would use now.
async fn agent_model_dto(state: &AppState, auth: &Auth, agent_id: &str) -> Result<Value, ApiError> {
    let app = auth.app()?;
    let choices = state
        .infra
        .db
        .model_choices(&auth.org_id, Some(&app.id), Some(agent_id))
        .await?;
    let resolved = models::resolve::resolve(
        state,
        &models::resolve::Request {
            org_id: &auth.org_id,
            application_id: &app.id,
            agent_id: Some(agent_id),
            run_model: None,
        },
    )
    .await;
    let (effective, error) = match resolved {
        Ok(r) => (
            json!({"source": r.source, "modelRef": r.model_ref, "modelId": r.model_id, "label": r.label}),
            Value::Null,
        ),
        Err(ModelsError::NotConfigured(m)) => (Value::Null, json!(m)),
        Err(e) => return Err(e.into()),
    };
    Ok(json!({
        "object": "agent_model",
        "agentId": agent_id,
        "applicationId": app.id,
        "modelId": choices.agent,
        "effective": effective,
        "error": error,
    }))
}

#[utoipa::path(get, path = "/api/agents/{scope}/{name}/model", tag = "models",
    operation_id = "getAgentModel", summary = "The agent's model and the one its runs use now",
    params(("scope" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = crate::http::openapi::AgentModel), (status = 403), (status = 404)))]
pub async fn get_agent_model(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:read")?;
    let agent =
        crate::packages::resolve_agent(&state, &auth, &format!("{scope}/{name}"), None).await?;
    Ok(Json(agent_model_dto(&state, &auth, &agent.package_id).await?).into_response())
}

#[utoipa::path(put, path = "/api/agents/{scope}/{name}/model", tag = "models",
    operation_id = "setAgentModel", summary = "Choose (or clear) the agent's model in this application",
    params(("scope" = String, Path), ("name" = String, Path)),
    request_body = crate::http::openapi::SetAgentModelRequest,
    responses((status = 200, body = crate::http::openapi::AgentModel), (status = 400), (status = 403), (status = 404)))]
pub async fn put_agent_model(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let mut f = Fields::new(&body, "");
    let model_id = f.nullable_string("modelId", 100);
    if model_id.is_none() && body.is_object() {
        f.error(
            "modelId",
            "required",
            "is required (a model id, or null to clear)",
        );
    }
    f.finish()?;
    let agent =
        crate::packages::resolve_agent(&state, &auth, &format!("{scope}/{name}"), None).await?;
    let app = auth.app()?;
    models::set_agent_model(
        &state,
        &auth.org_id,
        &app.id,
        &agent.package_id,
        model_id.flatten().as_deref(),
    )
    .await?;
    Ok(Json(agent_model_dto(&state, &auth, &agent.package_id).await?).into_response())
}
