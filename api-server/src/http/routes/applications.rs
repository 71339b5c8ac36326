//! `/api/applications*` (org-level; no application header).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::auth::{Auth, Credential};
use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::infra::database::ApplicationRow;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationDto {
    object: &'static str,
    id: String,
    org_id: String,
    name: String,
    is_default: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ApplicationRow> for ApplicationDto {
    fn from(r: ApplicationRow) -> Self {
        Self {
            object: "application",
            id: r.id,
            org_id: r.org_id,
            name: r.name,
            is_default: r.is_default,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn pinned_app(auth: &Auth) -> Option<&str> {
    match &auth.credential {
        Credential::ApiKey { application_id, .. } => Some(application_id),
        Credential::Admin { .. } | Credential::Session { .. } => None,
    }
}

fn parse_name(body: &serde_json::Value, required: bool) -> Result<Option<String>, ApiError> {
    let mut f = Fields::new(body, "");
    let name = f.string("name", required, 1, 100);
    f.finish()?;
    Ok(name.map(|n| n.trim().to_string()))
}

#[utoipa::path(get, path = "/api/applications", tag = "applications",
    operation_id = "listApplications", summary = "List applications",
    params(("limit" = Option<u32>, Query, description = "1-100"), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "List of applications", body = crate::http::openapi::ApplicationList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(q.as_deref())?;
    let page = state
        .infra
        .db
        .list_applications(&auth.org_id, pinned_app(&auth), &query.page)
        .await?;
    Ok(paged_response(
        &state.config.app_url,
        "/api/applications",
        &query,
        page,
        |a| &a.id,
        ApplicationDto::from,
    ))
}

#[utoipa::path(post, path = "/api/applications", tag = "applications",
    operation_id = "createApplication", summary = "Create an application",
    security(("adminToken" = [])),
    request_body = crate::http::openapi::CreateApplicationRequest,
    responses((status = 201, body = ApplicationDto), (status = 400), (status = 403)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("applications:write")?;
    let name = parse_name(&body, true)?.unwrap_or_default();
    let app = state
        .infra
        .db
        .insert_application(&auth.org_id, &name, false)
        .await?;
    Ok((StatusCode::CREATED, Json(ApplicationDto::from(app))).into_response())
}

async fn load(state: &AppState, auth: &Auth, id: &str) -> Result<ApplicationRow, ApiError> {
    state
        .infra
        .db
        .get_application(&auth.org_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Application {id} not found")))
}

#[utoipa::path(get, path = "/api/applications/{id}", tag = "applications",
    operation_id = "getApplication", summary = "Get an application",
    responses((status = 200, body = ApplicationDto), (status = 403), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let app = load(&state, &auth, &id).await?;
    if pinned_app(&auth).is_some_and(|p| p != app.id) {
        return Err(ApiError::forbidden(
            "This API key is pinned to another application",
        ));
    }
    Ok(Json(ApplicationDto::from(app)).into_response())
}

#[utoipa::path(patch, path = "/api/applications/{id}", tag = "applications",
    operation_id = "updateApplication", summary = "Rename an application",
    security(("adminToken" = [])),
    request_body = crate::http::openapi::UpdateApplicationRequest,
    responses((status = 200, body = ApplicationDto), (status = 400), (status = 404)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_permission("applications:write")?;
    let name = parse_name(&body, false)?;
    let app = match name {
        Some(n) => {
            state
                .infra
                .db
                .rename_application(&auth.org_id, &id, &n)
                .await?
        }
        None => load(&state, &auth, &id).await?,
    };
    Ok(Json(ApplicationDto::from(app)).into_response())
}

#[utoipa::path(delete, path = "/api/applications/{id}", tag = "applications",
    operation_id = "deleteApplication", summary = "Delete an application",
    security(("adminToken" = [])),
    responses((status = 204), (status = 400, description = "default_application"), (status = 404), (status = 409)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_permission("applications:write")?;
    let app = load(&state, &auth, &id).await?;
    if app.is_default {
        return Err(ApiError::bad_request(
            "default_application",
            "The default application cannot be deleted",
        ));
    }
    let runs = crate::documents::runs_with_documents(&state, &id).await?;
    state.infra.db.delete_application(&auth.org_id, &id).await?;
    // Its document and upload rows went with it; their bytes go now.
    crate::documents::forget_application(&state, &id, &runs).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
