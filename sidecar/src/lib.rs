//! Per-run credential-injecting proxy (SPEC §14).
//!
//! The sidecar holds the run's secrets (the real model key and the rendered integration credential
//! headers) so that the agent never sees them. It serves:
//! * an HTTP API (`/health`, `/configure`, `/llm/{provider}/…`, `/proxy`), see [`server`];
//! * a forward proxy restricted to the run's egress allowlist, see [`server::Sidecar`];
//! * the SSRF guard shared with the API server, see [`ssrf`];
//! * the run's MCP servers at `/mcp/<name>`, see [`mcp`].
//!
//! In process mode the API server runs it in-process ([`Sidecar::start`] on `127.0.0.1:0`, then
//! [`RunningSidecar::configure`]); in Docker mode it is the `appstrate-sidecar` binary.

pub mod allowlist;
mod auth;
pub mod config;
pub mod delivery;
mod forward;
mod handover;
mod http_util;
pub mod mcp;
mod refresh;
pub mod server;
pub mod ssrf;
mod trace;

pub use config::{
    AgentConfig, HeaderConfig, IntegrationConfig, LlmConfig, LlmProvider, Secret, SidecarConfig,
};
pub use delivery::render_header;
pub use mcp::McpServerConfig;
pub use server::{ConfigureError, RunningSidecar, Sidecar, SidecarOptions, Timeouts};
