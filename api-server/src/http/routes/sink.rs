//! The runner event sink (§9.6, §12): signed by the run's secret, outside the API-key pipeline.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::http::auth::{Auth, Credential};
use crate::http::error::ApiError;
use crate::infra::database::now;
use crate::infra::database::runs::RunRow;
use crate::runs::events::{accept, remember, reply, seen, Accepted, RunSink};
use crate::runs::sink::{parse_event, parse_finalize, verify, SignatureError};
use crate::runs::verdict::Outcome;
use crate::state::AppState;

/// The sink routes (no API-key authentication: each request is signed with the run's secret).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/runs/{id}/workspace", get(workspace))
        .route("/api/runs/{id}/events", post(event))
        .route("/api/runs/{id}/events/heartbeat", post(heartbeat))
        .route("/api/runs/{id}/events/finalize", post(finalize))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn too_many() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too many requests. Please try again shortly.",
    )
}

/// Verification order of §12.2. On success: the run, its sink memory and the `webhook-id`.
pub(crate) async fn verified(
    state: &AppState,
    addr: SocketAddr,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(RunRow, std::sync::Arc<RunSink>, String), Result<Response, ApiError>> {
    let ip_key = format!("sink-auth-failures:ip:{}", addr.ip());
    let fail = |e: ApiError| async {
        // Only failures count against the per-IP budget.
        match state
            .infra
            .rate_limiter
            .hit(&ip_key, 200, Duration::from_secs(10))
            .await
        {
            Ok(d) if !d.allowed => Err(Err(too_many())),
            _ => Err(Err(e)),
        }
    };
    let Some(run) = state
        .infra
        .db
        .get_run(id)
        .await
        .map_err(|e| Err(e.into()))?
    else {
        return fail(ApiError::not_found("Run not found").with_code("run_not_found")).await;
    };
    let sink = state
        .runs
        .sink
        .get(state, &run)
        .map_err(|e| Err(e.into()))?;
    let webhook_id = header(headers, "webhook-id").unwrap_or("").to_string();
    let check = verify(
        &sink.secret,
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
        body,
        now().timestamp(),
        state.config.webhook_timestamp_tolerance_seconds as i64,
    );
    if run.sink_closed_at.is_some() {
        // A replayed webhook-id is still answered after finalize; anything else is gone.
        if check.is_ok()
            && seen(state, &run.id, &webhook_id)
                .await
                .map_err(|e| Err(e.into()))?
        {
            return Err(Ok(Json(
                json!({"ok": true, "outcome": "replay", "sequence": run.last_event_sequence}),
            )
            .into_response()));
        }
        return fail(ApiError::new(
            StatusCode::GONE,
            "run_sink_closed",
            "This run has finished; its sink is closed",
        ))
        .await;
    }
    if let Err(e) = check {
        let detail = match e {
            SignatureError::MissingHeaders => {
                "webhook-id, webhook-timestamp and webhook-signature are required"
            }
            SignatureError::InvalidTimestamp => "webhook-timestamp must be an integer",
            SignatureError::OutOfTolerance => "webhook-timestamp is outside the tolerance window",
            SignatureError::Invalid => "No v1 signature matches",
        };
        return fail(ApiError::new(StatusCode::UNAUTHORIZED, e.code(), detail)).await;
    }
    match state
        .infra
        .rate_limiter
        .hit(&format!("sink:run:{}", run.id), 200, Duration::from_secs(1))
        .await
    {
        Ok(d) if !d.allowed => return Err(Err(too_many())),
        _ => {}
    }
    Ok((run, sink, webhook_id))
}

macro_rules! verify_or_return {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(Ok(resp)) => return Ok(resp),
            Err(Err(e)) => return Err(e),
        }
    };
}
pub(crate) use verify_or_return;

/// `GET /api/runs/{id}/workspace`: the run's bundle, for the runner.
#[utoipa::path(get, path = "/api/runs/{id}/workspace", tag = "runner",
    operation_id = "getRunWorkspace", summary = "Download the run's bundle (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path), ("webhook-id" = String, Header, description = "Unique per message; a repeated id is answered as a replay"), ("webhook-timestamp" = i64, Header, description = "Unix seconds, within the tolerance window")),
    responses((status = 200, description = "The agent bundle", body = crate::http::openapi::Archive, content_type = "application/zip"), (status = 401, description = "Missing or invalid signature"), (status = 404, description = "run_not_found"), (status = 410, description = "run_sink_closed: the run has finished"), (status = 429), (status = 503, description = "sink_unavailable")))]
pub async fn workspace(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (run, _, _) = verify_or_return!(verified(&state, addr, &id, &headers, b"").await);
    let bundle = if run.kind == "inline" {
        crate::packages::inline_bundle(
            &run.inline_manifest
                .as_ref()
                .map(|j| j.0.clone())
                .unwrap_or(Value::Null),
            run.inline_prompt.as_deref().unwrap_or(""),
        )
    } else {
        let app = state
            .infra
            .db
            .get_application(&run.org_id, &run.application_id)
            .await?
            .ok_or_else(|| ApiError::not_found("Application not found"))?;
        let auth = Auth {
            org_id: run.org_id.clone(),
            credential: Credential::Admin {
                id: format!("run:{}", run.id),
            },
            application: Some(app),
            end_user: None,
        };
        let scope_name = format!("{}/{}", run.agent_scope, run.agent_name);
        let resolved =
            crate::packages::resolve_agent(&state, &auth, &scope_name, run.version_ref.as_deref())
                .await?;
        crate::packages::run_bundle(&state, &resolved).await?
    };
    Ok(([(CONTENT_TYPE, "application/zip")], bundle).into_response())
}

/// `POST /api/runs/{id}/events`: one runner event.
#[utoipa::path(post, path = "/api/runs/{id}/events", tag = "runner",
    operation_id = "postRunEvent", summary = "Report a run event (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path), ("webhook-id" = String, Header, description = "Unique per message; a repeated id is answered as a replay"), ("webhook-timestamp" = i64, Header, description = "Unix seconds, within the tolerance window")),
    request_body = crate::http::openapi::RunEvent,
    responses((status = 200, description = "Accepted, buffered or replayed", body = crate::http::openapi::SinkReply), (status = 400, description = "invalid_event"), (status = 401, description = "Missing or invalid signature"), (status = 404, description = "run_not_found"), (status = 410, description = "run_sink_closed: the run has finished"), (status = 429), (status = 503, description = "sink_unavailable")))]
pub async fn event(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, _, webhook_id) =
        verify_or_return!(verified(&state, addr, &id, &headers, &body).await);
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_event", format!("Malformed JSON: {e}")))?;
    let ev = parse_event(&value, &run.id).map_err(|errors| {
        let mut e = ApiError::validation(errors);
        e.code = "invalid_event".into();
        e
    })?;
    let sequence = ev.sequence;
    let outcome = accept(&state, &run, &webhook_id, ev).await?;
    if outcome != Accepted::Replay {
        let _ = state.infra.db.heartbeat(&run.id, now()).await;
    }
    Ok(Json(reply(outcome, sequence)).into_response())
}

/// `POST /api/runs/{id}/events/heartbeat`: the runner is alive.
#[utoipa::path(post, path = "/api/runs/{id}/events/heartbeat", tag = "runner",
    operation_id = "postRunHeartbeat", summary = "Heartbeat of a running run (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path), ("webhook-id" = String, Header, description = "Unique per message; a repeated id is answered as a replay"), ("webhook-timestamp" = i64, Header, description = "Unix seconds, within the tolerance window")),
    request_body(content = Object, description = "`{}`"),
    responses((status = 200, description = "Recorded", body = crate::http::openapi::SinkReply), (status = 401, description = "Missing or invalid signature"), (status = 404, description = "run_not_found"), (status = 410, description = "run_sink_closed: the run has finished"), (status = 429), (status = 503, description = "sink_unavailable")))]
pub async fn heartbeat(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, _, webhook_id) =
        verify_or_return!(verified(&state, addr, &id, &headers, &body).await);
    state.infra.db.heartbeat(&run.id, now()).await?;
    remember(&state, &run.id, &webhook_id).await?;
    Ok(Json(json!({"ok": true})).into_response())
}

/// `POST /api/runs/{id}/events/finalize`: the run's outcome; closes the sink.
#[utoipa::path(post, path = "/api/runs/{id}/events/finalize", tag = "runner",
    operation_id = "finalizeRun", summary = "Report the outcome of a run (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path), ("webhook-id" = String, Header, description = "Unique per message; a repeated id is answered as a replay"), ("webhook-timestamp" = i64, Header, description = "Unix seconds, within the tolerance window")),
    request_body = crate::http::openapi::FinalizeRequest,
    responses((status = 200, description = "The run's final status", body = crate::http::openapi::SinkReply), (status = 400, description = "validation_failed"), (status = 401, description = "Missing or invalid signature"), (status = 404, description = "run_not_found"), (status = 410, description = "run_sink_closed: the run has finished"), (status = 429), (status = 503, description = "sink_unavailable")))]
pub async fn finalize(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, _, webhook_id) =
        verify_or_return!(verified(&state, addr, &id, &headers, &body).await);
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("Malformed JSON: {e}")))?;
    let outcome: Outcome = parse_finalize(&value).map_err(ApiError::validation)?;
    remember(&state, &run.id, &webhook_id).await?;
    let checkpoint = value.get("checkpoint").filter(|c| !c.is_null()).cloned();
    let won = crate::runs::finalize_run(&state, &run.id, outcome)
        .await
        .map_err(ApiError::internal)?;
    if let (true, Some(c)) = (won, checkpoint) {
        // Only the finalize that closed the run writes its checkpoint (docs/documents.md).
        if let Err(e) = crate::memory::save_checkpoint(&state, &run, &c).await {
            tracing::warn!(run_id = %run.id, error = %e, "the run's checkpoint was not kept");
        }
    }
    let status = state
        .infra
        .db
        .get_run(&run.id)
        .await?
        .map(|r| r.status)
        .unwrap_or_default();
    Ok(Json(json!({"ok": true, "status": status})).into_response())
}
