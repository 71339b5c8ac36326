//! Runs: creation (§11.1), the single terminal writer `finalize_run` (§11.2–11.3), the workload
//! supervisor, the event sink logic (§12) and liveness (§11.4). No axum types here.

pub mod access;
pub mod create;
pub mod events;
pub mod runtime;
pub mod sink;
pub mod verdict;

use serde_json::{json, Map, Value};

use crate::infra::database::history::RunSummaryRow;
use crate::infra::database::runs::{RunLogRow, RunRow};
use crate::infra::pubsub::Channel;
use crate::state::AppState;

pub use runtime::{finalize_run, stop_run, Runtime};

/// The run DTO (§11.6). Internal columns are never part of it.
pub fn run_dto(r: &RunRow) -> Value {
    Value::Object(summary_dto(RunSummaryRow::from(r)))
}

/// The keys of the run DTO, in order (`fields=` of the run lists picks among them).
pub const RUN_DTO_KEYS: [&str; 27] = [
    "id",
    "object",
    "packageId",
    "orgId",
    "applicationId",
    "endUserId",
    "apiKeyId",
    "scheduleId",
    "kind",
    "agent_scope",
    "agent_name",
    "version_ref",
    "runNumber",
    "status",
    "input",
    "result",
    "error",
    "model_label",
    "timeout_seconds",
    "started_at",
    "completed_at",
    "duration",
    "createdAt",
    "token_usage",
    "cost",
    "cost_pricing_status",
    "documents",
];

/// The run DTO of a list row. `fields` keeps only those keys (plus `id` and `object`).
pub fn run_list_dto(r: RunSummaryRow, fields: Option<&[String]>) -> Value {
    let mut dto = summary_dto(r);
    if let Some(fields) = fields {
        dto.retain(|k, _| k == "id" || k == "object" || fields.iter().any(|f| f == k));
    }
    Value::Object(dto)
}

fn summary_dto(r: RunSummaryRow) -> Map<String, Value> {
    let json = json!({
        "id": r.id,
        "object": "run",
        "packageId": r.package_id,
        "orgId": r.org_id,
        "applicationId": r.application_id,
        "endUserId": r.end_user_id,
        "apiKeyId": r.api_key_id,
        "scheduleId": r.schedule_id,
        "kind": r.kind,
        "agent_scope": r.agent_scope,
        "agent_name": r.agent_name,
        "version_ref": r.version_ref,
        "runNumber": r.run_number,
        "status": r.status,
        "input": r.input.map(|j| j.0),
        "result": r.result.map(|j| j.0),
        "error": r.error,
        "model_label": r.model_label,
        "timeout_seconds": r.timeout_seconds,
        "started_at": r.started_at,
        "completed_at": r.completed_at,
        "duration": r.duration,
        "createdAt": r.created_at,
        "token_usage": r.token_usage.0,
        "cost": r.cost,
        "cost_pricing_status": r.cost_pricing_status,
    });
    match json {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The `run_update` SSE payload.
pub fn run_update(r: &RunRow) -> Value {
    json!({
        "id": r.id,
        "packageId": r.package_id,
        "applicationId": r.application_id,
        "status": r.status,
        "error": r.error,
        "startedAt": r.started_at,
        "completedAt": r.completed_at,
        "duration": r.duration,
    })
}

/// The `run_log` SSE payload (with `data` only for verbose subscribers).
pub fn run_log(l: &RunLogRow) -> Value {
    json!({
        "id": l.id,
        "runId": l.run_id,
        "type": l.log_type,
        "level": l.level,
        "event": l.event,
        "message": l.message,
        "createdAt": l.created_at,
        "data": l.data.as_ref().map(|d| d.0.clone()),
    })
}

/// A frame on the `appstrate:runs:events` channel: the SSE event plus what subscribers filter on.
pub fn frame(event: &str, run: &RunRow, data: Value) -> String {
    json!({
        "event": event,
        "runId": run.id,
        "applicationId": run.application_id,
        "endUserId": run.end_user_id,
        "status": run.status,
        "terminal": run.is_terminal(),
        "data": data,
    })
    .to_string()
}

pub async fn publish(state: &AppState, event: &str, run: &RunRow, data: Value) {
    if let Err(e) = state
        .infra
        .pubsub
        .publish(&Channel::run_events(&run.org_id), frame(event, run, data))
        .await
    {
        tracing::warn!(run_id = %run.id, error = %e, "could not publish a run event");
    }
}

pub async fn publish_update(state: &AppState, run: &RunRow) {
    publish(state, "run_update", run, run_update(run)).await;
}
