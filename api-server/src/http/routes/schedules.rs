//! Schedule routes (§9.5): create under an agent, list, read, update and delete.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::http::auth::{Auth, Credential};
use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::http::middleware::{rate_limit, Limit};
use crate::infra::database::schedules::{
    ScheduleFilter, ScheduleRow, ACTOR_ADMIN, ACTOR_API_KEY, ACTOR_END_USER,
};
use crate::infra::database::{now, DbError};
use crate::schedules::{cron_spec, next_run_at, schedule_dto};
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

/// The editable fields of a create or update body; `None` = absent.
#[derive(Default)]
struct ScheduleBody {
    name: Option<Option<String>>,
    cron_expression: Option<String>,
    timezone: Option<String>,
    input: Option<Value>,
    version_override: Option<Option<String>>,
    enabled: Option<bool>,
}

fn parse_body(body: &Value, create: bool) -> Result<ScheduleBody, ApiError> {
    let mut f = Fields::new(body, "");
    let name = match f.raw("name") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => f.string("name", false, 1, 200).map(Some),
    };
    let cron_expression = f.string("cron_expression", create, 1, 200);
    let timezone = f.string("timezone", false, 1, 100);
    let input = match f.raw("input") {
        None => None,
        Some(Value::Null) if !create => Some(json!({})),
        Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            f.error("input", "invalid_type", "must be an object");
            None
        }
    };
    let version_override = match f.raw("version_override") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => f.string("version_override", false, 1, 100).map(Some),
    };
    let enabled = f.bool("enabled");
    f.finish()?;
    Ok(ScheduleBody {
        name,
        cron_expression,
        timezone,
        input,
        version_override,
        enabled,
    })
}

/// Checks the agent (at `version_override`) and validates `input` against its input schema.
async fn check_agent_and_input(
    state: &AppState,
    auth: &Auth,
    package_id: &str,
    version_override: Option<&str>,
    input: &Value,
) -> Result<String, ApiError> {
    let agent = crate::packages::resolve_agent(state, auth, package_id, version_override).await?;
    crate::packages::validate_input(&agent.manifest, input)?;
    Ok(agent.package_id)
}

/// Creating or editing a schedule starts runs later, so it needs `agents:run` as well as
/// `schedules:write`.
fn require_write(auth: &Auth) -> Result<(), ApiError> {
    auth.require_scope("schedules:write")?;
    Ok(auth.require_scope("agents:run")?)
}

fn admin_token_id(auth: &Auth) -> Option<String> {
    match &auth.credential {
        Credential::Admin { id } => Some(id.clone()),
        Credential::ApiKey { .. } | Credential::Session { .. } => None,
    }
}

/// An edit by an API key other than the schedule's own credential makes the schedule that key's: it then
/// fires only while that key lives (an API key is lower than an admin token, and one key does not vouch
/// for another). An admin token's edit keeps the creator, except that it claims an admin schedule made
/// before creating tokens were recorded. The end-user actor, if any, stays.
fn take_over(s: &mut ScheduleRow, auth: &Auth) {
    match &auth.credential {
        Credential::ApiKey { id, .. } => {
            if s.actor_type == ACTOR_ADMIN || s.api_key_id.as_deref() != Some(id.as_str()) {
                if s.actor_type == ACTOR_ADMIN {
                    s.actor_type = ACTOR_API_KEY.into();
                }
                s.api_key_id = Some(id.clone());
                s.admin_token_id = None;
            }
        }
        Credential::Admin { id } => {
            if s.actor_type == ACTOR_ADMIN && s.admin_token_id.is_none() {
                s.admin_token_id = Some(id.clone());
            }
        }
        // A session is not a credential a schedule can fire as: the schedule keeps its own.
        Credential::Session { .. } => {}
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Schedule {id} not found"))
}

/// The schedule `id` as the caller may see it: same application, and its own when impersonating.
async fn visible_schedule(
    state: &AppState,
    auth: &Auth,
    id: &str,
) -> Result<ScheduleRow, ApiError> {
    let app = auth.app()?;
    state
        .infra
        .db
        .get_schedule(&app.id, id)
        .await?
        .filter(|s| match &auth.end_user {
            Some(eu) => s.end_user_id.as_deref() == Some(eu.id.as_str()),
            None => true,
        })
        .ok_or_else(|| not_found(id))
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
    require_write(&auth)?;
    let app = auth.app()?.clone();
    let b = parse_body(&body, true)?;
    let cron_expression = b.cron_expression.unwrap_or_default();
    let timezone = b.timezone.unwrap_or_else(|| "UTC".into());
    let spec = cron_spec(&cron_expression, &timezone)?;
    let input = b.input.unwrap_or_else(|| json!({}));
    let version_override = b.version_override.flatten();
    let package_id = check_agent_and_input(
        &state,
        &auth,
        &format!("{scope}/{name}"),
        version_override.as_deref(),
        &input,
    )
    .await?;
    let enabled = b.enabled.unwrap_or(true);
    let at = now();
    if auth.user_id().is_some() {
        // A schedule fires later as its creator's credential; a browser session is not one that lasts.
        return Err(ApiError::forbidden(
            "Schedules run as an API key or an admin token; create an API key for this application and create the schedule with it",
        )
        .with_code("session_not_allowed"));
    }
    let actor_type = match (&auth.end_user, auth.is_admin()) {
        (Some(_), _) => ACTOR_END_USER,
        (None, true) => ACTOR_ADMIN,
        (None, false) => ACTOR_API_KEY,
    };
    let row = ScheduleRow {
        id: format!("sched_{}", uuid::Uuid::new_v4()),
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        package_id,
        end_user_id: auth.end_user.as_ref().map(|e| e.id.clone()),
        api_key_id: auth.api_key_id().map(str::to_string),
        actor_type: actor_type.into(),
        admin_token_id: admin_token_id(&auth),
        name: b.name.flatten(),
        enabled,
        cron_expression,
        timezone,
        input: sqlx::types::Json(input),
        version_override,
        last_run_at: None,
        next_run_at: next_run_at(&spec, enabled),
        created_at: at,
        updated_at: at,
        disabled_reason: None,
    };
    let row = state.infra.db.insert_schedule(&row).await?;
    Ok((StatusCode::CREATED, Json(schedule_dto(&row))).into_response())
}

async fn list_with(
    state: &AppState,
    auth: &Auth,
    path: &str,
    q: Option<String>,
    package_id: Option<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("schedules:read")?;
    let app = auth.app()?;
    let query = ListQuery::parse(q.as_deref())?;
    let filter = ScheduleFilter {
        package_id,
        end_user_id: auth.end_user.as_ref().map(|e| e.id.clone()),
    };
    let page = state
        .infra
        .db
        .list_schedules(&app.id, &filter, &query.page)
        .await?;
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
    auth.require_scope("schedules:read")?;
    let s = visible_schedule(&state, &auth, &id).await?;
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
    require_write(&auth)?;
    let mut s = visible_schedule(&state, &auth, &id).await?;
    let b = parse_body(&body, false)?;
    take_over(&mut s, &auth);
    if let Some(name) = b.name {
        s.name = name;
    }
    if let Some(c) = b.cron_expression {
        s.cron_expression = c;
    }
    if let Some(tz) = b.timezone {
        s.timezone = tz;
    }
    let spec = cron_spec(&s.cron_expression, &s.timezone)?;
    // The agent and input are checked again when they change, so that a schedule whose agent is gone can
    // still be renamed, disabled or enabled (its next fire then records why it cannot run).
    let recheck = b.version_override.is_some() || b.input.is_some();
    if let Some(v) = b.version_override {
        s.version_override = v;
    }
    if let Some(input) = b.input {
        s.input = sqlx::types::Json(input);
    }
    if recheck {
        check_agent_and_input(
            &state,
            &auth,
            &s.package_id,
            s.version_override.as_deref(),
            &s.input.0,
        )
        .await?;
    }
    if let Some(enabled) = b.enabled {
        s.enabled = enabled;
        // Enabled again, or disabled by the caller: the platform's reason no longer applies.
        s.disabled_reason = None;
    }
    s.next_run_at = next_run_at(&spec, s.enabled);
    s.updated_at = now();
    let row = state
        .infra
        .db
        .update_schedule(&s)
        .await
        .map_err(|e| match e {
            DbError::NotFound => not_found(&id),
            other => other.into(),
        })?;
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
    auth.require_scope("schedules:write")?;
    let s = visible_schedule(&state, &auth, &id).await?;
    state
        .infra
        .db
        .delete_schedule(&s.application_id, &s.id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => not_found(&id),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
