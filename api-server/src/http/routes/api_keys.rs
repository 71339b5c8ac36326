//! `/api/api-keys*`: admin tokens and signed-in owners and admins, in the application context.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::http::auth::{Auth, SCOPES};
use crate::http::error::ApiError;
use crate::http::json::JsonBody;
use crate::http::list::{paged_response, ListQuery};
use crate::infra::database::ApiKeyRow;
use crate::people::api_keys;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyDto {
    id: String,
    object: &'static str,
    name: String,
    key_prefix: String,
    scopes: Vec<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    created_at: chrono::DateTime<chrono::Utc>,
    /// The secret, present only in the creation answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl From<ApiKeyRow> for ApiKeyDto {
    fn from(r: ApiKeyRow) -> Self {
        Self {
            id: r.id,
            object: "api_key",
            name: r.name,
            key_prefix: r.key_prefix,
            scopes: r.scopes.0,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            created_at: r.created_at,
            key: None,
        }
    }
}

#[utoipa::path(get, path = "/api/api-keys", tag = "api-keys",
    operation_id = "listApiKeys", summary = "List the API keys of the application",
    security(("adminToken" = [])),
    responses((status = 200, description = "Active API keys of the application", body = crate::http::openapi::ApiKeyList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(q.as_deref())?;
    let page = api_keys::list(&state, &auth, &query.page).await?;
    Ok(paged_response(
        &state.config.app_url,
        "/api/api-keys",
        &query,
        page,
        |k| &k.id,
        ApiKeyDto::from,
    ))
}

#[utoipa::path(get, path = "/api/api-keys/available-scopes", tag = "api-keys",
    operation_id = "listApiKeyScopes", summary = "List the scopes an API key can hold",
    security(("adminToken" = [])),
    responses((status = 200, description = "The twelve scopes", body = crate::http::openapi::ScopeList)))]
pub async fn available_scopes(Extension(auth): Extension<Auth>) -> Result<Response, ApiError> {
    auth.require_permission("api-keys:write")?;
    Ok(Json(json!({ "scopes": SCOPES })).into_response())
}

#[utoipa::path(post, path = "/api/api-keys", tag = "api-keys",
    operation_id = "createApiKey", summary = "Create an API key (the secret is shown once)",
    security(("adminToken" = [])),
    request_body = crate::http::openapi::CreateApiKeyRequest,
    responses((status = 201, body = ApiKeyDto), (status = 400), (status = 403)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (row, secret) = api_keys::create(&state, &auth, &body).await?;
    let mut dto = ApiKeyDto::from(row);
    dto.key = Some(secret);
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

#[utoipa::path(delete, path = "/api/api-keys/{id}", tag = "api-keys",
    operation_id = "revokeApiKey", summary = "Revoke an API key",
    security(("adminToken" = [])),
    responses((status = 204), (status = 404)))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api_keys::revoke(&state, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
