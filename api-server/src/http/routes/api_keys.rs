//! `/api/api-keys*`: admin tokens and signed-in owners and admins, in the application context.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::DateTime;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::crypto::{new_token, sha256_hex};
use crate::http::auth::{Auth, SCOPES};
use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::infra::database::{now, ApiKeyRow, NewApiKey};
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
    auth.require_permission("api-keys:write")?;
    let query = ListQuery::parse(q.as_deref())?;
    let app = auth.app()?;
    let page = state
        .infra
        .db
        .list_api_keys(&auth.org_id, &app.id, &query.page)
        .await?;
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
    auth.require_permission("api-keys:write")?;
    let mut f = Fields::new(&body, "");
    let name = f.string("name", true, 1, 100);
    let scopes = f.string_array("scopes");
    if let Some(list) = &scopes {
        for (i, s) in list.iter().enumerate() {
            if !SCOPES.contains(&s.as_str()) {
                f.error(
                    &format!("scopes[{i}]"),
                    "invalid_value",
                    format!("unknown scope {s:?}; see GET /api/api-keys/available-scopes"),
                );
            }
        }
    }
    let expires_at = match f.raw("expiresAt") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.to_utc() > now() => Some(t.to_utc()),
            Ok(_) => {
                f.error("expiresAt", "out_of_range", "must be in the future");
                None
            }
            Err(_) => {
                f.error(
                    "expiresAt",
                    "invalid_format",
                    "must be an RFC 3339 timestamp",
                );
                None
            }
        },
        Some(_) => {
            f.error("expiresAt", "invalid_type", "must be a string");
            None
        }
    };
    f.finish()?;
    let mut scopes = scopes.unwrap_or_default();
    if scopes.is_empty() {
        scopes = SCOPES.iter().map(|s| s.to_string()).collect();
    }
    scopes.dedup();
    let app = auth.app()?;
    let secret = new_token("ask_");
    let key = NewApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        name: name.unwrap_or_default(),
        key_hash: sha256_hex(&secret),
        key_prefix: secret[..8].to_string(),
        scopes,
        expires_at,
    };
    let db = &state.infra.db;
    let row = match auth.user_id() {
        // A user's key is capped by the user's role (docs/people.md).
        Some(user_id) => db.insert_user_api_key(&key, user_id).await?,
        None => db.insert_api_key(&key).await?,
    };
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
    auth.require_permission("api-keys:write")?;
    let app = auth.app()?;
    state
        .infra
        .db
        .revoke_api_key(&auth.org_id, &app.id, &id)
        .await
        .map_err(|e| match e {
            crate::infra::database::DbError::NotFound => {
                ApiError::not_found(format!("API key {id} not found or already revoked"))
            }
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
