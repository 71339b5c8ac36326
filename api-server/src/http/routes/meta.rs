//! `/health`, `/metrics`, `/api/openapi.json`, the interactive reference `/api/docs` and `/llms.txt`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::RunAdapterKind;
use crate::http::error::ApiError;
use crate::state::AppState;

/// `GET /health` (§22.3).
#[utoipa::path(get, path = "/health", tag = "meta",
    operation_id = "getHealth", summary = "Health of the server and its infrastructure",
    security(()),
    responses((status = 200, description = "Healthy or degraded", body = crate::http::openapi::Health), (status = 503, description = "Unhealthy or starting (the same document, not a problem)", body = crate::http::openapi::Health)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let infra = &state.infra;
    let t = Instant::now();
    let db_ok = match infra.db.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "database health check failed");
            false
        }
    };
    let db_ms = t.elapsed().as_millis() as u64;
    let storage_ok = state.storage_healthy().await;
    let redis_check = match &infra.redis {
        Some(redis) => {
            let t = Instant::now();
            let ok = match redis.ping().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "redis health check failed");
                    false
                }
            };
            Some((ok, t.elapsed().as_millis() as u64))
        }
        None => None,
    };
    let status_of = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    let healthy = db_ok && storage_ok && redis_check.is_none_or(|(ok, _)| ok);
    let docker = state.config.run_adapter == RunAdapterKind::Docker;
    let engine = state.runs.adapter.check().await;
    let degraded = matches!(engine, Some(Err(_)));
    let pool = state.runs.adapter.pool_status();
    let mut body = json!({
        "status": if !healthy { "unhealthy" } else if degraded { "degraded" } else { "healthy" },
        "version": {"app": state.config.app_version, "commit": state.config.git_sha},
        "uptime_ms": state.started_at.elapsed().as_millis() as u64,
        "tier": state.config.tier(),
        "isolation": if docker { "container" } else { "none" },
        "bash": state.runs.adapter.bash(),
        "adapters": {
            "database": infra.db.kind(),
            "queue": infra.queue.kind(),
            "pubsub": infra.pubsub.kind(),
            "rate_limiter": infra.rate_limiter.kind(),
            "storage": infra.storage.kind(),
            "run_adapter": if docker { "docker" } else { "process" },
        },
        "checks": {
            "database": {"status": status_of(db_ok), "latency_ms": db_ms},
            "storage": {"status": status_of(storage_ok)},
        },
        // The seed's name, kept for its clients (the operator): the ready slots hold the sidecars.
        "sidecar_pool": {"enabled": pool.enabled, "desired": pool.desired, "ready": pool.ready},
        "run_slots": {
            "enabled": pool.enabled,
            "desired": pool.desired,
            "ready": pool.ready,
            "creating": pool.creating,
            "failed": pool.failed,
        },
    });
    if let Some((ok, ms)) = redis_check {
        body["checks"]["redis"] = json!({"status": status_of(ok), "latency_ms": ms});
    }
    match engine {
        Some(Ok(())) => body["checks"]["docker"] = json!({"status": "healthy"}),
        Some(Err(why)) => {
            tracing::warn!(error = %why, "Docker health check failed");
            body["checks"]["docker"] = json!({"status": "unhealthy", "error": why});
        }
        None => {}
    }
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut res = (code, Json(body)).into_response();
    // The 503 carries the same document (SPEC §22.3), not a problem.
    res.extensions_mut()
        .insert(crate::http::middleware::OwnErrorBody);
    res
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    operation_id = "getMetrics", summary = "Prometheus metrics",
    security(()),
    responses((status = 200, description = "Prometheus text", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The OpenAPI document, its ETag and its `/llms.txt` rendering, built once per server.
pub struct OpenApiDoc {
    json: String,
    etag: String,
    llms: String,
}

/// Built once per public URL (a process serves one; tests may build several servers).
fn document(state: &AppState) -> Arc<OpenApiDoc> {
    static DOCS: OnceLock<Mutex<HashMap<String, Arc<OpenApiDoc>>>> = OnceLock::new();
    let docs = DOCS.get_or_init(Default::default);
    let mut docs = docs.lock().unwrap_or_else(|e| e.into_inner());
    let key = state.config.app_url.clone();
    docs.entry(key)
        .or_insert_with(|| {
            let json = crate::http::openapi_json(&state.config.app_url);
            let etag = format!(
                "\"{}\"",
                &hex::encode(Sha256::digest(json.as_bytes()))[..32]
            );
            let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let llms = crate::http::openapi::llms_txt(&value, &state.config.app_url);
            Arc::new(OpenApiDoc { json, etag, llms })
        })
        .clone()
}

/// `GET /api/openapi.json`: OpenAPI 3.1 with an `ETag`; 304 on `If-None-Match`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    operation_id = "getOpenApiDocument", summary = "This OpenAPI document",
    security(()),
    responses((status = 200, description = "OpenAPI document", body = Object), (status = 304, description = "Not modified")))]
pub async fn openapi(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let doc = document(&state);
    let matches = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == doc.etag || t.trim() == "*")
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, [(ETAG, doc.etag.clone())]).into_response();
    }
    (
        [
            (CONTENT_TYPE, "application/json".to_string()),
            (ETAG, doc.etag.clone()),
        ],
        doc.json.clone(),
    )
        .into_response()
}

/// `GET /llms.txt`: the API for language models (llmstxt.org): a summary, links to the full references
/// and one line per operation.
#[utoipa::path(get, path = "/llms.txt", tag = "meta",
    operation_id = "getLlmsTxt", summary = "The API summarised for language models",
    security(()),
    responses((status = 200, description = "Markdown", body = String, content_type = "text/markdown")))]
pub async fn llms_txt(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, "text/markdown; charset=utf-8")],
        document(&state).llms.clone(),
    )
        .into_response()
}

const SWAGGER_UI_JS: &[u8] = include_bytes!("../../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &[u8] = include_bytes!("../../../assets/swagger-ui/swagger-ui.css");
const DOCS_INIT_JS: &[u8] = include_bytes!("../../../assets/swagger-ui/init.js");
const DOCS_HTML: &[u8] = include_bytes!("../../../assets/swagger-ui/index.html");

/// `GET /api/docs`: the interactive reference (Swagger UI embedded in the binary, nothing from a CDN).
#[utoipa::path(get, path = "/api/docs", tag = "meta",
    operation_id = "getApiDocs", summary = "Interactive API reference",
    security(()),
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub async fn api_docs() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            // Scripts and styles from this origin only; Swagger UI sets inline styles and data: images.
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
            ),
        ],
        DOCS_HTML,
    )
        .into_response()
}

/// `GET /api/docs/{file}`: the reference's scripts and styles.
#[utoipa::path(get, path = "/api/docs/{file}", tag = "meta",
    operation_id = "getApiDocsAsset", summary = "A script or style sheet of the API reference",
    security(()),
    params(("file" = String, Path, description = "swagger-ui-bundle.js, swagger-ui.css or init.js")),
    responses((status = 200, description = "The file", content(("text/javascript"), ("text/css"))),
              (status = 404)))]
pub async fn api_docs_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (content_type, body) = match file.as_str() {
        "swagger-ui-bundle.js" => ("text/javascript; charset=utf-8", SWAGGER_UI_JS),
        "init.js" => ("text/javascript; charset=utf-8", DOCS_INIT_JS),
        "swagger-ui.css" => ("text/css; charset=utf-8", SWAGGER_UI_CSS),
        _ => {
            return Err(ApiError::not_found(format!(
                "No such file: /api/docs/{file}"
            )))
        }
    };
    Ok((
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response())
}
