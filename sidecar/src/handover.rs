//! `GET /agent-config`: the run configuration of a waiting runner (a run slot's agent, see
//! docs/docker.md "Run slots"). The agent container is created before its run exists, so its
//! environment holds nothing run-specific; once the platform has configured this sidecar with an
//! `agent` part, the runner gets that part here, once, and only from the agent's own address. The
//! sidecar then forgets it.
//!
//! The request long-polls (`?wait=SECONDS`, default 25, at most 60) while the sidecar is not
//! configured yet, and answers 204 when the wait ends first, so that a runner waiting in its slot gets
//! its configuration the moment the platform posts it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use http::{header, StatusCode};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::http_util::error;

/// The address of the TCP peer of an API request (inserted per connection by the server).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

enum Stage {
    /// No `/configure` yet.
    Unconfigured,
    /// Configured without an agent part (a fresh run: the runner has its environment).
    NoAgent,
    /// Waiting for the agent at `address`.
    Pending { address: IpAddr, body: Bytes },
    /// Handed over and forgotten.
    Done,
}

pub(crate) struct Handover {
    state: Mutex<Stage>,
    changed: watch::Sender<()>,
}

impl Handover {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(Stage::Unconfigured),
            changed: watch::channel(()).0,
        }
    }

    /// Called once the configuration was accepted.
    pub(crate) fn configured(&self, address: Option<IpAddr>, agent: Option<&AgentConfig>) {
        let next = match (address, agent) {
            (Some(address), Some(agent)) => {
                let body = serde_json::json!({"env": agent.env});
                Stage::Pending {
                    address,
                    body: Bytes::from(body.to_string()),
                }
            }
            _ => Stage::NoAgent,
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = next;
        self.changed.send_replace(());
    }

    /// Whether the agent part was handed over (reported by `/health`).
    pub(crate) fn handed_over(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            Stage::Done
        )
    }

    /// One attempt: `None` while unconfigured.
    fn take(&self, peer: IpAddr) -> Option<Response> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match &*state {
            Stage::Unconfigured => return None,
            Stage::NoAgent => error(
                StatusCode::NOT_FOUND,
                "no_agent_config",
                "this sidecar holds no agent configuration",
            ),
            Stage::Done => error(
                StatusCode::GONE,
                "already_handed_over",
                "the run configuration was already handed over",
            ),
            Stage::Pending { address, .. } if *address != peer => {
                tracing::warn!(%peer, "agent configuration refused to another address");
                error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the run configuration is only handed to the run's agent",
                )
            }
            Stage::Pending { body, .. } => {
                let body = body.clone();
                *state = Stage::Done;
                tracing::info!(%peer, "agent configuration handed over");
                (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    body,
                )
                    .into_response()
            }
        };
        Some(answer)
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct WaitQuery {
    wait: Option<u64>,
}

/// Longest long-poll a request may ask for.
const MAX_WAIT_SECS: u64 = 60;

pub(crate) async fn agent_config(
    State(st): State<std::sync::Arc<crate::server::Shared>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<WaitQuery>,
) -> Response {
    let Some(Extension(Peer(peer))) = peer else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the caller's address is unknown",
        );
    };
    let peer = peer.ip().to_canonical();
    let handover = &st.handover;
    let mut changed = handover.changed.subscribe();
    let wait = Duration::from_secs(q.wait.unwrap_or(25).min(MAX_WAIT_SECS));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Subscribed before looking, so a configuration posted in between wakes this request.
        if let Some(answer) = handover.take(peer) {
            return answer;
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => continue,
            _ => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}
