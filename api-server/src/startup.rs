//! Boot (§5.2) and graceful shutdown (§5.3). The port is bound first and answers 503 `starting` until
//! every boot step has run; then the real router takes over.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::config::Config;
use crate::http::error::{render_problem, ApiError};
use crate::infra::{Infra, InfraError};
use crate::state::{AppState, AppStateInner};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("PORT {0} is already in use; stop the other process or set PORT to a free port (e.g. PORT=3100)")]
    PortInUse(u16),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error(transparent)]
    Infra(#[from] InfraError),
}

impl BootError {
    /// The process exit code for this failure (§5.2).
    pub fn exit_code(&self) -> i32 {
        match self {
            BootError::PortInUse(_) => 3,
            BootError::Bind(..) => 3,
            BootError::Infra(_) => 1,
        }
    }
}

/// Routes requests to the real router once boot has finished.
#[derive(Default)]
struct Gate {
    router: OnceLock<Router>,
}

async fn gate(State(gate): State<Arc<Gate>>, req: Request) -> Response {
    match gate.router.get() {
        Some(router) => router.clone().oneshot(req).await.into_response(),
        None => starting(req.uri().path()),
    }
}

fn starting(path: &str) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::new_v4());
    let mut res = if path == "/health" {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/json")],
            r#"{"status":"starting"}"#,
        )
            .into_response()
    } else {
        let err = ApiError::unavailable("starting", "The server is starting; retry in a moment");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/problem+json")],
            render_problem(&err, &request_id).to_string(),
        )
            .into_response()
    };
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

/// A running server.
pub struct Application {
    pub port: u16,
    pub state: AppState,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Binds `host:PORT` (the port of `config`; 0 picks a free one).
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, BootError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            BootError::PortInUse(port)
        } else {
            BootError::Bind(addr, e)
        }
    })
}

impl Application {
    /// Runs every boot step on an already-bound listener and opens the gate.
    pub async fn start(config: Config, listener: TcpListener) -> Result<Application, BootError> {
        let boot_started = Instant::now();
        let port = listener
            .local_addr()
            .map_err(|e| BootError::Bind("listener".into(), e))?
            .port();
        let gate_state = Arc::new(Gate::default());
        let (stop, stop_rx) = watch::channel(false);
        let gate_router = Router::new().fallback(gate).with_state(gate_state.clone());
        let limits = crate::server::Limits {
            max_connections: config.http_max_connections as usize,
            header_read_timeout: Duration::from_secs(config.http_header_read_timeout_seconds),
            keepalive_timeout: Duration::from_secs(config.http_keepalive_timeout_seconds),
        };
        let server = tokio::spawn(crate::server::serve(listener, gate_router, limits, stop_rx));

        let infra = match Infra::connect(&config).await {
            Ok(i) => i,
            Err(e) => {
                let _ = stop.send(true);
                return Err(e.into());
            }
        };
        let sidecar_metrics = crate::metrics::SidecarMetrics::default();
        let adapter =
            match crate::infra::run_adapter::select(&config, sidecar_metrics.clone()).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = stop.send(true);
                    return Err(e.into());
                }
            };
        if config.redis_url.is_some() && config.database_url.is_none() {
            tracing::warn!(
                "REDIS_URL without DATABASE_URL: running several instances needs PostgreSQL"
            );
        }
        tracing::info!("infrastructure tier={}", config.tier());

        let state = AppStateInner::with_adapter(config, infra, adapter, sidecar_metrics);
        crate::packages::sync_system_packages(&state).await;
        crate::runs::runtime::cleanup_orphans(&state).await;
        // Docker mode: images, the egress network and the sidecar pool (steps 7–8).
        state.runs.adapter.prepare().await;
        crate::runs::runtime::start_workers(&state).await;
        crate::schedules::start(&state).await;
        crate::http::idempotency::start_sweeper(&state);
        let router = crate::http::router(state.clone());
        let _ = gate_state.router.set(router);
        tracing::info!(
            port,
            startup_ms = boot_started.elapsed().as_millis() as u64,
            "server ready"
        );
        Ok(Application {
            port,
            state,
            stop,
            server,
        })
    }

    /// Graceful shutdown (§5.3). Returns false when the grace period ran out first.
    pub async fn shutdown(self) -> bool {
        let grace = Duration::from_secs(self.state.config.shutdown_grace_seconds);
        tracing::info!("shutting down");
        self.state.begin_shutdown();
        crate::runs::runtime::shutdown(&self.state, grace).await;
        self.state.runs.adapter.shutdown().await;
        let lost = self.state.infra.queue.stop().await;
        if lost > 0 {
            tracing::warn!(jobs = lost, "in-process delayed jobs dropped at shutdown");
        }
        let _ = self.stop.send(true);
        let done = match tokio::time::timeout(grace + Duration::from_secs(10), self.server).await {
            Ok(_) => {
                tracing::info!("shutdown complete");
                true
            }
            Err(_) => {
                tracing::error!("shutdown grace period exceeded");
                false
            }
        };
        // Connections close last (SPEC §5.3 step 5); a connection still held by a stuck task is not waited
        // for longer than 5 s.
        if tokio::time::timeout(Duration::from_secs(5), self.state.infra.db.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still in use at shutdown");
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;

    /// Until every boot step has run, `/health` answers 503 `starting` with `Retry-After: 1` and every other
    /// route a `starting` problem; then the real router takes over.
    #[tokio::test]
    async fn the_gate_answers_starting_until_boot_completes() {
        let gate_state = Arc::new(Gate::default());
        let app = Router::new().fallback(gate).with_state(gate_state.clone());
        let call = |path: &str| {
            app.clone()
                .oneshot(Request::builder().uri(path).body(Body::empty()).unwrap())
        };
        let res = call("/health").await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        assert!(res.headers()["request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_"));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"status":"starting"}"#);
        let res = call("/api/end-users").await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["code"], "starting");

        let _ = gate_state
            .router
            .set(Router::new().route("/health", axum::routing::get(|| async { "up" })));
        let res = call("/health").await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
