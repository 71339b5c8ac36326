//! `/mcp/<name>` of a stdio server: an rmcp Streamable HTTP server whose handler forwards `tools/list`
//! and `tools/call` to the server's stdio client.

use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServiceError};
use tokio::sync::watch;

use super::config::McpServer;
use super::Phase;

pub(crate) type Service = StreamableHttpService<ProxyHandler, LocalSessionManager>;

/// Forwards to one stdio server, once it has started.
#[derive(Clone)]
pub(crate) struct ProxyHandler {
    name: String,
    id: String,
    phase: watch::Receiver<Phase>,
}

impl ProxyHandler {
    async fn upstream(&self) -> Result<std::sync::Arc<super::Upstream>, ErrorData> {
        super::ready(&self.phase).await.map_err(|why| {
            ErrorData::internal_error(
                format!(
                    "MCP server {} ({}) is unavailable: {why}",
                    self.name, self.id
                ),
                None,
            )
        })
    }
}

fn upstream_error(name: &str, e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("MCP server {name}: {other}"), None),
    }
}

impl ServerHandler for ProxyHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new(
                format!("appstrate-sidecar/{}", self.name),
                env!("CARGO_PKG_VERSION"),
            ),
        )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let up = self.upstream().await?;
        up.list_tools(request)
            .await
            .map_err(|e| upstream_error(&self.name, e))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let up = self.upstream().await?;
        let tool = request.name.clone();
        let started = std::time::Instant::now();
        let result = up
            .call_tool_once(request)
            .await
            .map_err(|e| upstream_error(&self.name, e));
        // Names and timings only: arguments and results may hold anything.
        tracing::info!(server = %self.name, tool = %tool, ok = result.is_ok(),
            ms = started.elapsed().as_millis() as u64, "mcp tool call");
        result
    }
}

/// rmcp's Streamable HTTP server for one stdio server: stateless, JSON answers, sidecar host names.
pub(crate) fn service(server: &McpServer, phase: watch::Receiver<Phase>) -> Service {
    let handler = ProxyHandler {
        name: server.name.clone(),
        id: server.id.clone(),
        phase,
    };
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Default::default(),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None)
            .with_allowed_hosts(["sidecar", "localhost", "127.0.0.1"]),
    )
}
