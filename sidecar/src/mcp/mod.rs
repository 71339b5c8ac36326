//! MCP servers next to the credentials (issue 16).
//!
//! The sidecar launches each stdio MCP server of the run (with the credentials its companion
//! integration grants as environment variables, in the run workspace when the manifest asks) and
//! serves it to the agent over MCP Streamable HTTP at `/mcp/<name>`, proxying `tools/list` and
//! `tools/call` to the stdio client ([`proxy`]). A remote server (`url`) is forwarded to as plain HTTP
//! with the integration's header injected, under the SSRF and allowlist rules of `/proxy` ([`remote`]).
//! The agent never holds the credentials: they live in the server's environment or the injected header.

pub mod config;
mod proxy;
mod remote;
mod stdio;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::StatusCode;
use rmcp::service::RunningService;
use rmcp::RoleClient;
use tokio::sync::watch;

use crate::config::Validated;
use crate::http_util::error;
use crate::server::Shared;
use config::{McpServer, Transport};

pub use config::McpServerConfig;

/// A started stdio server's client.
pub(crate) type Upstream = RunningService<RoleClient, rmcp::model::ClientConfig>;

/// Where a stdio server is in its start.
#[derive(Clone)]
pub(crate) enum Phase {
    Starting,
    Ready(Arc<Upstream>),
    Failed(String),
}

/// Waits for a stdio server's start to end: its client, or why it is unavailable.
pub(crate) async fn ready(phase: &watch::Receiver<Phase>) -> Result<Arc<Upstream>, String> {
    let mut rx = phase.clone();
    let phase = rx
        .wait_for(|p| !matches!(p, Phase::Starting))
        .await
        .map(|p| p.clone())
        .unwrap_or_else(|_| Phase::Failed("the server's start was abandoned".into()));
    match phase {
        Phase::Ready(c) => Ok(c),
        Phase::Failed(why) => Err(why),
        Phase::Starting => Err("the server is still starting".into()),
    }
}

/// One server of the run.
pub(crate) struct Slot {
    pub server: McpServer,
    /// The stdio child, killed at teardown.
    child: Arc<std::sync::Mutex<Option<tokio::process::Child>>>,
    /// `/mcp/<name>` of a stdio server: rmcp's Streamable HTTP server over [`proxy::ProxyHandler`].
    service: Option<proxy::Service>,
}

/// The run's MCP servers.
pub(crate) struct Hub {
    slots: HashMap<String, Arc<Slot>>,
}

impl Hub {
    /// Starts every stdio server in the background; `workspace` is the run workspace (`workspaceDir`).
    pub fn start(servers: &[McpServer], workspace: Option<String>, start_timeout: Duration) -> Hub {
        let mut slots = HashMap::new();
        for server in servers {
            let child = Arc::new(std::sync::Mutex::new(None));
            let service = match &server.transport {
                Transport::Stdio { .. } => {
                    let (tx, rx) = watch::channel(Phase::Starting);
                    let task_server = server.clone();
                    let task_child = child.clone();
                    let ws = workspace.clone();
                    tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let phase = match stdio::start(
                            &task_server,
                            ws.as_deref(),
                            start_timeout,
                            &task_child,
                        )
                        .await
                        {
                            Ok(client) => {
                                tracing::info!(server = %task_server.name, id = %task_server.id,
                                    ms = started.elapsed().as_millis() as u64, "mcp server ready");
                                Phase::Ready(Arc::new(client))
                            }
                            Err(why) => {
                                tracing::warn!(server = %task_server.name, id = %task_server.id,
                                    reason = %why, "mcp server failed to start");
                                Phase::Failed(why)
                            }
                        };
                        let _ = tx.send(phase);
                    });
                    Some(proxy::service(server, rx))
                }
                Transport::Remote { .. } => None,
            };
            slots.insert(
                server.name.clone(),
                Arc::new(Slot {
                    server: server.clone(),
                    child,
                    service,
                }),
            );
        }
        Hub { slots }
    }

    /// Kills every stdio server and its process group (teardown).
    pub fn stop(&self) {
        for slot in self.slots.values() {
            if let Some(child) = slot
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                stdio::kill(child);
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ANY /mcp/{name}`: after the host and run-token checks (in `server.rs`).
pub(crate) async fn serve(
    st: Arc<Shared>,
    active: Arc<Validated>,
    name: &str,
    req: Request,
) -> Response {
    let Some(hub) = st.mcp() else {
        return unknown(name);
    };
    let Some(slot) = hub.slots.get(name).cloned() else {
        return unknown(name);
    };
    match &slot.server.transport {
        Transport::Stdio { .. } => {
            let Some(svc) = slot.service.clone() else {
                return unknown(name);
            };
            let (mut parts, body) = req.into_parts();
            // The run token stays here.
            parts.headers.remove(http::header::AUTHORIZATION);
            parts.headers.remove(http::header::PROXY_AUTHORIZATION);
            let req = http::Request::from_parts(parts, body);
            match tower::ServiceExt::oneshot(svc, req).await {
                Ok(resp) => resp.map(Body::new),
                Err(never) => match never {},
            }
        }
        Transport::Remote { url, integration } => {
            let integ = active.integrations.get(*integration);
            remote::forward(&st, &active, &slot.server, url, integ, req).await
        }
    }
}

fn unknown(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_mcp_server",
        format!("MCP server `{name}` is not configured for this run"),
    )
}
