//! What the instance knows of itself: its health document (`GET /health`, SPEC §22.3), also shown on
//! the dashboard's instance page.

use std::time::Instant;

use serde_json::{json, Value};

use crate::config::RunAdapterKind;
use crate::state::AppState;

/// Whether the instance is healthy (database, storage and Redis answer), and the health document: status,
/// versions, tier, adapter per concern, checks with latencies, and the Docker pool state.
pub async fn health(state: &AppState) -> (bool, Value) {
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
    (healthy, body)
}
