//! Schedule routes (§9.5): create under an agent, list, read, update and delete.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::json::JsonBody;
use crate::http::list::{paged_response, ListQuery};
use crate::http::middleware::{rate_limit, Limit};
use crate::schedules::{manage, schedule_dto};
use crate::state::AppState;

/// The authenticated schedule routes.
pub fn router(state: &AppState) -> Router<AppState> {
    let rl = |limit: u32, window_secs: u64| {
        from_fn_with_state((state.clone(), Limit { limit, window_secs }), rate_limit)
    };
    Router::new()
        .route(
            "/api/agents/{scope}/{name}/schedules",
            get(list_agent_schedules)
                .merge(axum::routing::post(create_schedule).route_layer(rl(10, 60))),
        )
        .route("/api/schedules", get(list_schedules))
        .route(
            "/api/schedules/{id}",
            get(get_schedule)
                .put(update_schedule)
                .delete(delete_schedule),
        )
}

/// `POST /api/agents/{scope}/{name}/schedules`
#[utoipa::path(post, path = "/api/agents/{scope}/{name}/schedules", tag = "schedules",
    operation_id = "createSchedule", summary = "Schedule an agent",
    params(("scope" = String, Path), ("name" = String, Path)),
    request_body = crate::http::openapi::ScheduleRequest,
    responses((status = 201, description = "Schedule created", body = crate::http::openapi::Schedule), (status = 400), (status = 404), (status = 429)))]
pub async fn create_schedule(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let row = manage::create(&state, &auth, &format!("{scope}/{name}"), &body).await?;
    Ok((StatusCode::CREATED, Json(schedule_dto(&row))).into_response())
}

async fn list_with(
    state: &AppState,
    auth: &Auth,
    path: &str,
    q: Option<String>,
    package_id: Option<String>,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(q.as_deref())?;
    let page = manage::list(state, auth, package_id, &query.page).await?;
    Ok(paged_response(
        &state.config.app_url,
        path,
        &query,
        page,
        |s| &s.id,
        |s| schedule_dto(&s),
    ))
}

/// `GET /api/schedules`
#[utoipa::path(get, path = "/api/schedules", tag = "schedules",
    operation_id = "listSchedules", summary = "List schedules",
    params(("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "List of schedules", body = crate::http::openapi::ScheduleList)))]
pub async fn list_schedules(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    list_with(&state, &auth, "/api/schedules", q, None).await
}

/// `GET /api/agents/{scope}/{name}/schedules`
#[utoipa::path(get, path = "/api/agents/{scope}/{name}/schedules", tag = "schedules",
    operation_id = "listAgentSchedules", summary = "List the schedules of one agent",
    params(("scope" = String, Path), ("name" = String, Path),
           ("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "Schedules of one agent", body = crate::http::openapi::ScheduleList)))]
pub async fn list_agent_schedules(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let package_id = format!("{scope}/{name}");
    let path = format!("/api/agents/{package_id}/schedules");
    list_with(&state, &auth, &path, q, Some(package_id)).await
}

/// `GET /api/schedules/{id}`
#[utoipa::path(get, path = "/api/schedules/{id}", tag = "schedules",
    operation_id = "getSchedule", summary = "Get a schedule",
    params(("id" = String, Path)),
    responses((status = 200, description = "The schedule", body = crate::http::openapi::Schedule), (status = 404)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = manage::get(&state, &auth, &id).await?;
    Ok(Json(schedule_dto(&s)).into_response())
}

/// `PUT /api/schedules/{id}`: every field optional; `next_run_at` is recomputed.
#[utoipa::path(put, path = "/api/schedules/{id}", tag = "schedules",
    operation_id = "updateSchedule", summary = "Update a schedule",
    params(("id" = String, Path)),
    request_body = crate::http::openapi::ScheduleRequest,
    responses((status = 200, description = "The updated schedule", body = crate::http::openapi::Schedule), (status = 400), (status = 404)))]
pub async fn update_schedule(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let row = manage::update(&state, &auth, &id, &body).await?;
    Ok(Json(schedule_dto(&row)).into_response())
}

/// `DELETE /api/schedules/{id}`
#[utoipa::path(delete, path = "/api/schedules/{id}", tag = "schedules",
    operation_id = "deleteSchedule", summary = "Delete a schedule",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_schedule(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    manage::delete(&state, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
