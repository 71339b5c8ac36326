//! `/health`, `/metrics` and `/api/openapi.json`.

use std::time::Instant;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::RunAdapterKind;
use crate::state::AppState;

/// `GET /health` (§22.3).
#[utoipa::path(get, path = "/health", tag = "meta",
    responses((status = 200, description = "Healthy or degraded"), (status = 503, description = "Unhealthy or starting")))]
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
        "sidecar_pool": {"enabled": pool.enabled, "desired": pool.desired, "ready": pool.ready},
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
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text")))]
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

/// The OpenAPI document and its ETag, built once per server.
pub struct OpenApiDoc {
    json: String,
    etag: String,
}

fn document(state: &AppState) -> &OpenApiDoc {
    state.openapi.get_or_init(|| {
        let json = crate::http::openapi_json(&state.config.app_url);
        let etag = format!(
            "\"{}\"",
            &hex::encode(Sha256::digest(json.as_bytes()))[..32]
        );
        OpenApiDoc { json, etag }
    })
}

/// `GET /api/openapi.json`: OpenAPI 3.1 with an `ETag`; 304 on `If-None-Match`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI document"), (status = 304, description = "Not modified")))]
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
