//! Fake MCP servers for the MCP tests (issue 16), built with `rmcp`'s server side.
//!
//! * [`FakeTools`]: the tool set of the stdio binary `fake-mcp-stdio` (`echo`, `write_file` into its
//!   working directory, `credential_digest` of an environment variable) and of [`FakeMcpHttp`].
//! * [`FakeMcpHttp`]: a Streamable HTTP MCP server on `127.0.0.1:0` at `/mcp` that refuses (401) any
//!   request without the expected credential header, and records the header values it saw.
//! * [`stdio_bin`] and [`stdio_package`]: the binary's path and an `mcp-server` AFPS archive for it.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The variable `credential_digest` reads unless `FAKE_MCP_CREDENTIAL_VAR` names another.
pub const DEFAULT_CREDENTIAL_VAR: &str = "API_TOKEN";

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// The text to send back.
    pub text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct WriteArgs {
    /// A relative path inside the server's working directory.
    pub path: String,
    /// The file's content.
    pub content: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct NoArgs {}

/// The fake tools.
#[derive(Debug, Clone)]
pub struct FakeTools {
    tool_router: ToolRouter<Self>,
    /// Where `write_file` writes.
    dir: PathBuf,
    /// Name of the variable `credential_digest` reads.
    credential_var: String,
    /// What `credential_digest` reports when the variable is absent in the environment (HTTP fake).
    credential_value: Option<String>,
}

/// `sha256:<hex>` of a value (what `credential_digest` answers, so a test compares digests).
pub fn digest(value: &str) -> String {
    format!("sha256:{}", hex_lower(&Sha256::digest(value.as_bytes())))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tool_router]
impl FakeTools {
    /// Tools writing into `dir`, reading the credential from the variable `credential_var`.
    pub fn new(dir: PathBuf, credential_var: String) -> Self {
        Self {
            tool_router: Self::tool_router(),
            dir,
            credential_var,
            credential_value: None,
        }
    }

    #[tool(description = "Echo the given text back.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        format!("echo: {text}")
    }

    #[tool(description = "Write a file (relative path) into the shared workspace.")]
    fn write_file(
        &self,
        Parameters(WriteArgs { path, content }): Parameters<WriteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let rel = Path::new(&path);
        if path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "path must be relative without `..`: {path}"
            ))]));
        }
        let target = self.dir.join(rel);
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match std::fs::write(&target, content.as_bytes()) {
            Ok(()) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                "wrote {} bytes to {path}",
                content.len()
            ))])),
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "cannot write {path}: {e}"
            ))])),
        }
    }

    #[tool(
        description = "Report whether the API credential is present: its length and SHA-256, never the value."
    )]
    fn credential_digest(&self, Parameters(NoArgs {}): Parameters<NoArgs>) -> String {
        let value = std::env::var(&self.credential_var)
            .ok()
            .or_else(|| self.credential_value.clone());
        match value {
            Some(v) if !v.is_empty() => json!({
                "present": true, "variable": self.credential_var, "length": v.len(), "digest": digest(&v)
            })
            .to_string(),
            _ => json!({"present": false, "variable": self.credential_var}).to_string(),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FakeTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("fake-mcp", "1.0.0"))
    }
}

/// The `fake-mcp-stdio` binary built next to the test executables (`target/<profile>/`).
/// `FAKE_MCP_STDIO_BIN` overrides it.
pub fn stdio_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FAKE_MCP_STDIO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("fake-mcp-stdio")
}

/// An `mcp-server` manifest for the stdio fake: a binary server whose command is `command`.
pub fn stdio_manifest(name: &str, command: &str, integration: Option<&str>) -> Value {
    let mut m = json!({
        "schema_version": "0.1",
        "name": name,
        "version": "1.0.0",
        "type": "mcp-server",
        "display_name": "Fake MCP",
        "description": "Echoes, writes files, reports a credential digest",
        "server": {
            "type": "binary",
            "entry_point": "server/fake-mcp-stdio",
            "mcp_config": {"command": command, "args": ["--stdio"]}
        },
        "tools": [
            {"name": "echo", "description": "Echo the given text back."},
            {"name": "write_file", "description": "Write a file into the shared workspace."},
            {"name": "credential_digest", "description": "Report the credential's digest."}
        ],
        "_meta": {"dev.appstrate/workspace": {"mount": "/workspace", "access": "read-write"}}
    });
    if let Some(id) = integration {
        m["dependencies"] = json!({"integrations": {id: "*"}});
    }
    m
}

/// Records what [`FakeMcpHttp`] received.
#[derive(Debug, Default)]
struct Seen {
    /// The expected header's value on each request (`""` when absent).
    header_values: Vec<String>,
    refused: usize,
}

/// A Streamable HTTP MCP server at `http://127.0.0.1:P/mcp` that requires `header: value`.
pub struct FakeMcpHttp {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMcpHttp {
    /// Starts the server; requests without `header_name: expected` get 401 and are counted as refused.
    /// `credential_digest` reports the digest of the value it received.
    pub async fn start(header_name: &str, expected: &str) -> FakeMcpHttp {
        use rmcp::transport::streamable_http_server::{
            session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let expected_value = expected.to_string();
        let tools = {
            let mut t = FakeTools::new(std::env::temp_dir(), "REMOTE_CREDENTIAL".into());
            t.credential_value = Some(expected_value.clone());
            t
        };
        let service: StreamableHttpService<FakeTools, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(tools.clone()),
                Default::default(),
                StreamableHttpServerConfig::default().with_sse_keep_alive(None),
            );
        let name = axum::http::HeaderName::from_bytes(header_name.as_bytes()).expect("header");
        let check = {
            let seen = seen.clone();
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let seen = seen.clone();
                let name = name.clone();
                let expected = expected_value.clone();
                async move {
                    let got = req
                        .headers()
                        .get(&name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let ok = got == expected;
                    {
                        let mut s = seen.lock().unwrap();
                        s.header_values.push(got);
                        if !ok {
                            s.refused += 1;
                        }
                    }
                    if !ok {
                        return axum::response::IntoResponse::into_response((
                            axum::http::StatusCode::UNAUTHORIZED,
                            "missing or wrong credential",
                        ));
                    }
                    next.run(req).await
                }
            }
        };
        let router = axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(check));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeMcpHttp { addr, seen, task }
    }

    /// `http://127.0.0.1:P/mcp`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The expected header's value on each request received (`""` when absent).
    pub fn header_values(&self) -> Vec<String> {
        self.seen.lock().unwrap().header_values.clone()
    }

    /// Requests refused for a missing or wrong header.
    pub fn refused(&self) -> usize {
        self.seen.lock().unwrap().refused
    }
}

impl Drop for FakeMcpHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
