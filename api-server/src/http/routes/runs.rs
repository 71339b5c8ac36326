//! Run routes (§9.3–9.4): start package and inline runs, list, read (with long-poll), logs, cancel, and the
//! realtime streams.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::header::LINK;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::idempotency::idempotency;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::http::middleware::{rate_limit, Limit};
use crate::infra::database::runs::{RunFilter, RunRow};
use crate::infra::pubsub::{Channel, Delivery};
use crate::runs::create::{create_run, AgentSource, CreateRun};

use crate::runs::{run_dto, run_list_dto};
use crate::state::AppState;

/// The authenticated run routes.
pub fn router(state: &AppState) -> Router<AppState> {
    let rl = |limit: u32, window_secs: u64| {
        from_fn_with_state((state.clone(), Limit { limit, window_secs }), rate_limit)
    };
    let idem = |scope: &'static str| from_fn_with_state((state.clone(), scope), idempotency);
    Router::new()
        .route(
            "/api/agents/{scope}/{name}/run",
            post(start_package_run)
                .route_layer(idem("agents:run"))
                .route_layer(rl(20, 60)),
        )
        .route("/api/agents/{scope}/{name}/runs", get(list_agent_runs))
        .route(
            "/api/runs/inline",
            post(start_inline_run)
                .route_layer(idem("agents:run"))
                .route_layer(rl(state.config.inline_run_limits.rate_per_min as u32, 60)),
        )
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route(
            "/api/runs/{id}/logs",
            get(run_logs).route_layer(rl(120, 60)),
        )
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/realtime/runs/{id}", get(super::realtime::run_stream))
        .route("/api/realtime/runs", get(super::realtime::runs_stream))
}

fn query_param(q: &Option<String>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A run-creation body: input, model, and for inline runs the manifest and prompt.
type RunBody = (Value, Option<String>, Option<(Value, String)>);

fn parse_run_body(body: &Value, inline: bool) -> Result<RunBody, ApiError> {
    let mut f = Fields::new(body, "");
    let input = match f.raw("input") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            f.error("input", "invalid_type", "must be an object");
            json!({})
        }
    };
    let model = f.string("model", false, 1, 200);
    let inline_parts = if inline {
        let manifest = match f.raw("manifest") {
            Some(v @ Value::Object(_)) => Some(v.clone()),
            None => {
                f.error("manifest", "required", "is required");
                None
            }
            Some(_) => {
                f.error("manifest", "invalid_type", "must be an object");
                None
            }
        };
        let prompt = f.string("prompt", true, 1, usize::MAX);
        manifest.zip(prompt)
    } else {
        None
    };
    f.finish()?;
    Ok((input, model, inline_parts))
}

async fn respond_created(
    state: &AppState,
    auth: &Auth,
    req: CreateRun,
) -> Result<Response, ApiError> {
    let run = create_run(state, auth, req).await?;
    Ok((StatusCode::CREATED, Json(run_dto(&run))).into_response())
}

/// `POST /api/agents/{scope}/{name}/run`
#[utoipa::path(post, path = "/api/agents/{scope}/{name}/run", tag = "runs",
    operation_id = "runAgent", summary = "Start a run of an agent",
    params(("scope" = String, Path), ("name" = String, Path), ("version" = Option<String>, Query)),
    request_body = crate::http::openapi::StartRunRequest,
    responses((status = 201, description = "Run created (pending)", body = crate::http::openapi::Run), (status = 400), (status = 404), (status = 412), (status = 422), (status = 429), (status = 503)))]
pub async fn start_package_run(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:run")?;
    let (input, model, _) = parse_run_body(&body, false)?;
    let req = CreateRun {
        agent: AgentSource::Package {
            scope_name: format!("{scope}/{name}"),
            version: query_param(&q, "version").filter(|v| !v.is_empty()),
        },
        input,
        model,
        schedule_id: None,
        scheduled_for: None,
    };
    respond_created(&state, &auth, req).await
}

/// `POST /api/runs/inline`
#[utoipa::path(post, path = "/api/runs/inline", tag = "runs",
    operation_id = "runInline", summary = "Start a run of an inline agent (manifest and prompt in the body)",
    request_body = crate::http::openapi::InlineRunRequest,
    responses((status = 201, description = "Inline run created (pending)", body = crate::http::openapi::Run), (status = 400), (status = 413), (status = 429)))]
pub async fn start_inline_run(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:run")?;
    let (input, model, inline) = parse_run_body(&body, true)?;
    let (manifest, prompt) =
        inline.ok_or_else(|| ApiError::invalid_request("manifest and prompt are required"))?;
    let req = CreateRun {
        agent: AgentSource::Inline { manifest, prompt },
        input,
        model,
        schedule_id: None,
        scheduled_for: None,
    };
    respond_created(&state, &auth, req).await
}

const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "success",
    "failed",
    "timeout",
    "cancelled",
];

fn run_filter(auth: &Auth, query: &ListQuery) -> Result<RunFilter, ApiError> {
    let status = query.param("status");
    if let Some(s) = &status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(
                ApiError::invalid_request(format!("Unknown status {s:?}")).with_param("status")
            );
        }
    }
    let kind = query.param("kind");
    if let Some(k) = &kind {
        if k != "package" && k != "inline" {
            return Err(ApiError::invalid_request(format!("Unknown kind {k:?}")).with_param("kind"));
        }
    }
    Ok(RunFilter {
        status,
        package_id: query.param("packageId"),
        kind,
        schedule_id: query.param("scheduleId"),
        end_user_id: auth.end_user.as_ref().map(|e| e.id.clone()),
        ..Default::default()
    })
}

/// `fields=` of the run lists: the DTO keys to return (`id` and `object` always come). `None` = all.
fn list_fields(query: &ListQuery) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = query.param("fields") else {
        return Ok(None);
    };
    let mut fields = Vec::new();
    for f in raw.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if !crate::runs::RUN_DTO_KEYS.contains(&f) {
            return Err(ApiError::invalid_request(format!(
                "Unknown run field {f:?}; fields is a comma-separated list of run DTO keys, e.g. fields=status,createdAt"
            ))
            .with_param("fields"));
        }
        fields.push(f.to_string());
    }
    Ok(Some(fields))
}

async fn list_with(
    state: &AppState,
    auth: &Auth,
    path: &str,
    query: ListQuery,
    filter: RunFilter,
) -> Result<Response, ApiError> {
    let app = auth.app()?;
    let fields = list_fields(&query)?;
    // input and result are read only when the answer carries them.
    let large = fields
        .as_ref()
        .is_none_or(|f| f.iter().any(|k| k == "input" || k == "result"));
    let page = state
        .infra
        .db
        .list_run_summaries(&app.id, &filter, &query.page, large)
        .await?;
    // The documents of the page's runs, in one query, unless `fields` leaves them out.
    let mut documents: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let with_documents = fields
        .as_ref()
        .is_none_or(|f| f.iter().any(|k| k == "documents"));
    if with_documents {
        let ids: Vec<String> = page.items.iter().map(|r| r.id.clone()).collect();
        for d in state.infra.db.documents_of_runs(&ids).await? {
            documents
                .entry(d.run_id.clone())
                .or_default()
                .push(crate::documents::document_summary(&d));
        }
    }
    Ok(paged_response(
        &state.config.app_url,
        path,
        &query,
        page,
        |r| &r.id,
        |r| {
            let id = r.id.clone();
            let mut dto = run_list_dto(r, fields.as_deref());
            if with_documents {
                dto["documents"] = Value::Array(documents.get(&id).cloned().unwrap_or_default());
            }
            dto
        },
    ))
}

/// `GET /api/runs`
#[utoipa::path(get, path = "/api/runs", tag = "runs",
    operation_id = "listRuns", summary = "List runs",
    params(("status" = Option<String>, Query), ("packageId" = Option<String>, Query), ("kind" = Option<String>, Query), ("scheduleId" = Option<String>, Query), ("fields" = Option<String>, Query, description = "Comma-separated run DTO keys to return (id and object always); input and result are read only when listed. Default: every key")),
    responses((status = 200, description = "List of runs", body = crate::http::openapi::RunList)))]
pub async fn list_runs(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let query = ListQuery::parse(q.as_deref())?;
    let filter = run_filter(&auth, &query)?;
    list_with(&state, &auth, "/api/runs", query, filter).await
}

/// `GET /api/agents/{scope}/{name}/runs`
#[utoipa::path(get, path = "/api/agents/{scope}/{name}/runs", tag = "runs",
    operation_id = "listAgentRuns", summary = "List the runs of one agent",
    responses((status = 200, description = "Runs of one agent", body = crate::http::openapi::RunList), (status = 404)))]
pub async fn list_agent_runs(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let agent =
        crate::packages::resolve_agent(&state, &auth, &format!("{scope}/{name}"), None).await?;
    let query = ListQuery::parse(q.as_deref())?;
    let mut filter = run_filter(&auth, &query)?;
    filter.package_id = Some(agent.package_id.clone());
    let path = format!("/api/agents/{}/{}/runs", agent.scope, agent.name);
    list_with(&state, &auth, &path, query, filter).await
}

/// The run `id` as the caller may see it (see [`crate::runs::access::visible_run`]).
pub async fn visible_run(state: &AppState, auth: &Auth, id: &str) -> Result<RunRow, ApiError> {
    Ok(crate::runs::access::visible_run(state, auth, id).await?)
}

/// `?wait=`: absent, `0` or `false` → no wait; `true` or empty → 55 s; an integer clamped to 55.
fn parse_wait(q: &Option<String>) -> Result<Option<Duration>, ApiError> {
    let bad = || {
        ApiError::invalid_request(
            "wait must be true, false or a non-negative whole number of seconds",
        )
        .with_param("wait")
    };
    let has = url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .any(|(k, _)| k == "wait");
    if !has {
        return Ok(None);
    }
    let raw = query_param(q, "wait").unwrap_or_default();
    match raw.as_str() {
        "" | "true" => Ok(Some(Duration::from_secs(55))),
        "false" | "0" => Ok(None),
        n => {
            let secs: u64 = n.parse().map_err(|_| bad())?;
            Ok(Some(Duration::from_secs(secs.min(55))))
        }
    }
}

/// Waits until `run_id` is terminal or `wait` expires: wakes on `run_update` and re-reads every 2 s.
async fn wait_terminal(state: &AppState, run: RunRow, wait: Duration) -> Result<RunRow, ApiError> {
    if run.is_terminal() {
        return Ok(run);
    }
    // Without a subscription (the adapter failed) the 2 s re-reads carry on alone.
    let mut frames = state
        .infra
        .pubsub
        .subscribe(&Channel::run_events(&run.org_id))
        .await
        .ok();
    let deadline = tokio::time::Instant::now() + wait;
    let mut reread = tokio::time::interval(Duration::from_secs(2));
    let shutdown = state.runs.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let fresh = state
            .infra
            .db
            .get_run(&run.id)
            .await?
            .unwrap_or_else(|| run.clone());
        if fresh.is_terminal() {
            return Ok(fresh);
        }
        // Wait for the next reason to look again: a terminal frame of this run, a re-read tick, or the end.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(fresh),
                // Graceful shutdown answers with the run as it is now.
                _ = &mut shutdown => {
                    return Ok(state.infra.db.get_run(&run.id).await?.unwrap_or(fresh));
                }
                _ = reread.tick() => break,
                frame = async { frames.as_mut().expect("guarded").next().await }, if frames.is_some() => {
                    match frame {
                        Some(Delivery::Message(f)) => {
                            let v: Value = serde_json::from_str(&f).unwrap_or(Value::Null);
                            if v["runId"] == run.id.as_str() && v["terminal"] == true {
                                break;
                            }
                        }
                        // Frames were missed: re-read the run now.
                        Some(Delivery::Lagged) => break,
                        None => frames = None,
                    }
                }
            }
        }
    }
}

/// `GET /api/runs/{id}`
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    operation_id = "getRun", summary = "Get a run (optionally waiting for it to finish)",
    params(("wait" = Option<String>, Query, description = "Long-poll up to 55 s for a terminal state")),
    responses((status = 200, description = "The run", body = crate::http::openapi::Run), (status = 400), (status = 404)))]
pub async fn get_run(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let wait = parse_wait(&q)?;
    let run = visible_run(&state, &auth, &id).await?;
    let run = match wait {
        Some(d) if !run.is_terminal() => match state.runs.enter_wait(&auth.identity()) {
            Some(_slot) => wait_terminal(&state, run, d).await?,
            None => run,
        },
        _ => run,
    };
    let mut dto = run_dto(&run);
    let docs = state.infra.db.run_documents(&run.id).await?;
    dto["documents"] = docs
        .iter()
        .map(crate::documents::document_summary)
        .collect();
    Ok(Json(dto).into_response())
}

const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

/// `GET /api/runs/{id}/logs`
#[utoipa::path(get, path = "/api/runs/{id}/logs", tag = "runs",
    operation_id = "getRunLogs", summary = "Read the logs of a run",
    params(("since" = Option<i64>, Query), ("level" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, description = "Log rows, oldest first", body = crate::http::openapi::RunLogList), (status = 404)))]
pub async fn run_logs(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let run = visible_run(&state, &auth, &id).await?;
    let since = match query_param(&q, "since").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<i64>().map_err(|_| {
            ApiError::invalid_request("since must be a log id").with_param("since")
        })?),
    };
    let levels: Vec<&str> = match query_param(&q, "level").filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(l) => {
            let i = LEVELS.iter().position(|x| *x == l).ok_or_else(|| {
                ApiError::invalid_request(format!("Unknown level {l:?}")).with_param("level")
            })?;
            LEVELS[i..].to_vec()
        }
    };
    let limit = match query_param(&q, "limit").filter(|s| !s.is_empty()) {
        None => 1000,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid_request("limit must be 1 to 1000").with_param("limit"))
            }
        },
    };
    let rows = state
        .infra
        .db
        .list_logs(&run.id, since, &levels, limit + 1)
        .await?;
    let has_more = rows.len() as i64 > limit;
    let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let data: Vec<Value> = rows
        .iter()
        .map(|l| {
            json!({"id": l.id, "runId": l.run_id, "type": l.log_type, "level": l.level, "event": l.event,
                   "message": l.message, "data": l.data.as_ref().map(|d| d.0.clone()), "createdAt": l.created_at})
        })
        .collect();
    let last = rows.last().map(|l| l.id).or(since);
    let mut res =
        Json(json!({"object": "list", "data": data, "hasMore": has_more})).into_response();
    if let Some(last) = last {
        let link = format!(
            "<{}/api/runs/{}/logs?since={last}>; rel=\"next\"",
            state.config.app_url, run.id
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            res.headers_mut().insert(LINK, v);
        }
    }
    Ok(res)
}

/// `POST /api/runs/{id}/cancel`
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs",
    operation_id = "cancelRun", summary = "Cancel a run",
    responses((status = 200, description = "The cancelled run", body = crate::http::openapi::Run), (status = 404), (status = 409, description = "not_cancellable")))]
pub async fn cancel_run(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let fresh = crate::runs::access::cancel_run(&state, &auth, &id).await?;
    Ok(Json(run_dto(&fresh)).into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_wait;
    use std::time::Duration;

    #[test]
    fn wait_parameter() {
        let p = |s: &str| parse_wait(&Some(s.to_string()));
        assert_eq!(parse_wait(&None).unwrap(), None);
        assert_eq!(p("wait=0").unwrap(), None);
        assert_eq!(p("wait=false").unwrap(), None);
        assert_eq!(p("wait=true").unwrap(), Some(Duration::from_secs(55)));
        assert_eq!(p("wait=").unwrap(), Some(Duration::from_secs(55)));
        assert_eq!(p("wait=5").unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(p("wait=500").unwrap(), Some(Duration::from_secs(55)));
        for bad in ["wait=-1", "wait=1.5", "wait=soon"] {
            assert_eq!(p(bad).unwrap_err().param.as_deref(), Some("wait"));
        }
    }
}
