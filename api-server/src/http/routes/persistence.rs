//! Agent persistence routes (the original's names): list an agent's memories, pinned slots and
//! checkpoint; delete one memory; delete one pinned slot; wipe everything. The scope is the application and
//! the impersonated end-user (`Appstrate-User`), or with `?endUserId=` an end-user of the application;
//! without either, the state of runs that had no end-user.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};

use crate::http::auth::Auth;
use crate::http::error::{ApiError, FieldError};
use crate::infra::database::memory::MemoryScope;
use crate::memory::MemoryError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/agents/{scope}/{name}/persistence",
            get(get_persistence).delete(wipe_persistence),
        )
        .route(
            "/api/agents/{scope}/{name}/persistence/memories/{id}",
            delete(delete_memory),
        )
        .route(
            "/api/agents/{scope}/{name}/persistence/pinned/{id}",
            delete(delete_pinned),
        )
}

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        let detail = e.to_string();
        match e {
            MemoryError::Invalid {
                field,
                code,
                message,
            } => ApiError::validation(vec![FieldError::new(field, code, message)]),
            MemoryError::Full(_) => ApiError::conflict("memory_full", detail),
            MemoryError::NotFound(_) => ApiError::not_found(detail),
            MemoryError::Unavailable(_) => ApiError::conflict("memory_unavailable", detail),
            MemoryError::Db(db) => db.into(),
        }
    }
}

/// The scope a request addresses: the agent (checked visible to the application) and the end-user.
async fn scope(
    state: &AppState,
    auth: &Auth,
    scope: &str,
    name: &str,
    query: Option<&str>,
) -> Result<MemoryScope, ApiError> {
    let app = auth.app()?;
    let agent =
        crate::packages::resolve_agent(state, auth, &format!("{scope}/{name}"), None).await?;
    let requested = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "endUserId")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty());
    let end_user_id = match (&auth.end_user, requested) {
        (Some(eu), None) => Some(eu.id.clone()),
        (Some(eu), Some(r)) if r == eu.id => Some(r),
        (Some(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "An impersonated end-user can only address its own persistence",
            ))
        }
        (None, Some(r)) => {
            state
                .infra
                .db
                .get_end_user(&app.id, &r)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!("End-user {r} not found in this application"))
                        .with_param("endUserId")
                })?;
            Some(r)
        }
        (None, None) => None,
    };
    Ok(MemoryScope {
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        agent_id: agent.package_id,
        end_user_id,
    })
}

#[utoipa::path(get, path = "/api/agents/{scope}/{name}/persistence", tag = "agents",
    operation_id = "getAgentPersistence", summary = "List an agent's memories, pinned slots and checkpoint",
    params(("scope" = String, Path), ("name" = String, Path),
        ("endUserId" = Option<String>, Query, description = "Address the state of runs of this end-user (default: runs without an end-user, or the impersonated end-user)")),
    responses((status = 200, description = "`{object:\"persistence\", memories, pinned, checkpoint, usage, limits}`", body = Object),
        (status = 403, description = "forbidden"), (status = 404, description = "agent or end-user not found")))]
pub async fn get_persistence(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((s, n)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:read")?;
    let scope = scope(&state, &auth, &s, &n, q.as_deref()).await?;
    Ok(Json(crate::memory::persistence(&state, &scope).await?).into_response())
}

#[utoipa::path(delete, path = "/api/agents/{scope}/{name}/persistence", tag = "agents",
    operation_id = "deleteAgentPersistence", summary = "Wipe an agent's memories, pinned slots and checkpoint",
    params(("scope" = String, Path), ("name" = String, Path), ("endUserId" = Option<String>, Query)),
    responses((status = 204, description = "Wiped"), (status = 403, description = "forbidden"), (status = 404, description = "agent not found")))]
pub async fn wipe_persistence(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((s, n)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:run")?;
    let scope = scope(&state, &auth, &s, &n, q.as_deref()).await?;
    state.infra.db.wipe_memory(&scope).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(delete, path = "/api/agents/{scope}/{name}/persistence/memories/{id}", tag = "agents",
    operation_id = "deleteAgentMemory", summary = "Delete one memory of an agent",
    params(("scope" = String, Path), ("name" = String, Path), ("id" = String, Path), ("endUserId" = Option<String>, Query)),
    responses((status = 204, description = "Deleted"), (status = 403, description = "forbidden"), (status = 404, description = "not found")))]
pub async fn delete_memory(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((s, n, id)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:run")?;
    let scope = scope(&state, &auth, &s, &n, q.as_deref()).await?;
    crate::memory::delete_memory(&state, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(delete, path = "/api/agents/{scope}/{name}/persistence/pinned/{id}", tag = "agents",
    operation_id = "deleteAgentPinnedSlot", summary = "Delete one pinned slot of an agent (by id or name)",
    params(("scope" = String, Path), ("name" = String, Path), ("id" = String, Path), ("endUserId" = Option<String>, Query)),
    responses((status = 204, description = "Deleted"), (status = 403, description = "forbidden"), (status = 404, description = "not found")))]
pub async fn delete_pinned(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((s, n, id)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:run")?;
    let scope = scope(&state, &auth, &s, &n, q.as_deref()).await?;
    crate::memory::delete_pinned(&state, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
