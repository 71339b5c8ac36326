//! What the runner asks of the platform besides events (docs/runner.md, docs/documents.md): its context
//! (memory and input files), its memory tools, and announcing a document. Each request is signed with the
//! run's sink secret exactly like the event sink; a mutating request whose `webhook-id` was already seen
//! is answered as a replay without acting again.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::sink::{verified, verify_or_return};
use crate::http::error::ApiError;
use crate::http::json::Fields;
use crate::infra::database::runs::RunRow;
use crate::runs::events::{remember, seen};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/runs/{id}/context", get(context))
        .route("/api/runs/{id}/memories", post(remember_memory))
        .route("/api/runs/{id}/memories/search", post(recall_memory))
        .route("/api/runs/{id}/pinned", post(pin))
        .route("/api/runs/{id}/documents", post(publish_document))
        .route("/api/runs/{id}/files/{upload}", get(input_file))
}

fn json_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("Malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid_request("The body must be a JSON object"));
    }
    Ok(v)
}

/// Verifies a mutating runner request; `Err(Ok(replay))` when its `webhook-id` was already handled.
async fn mutating(
    state: &AppState,
    addr: SocketAddr,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(RunRow, String), Result<Response, ApiError>> {
    let (run, _, webhook_id) = verified(state, addr, id, headers, body).await?;
    if seen(state, &run.id, &webhook_id)
        .await
        .map_err(|e| Err(e.into()))?
    {
        return Err(Ok((
            StatusCode::CONFLICT,
            Json(json!({"ok": false, "outcome": "replay"})),
        )
            .into_response()));
    }
    Ok((run, webhook_id))
}

#[utoipa::path(get, path = "/api/runs/{id}/context", tag = "runner",
    operation_id = "getRunContext", summary = "The run's memory context and input files (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "`{persistence, limits, memories, pinned, checkpoint, files, documents}`", body = Object), (status = 401), (status = 404), (status = 410)))]
pub async fn context(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (run, _, _) = verify_or_return!(verified(&state, addr, &id, &headers, b"").await);
    let mut ctx = crate::memory::run_context(&state, &run).await?;
    ctx["files"] = json!(crate::documents::uploads::run_files(&state, &run).await?);
    let f = &state.config.files;
    ctx["documents"] = json!({"maxBytes": f.document_max_bytes, "maxPerRun": f.documents_per_run});
    Ok(Json(ctx).into_response())
}

#[utoipa::path(post, path = "/api/runs/{id}/memories", tag = "runner",
    operation_id = "rememberRunMemory", summary = "Keep a memory for the agent's next runs (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{content}`"),
    responses((status = 201, description = "The memory", body = Object), (status = 400), (status = 401), (status = 409, description = "memory_full or replay"), (status = 410)))]
pub async fn remember_memory(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, webhook_id) = verify_or_return!(mutating(&state, addr, &id, &headers, &body).await);
    let v = json_object(&body)?;
    let mut f = Fields::new(&v, "");
    let content = f.string("content", true, 1, usize::MAX);
    f.finish()?;
    let row = crate::memory::remember(&state, &run, content.as_deref().unwrap_or("")).await?;
    remember(&state, &run.id, &webhook_id).await?;
    Ok((StatusCode::CREATED, Json(crate::memory::memory_dto(&row))).into_response())
}

#[utoipa::path(post, path = "/api/runs/{id}/memories/search", tag = "runner",
    operation_id = "recallRunMemory", summary = "Search the agent's memories by text (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{query, limit?}` (limit 1-20, default 5)"),
    responses((status = 200, description = "`{data:[memory]}`, best match first", body = Object), (status = 401), (status = 410)))]
pub async fn recall_memory(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, _, _) = verify_or_return!(verified(&state, addr, &id, &headers, &body).await);
    let v = json_object(&body)?;
    let mut f = Fields::new(&v, "");
    let query = f.string("query", true, 0, 1000);
    let limit = match f.raw("limit") {
        None | Some(Value::Null) => 5,
        Some(l) => match l.as_u64().filter(|n| (1..=20).contains(n)) {
            Some(n) => n as usize,
            None => {
                f.error("limit", "out_of_range", "must be an integer from 1 to 20");
                5
            }
        },
    };
    f.finish()?;
    let found = crate::memory::recall(&state, &run, query.as_deref().unwrap_or(""), limit).await?;
    let data: Vec<Value> = found.iter().map(crate::memory::memory_dto).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

#[utoipa::path(post, path = "/api/runs/{id}/pinned", tag = "runner",
    operation_id = "pinRunSlot", summary = "Set (or with null, remove) a pinned slot of the agent (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{name, value}`"),
    responses((status = 200, description = "The slot, or `{removed:true}`", body = Object), (status = 400), (status = 401), (status = 409, description = "memory_full or replay"), (status = 410)))]
pub async fn pin(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, webhook_id) = verify_or_return!(mutating(&state, addr, &id, &headers, &body).await);
    let v = json_object(&body)?;
    let mut f = Fields::new(&v, "");
    let name = f.string("name", true, 1, 64);
    let value = f.raw("value").cloned();
    if value.is_none() {
        f.error("value", "required", "is required (null removes the slot)");
    }
    f.finish()?;
    let slot = crate::memory::pin(
        &state,
        &run,
        name.as_deref().unwrap_or(""),
        value.as_ref().unwrap_or(&Value::Null),
    )
    .await?;
    remember(&state, &run.id, &webhook_id).await?;
    Ok(match slot {
        Some(p) => Json(crate::memory::pinned_dto(&p)).into_response(),
        None => Json(json!({"removed": true})).into_response(),
    })
}

#[utoipa::path(post, path = "/api/runs/{id}/documents", tag = "runner",
    operation_id = "announceRunDocument", summary = "Announce a document and get the signed URL to PUT its content to (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{name, mediaType, size}`"),
    responses((status = 201, description = "`{id, uploadPath}`: PUT the bytes to the run's platform origin + uploadPath", body = Object), (status = 400), (status = 401), (status = 409, description = "limit_reached or replay"), (status = 410), (status = 413)))]
pub async fn publish_document(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (run, webhook_id) = verify_or_return!(mutating(&state, addr, &id, &headers, &body).await);
    let v = json_object(&body)?;
    let mut f = Fields::new(&v, "");
    let name = f.string("name", true, 1, 255);
    let media_type = f
        .string("mediaType", false, 1, 255)
        .unwrap_or_else(|| "application/octet-stream".into());
    let size = match f.raw("size").map(Value::as_u64) {
        Some(Some(n)) => n,
        _ => {
            f.error("size", "required", "must be the document's size in bytes");
            0
        }
    };
    f.finish()?;
    let (doc, path) = crate::documents::begin_publish(
        &state,
        &run,
        name.as_deref().unwrap_or(""),
        &media_type,
        size,
    )
    .await?;
    remember(&state, &run.id, &webhook_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": doc.id, "name": doc.name, "uploadPath": path, "method": "PUT"})),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/runs/{id}/files/{upload}", tag = "runner",
    operation_id = "getRunInputFile", summary = "Download one of the run's input files (runner only)",
    security(("runSignature" = [])),
    params(("id" = String, Path), ("upload" = String, Path)),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 401), (status = 404), (status = 410)))]
pub async fn input_file(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path((id, upload)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (run, _, _) = verify_or_return!(verified(&state, addr, &id, &headers, b"").await);
    let (u, reader) = crate::documents::uploads::open_run_file(&state, &run, &upload).await?;
    let mut res = Response::new(Body::from_stream(reader.chunks));
    if let Ok(v) = u.media_type.parse() {
        res.headers_mut().insert(CONTENT_TYPE, v);
    }
    if let Ok(v) = reader.size.to_string().parse() {
        res.headers_mut().insert(CONTENT_LENGTH, v);
    }
    Ok(res)
}
