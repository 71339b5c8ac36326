//! MCP tools (issue 16). The run's MCP servers run in the sidecar, next to the credentials; the runner is
//! an rmcp client of each one's Streamable HTTP endpoint `<SIDECAR_URL>/mcp/<name>` (the run token as
//! `Authorization: Bearer`). At start it lists every server's tools and offers them to the model as
//! `<name>__<tool>` with their input schemas; a call goes to the server and its content comes back as
//! text. A server that cannot be listed fails the run, naming the server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ContentBlock, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Map, Value};

use crate::llm::ToolSpec;
use crate::tools::ToolOutcome;

/// The model sees at most this much of a tool result.
const RESULT_LIMIT: usize = 32 * 1024;
/// A tool call's run log event keeps at most this much of the result.
const LOG_LIMIT: usize = 512;
/// Connecting to a server and listing its tools (the sidecar also bounds the server's start).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(45);
/// One tool call.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Tool names the model APIs accept: `^[a-zA-Z0-9_-]{1,64}$`.
const NAME_LIMIT: usize = 64;

/// One MCP server of `AGENT_MCP_SERVERS`: `{name, id, description?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerRef {
    pub name: String,
    pub id: String,
    pub description: String,
}

/// Parses `AGENT_MCP_SERVERS` (a JSON array).
pub fn parse_servers(raw: &str) -> Result<Vec<ServerRef>, String> {
    let bad = |why: String| format!("AGENT_MCP_SERVERS {why}");
    let v: Value = serde_json::from_str(raw).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
    let items = v
        .as_array()
        .ok_or_else(|| bad("must be a JSON array".into()))?;
    let mut out: Vec<ServerRef> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let s = |k: &str| {
            item.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let name = s("name");
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad(format!(
                "[{i}].name must be 1 to 32 of a-z, 0-9 and `_`"
            )));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(format!("[{i}].name {name:?} is used twice")));
        }
        out.push(ServerRef {
            id: s("id"),
            description: s("description"),
            name,
        });
    }
    Ok(out)
}

type Client = RunningService<RoleClient, ClientConfig>;

struct Server {
    name: String,
    client: Client,
}

/// An offered tool: the server it belongs to and its own name.
struct Offered {
    server: usize,
    tool: String,
    spec: ToolSpec,
}

/// The MCP tools of the run.
pub struct McpTools {
    servers: Vec<Server>,
    tools: Vec<Offered>,
    by_name: HashMap<&'static str, usize>,
}

/// `<server>__<tool>`, with characters the model APIs refuse replaced by `_`, at most 64 characters.
fn offered_name(server: &str, tool: &str) -> String {
    let mut n: String = format!("{server}__{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    n.truncate(NAME_LIMIT);
    n
}

fn truncate(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), true)
}

impl McpTools {
    /// Connects to every server through the sidecar and lists its tools. The summary (per server: tool
    /// count and milliseconds) goes into the `mcp servers ready` progress event.
    pub async fn connect(
        servers: &[crate::mcp::ServerRef],
        sidecar_url: &str,
        token: &str,
    ) -> Result<(McpTools, Value), String> {
        let mut out = McpTools {
            servers: Vec::new(),
            tools: Vec::new(),
            by_name: HashMap::new(),
        };
        let mut summary = Vec::new();
        for s in servers {
            let started = Instant::now();
            let label = if s.id.is_empty() {
                format!("`{}`", s.name)
            } else {
                format!("`{}` ({})", s.name, s.id)
            };
            let listed = tokio::time::timeout(LIST_TIMEOUT, async {
                let config = StreamableHttpClientTransportConfig::with_uri(format!(
                    "{sidecar_url}/mcp/{}",
                    s.name
                ))
                .auth_header(token.to_string());
                let transport = StreamableHttpClientTransport::from_config(config);
                let info = ClientConfig::new(
                    ClientCapabilities::default(),
                    Implementation::new("appstrate-runner", env!("CARGO_PKG_VERSION")),
                );
                let client = info
                    .serve(transport)
                    .await
                    .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                let tools = client
                    .list_all_tools()
                    .await
                    .map_err(|e| format!("listing its tools failed: {e}"))?;
                Ok::<_, String>((client, tools))
            })
            .await;
            let (client, tools) = match listed {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(format!("MCP server {label} is unavailable: {e}")),
                Err(_) => {
                    return Err(format!(
                        "MCP server {label} did not list its tools within {} s",
                        LIST_TIMEOUT.as_secs()
                    ))
                }
            };
            let idx = out.servers.len();
            let count = tools.len();
            for t in tools {
                let name = offered_name(&s.name, &t.name);
                // The process handles one run: the few tool names live as long as it does.
                let name: &'static str = Box::leak(name.into_boxed_str());
                if out.by_name.contains_key(name) {
                    continue;
                }
                let desc = t.description.as_deref().unwrap_or("").to_string();
                let description = if s.description.is_empty() {
                    format!("[MCP server {}] {desc}", s.name)
                } else {
                    format!("[MCP server {}: {}] {desc}", s.name, s.description)
                };
                out.by_name.insert(name, out.tools.len());
                out.tools.push(Offered {
                    server: idx,
                    tool: t.name.to_string(),
                    spec: ToolSpec {
                        name,
                        description,
                        parameters: Value::Object((*t.input_schema).clone()),
                    },
                });
            }
            summary.push(json!({"name": s.name, "id": s.id, "tools": count,
                                "ms": started.elapsed().as_millis() as u64}));
            out.servers.push(Server {
                name: s.name.clone(),
                client,
            });
        }
        Ok((out, json!({"servers": summary})))
    }

    /// The tool definitions, in listing order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec.clone()).collect()
    }

    /// Calls `name` if it is one of the MCP tools (`None` otherwise).
    pub async fn call(&self, name: &str, args: &Map<String, Value>) -> Option<ToolOutcome> {
        let t = &self.tools[*self.by_name.get(name)?];
        let server = &self.servers[t.server];
        let started = Instant::now();
        let params = CallToolRequestParams::new(t.tool.clone()).with_arguments(args.clone());
        let result = tokio::time::timeout(CALL_TIMEOUT, server.client.call_tool(params)).await;
        let (text, is_error) = match result {
            Ok(Ok(r)) => (
                render(&r.content, r.structured_content.as_ref()),
                r.is_error == Some(true),
            ),
            Ok(Err(e)) => (
                format!("MCP server {} failed the call: {e}", server.name),
                true,
            ),
            Err(_) => (
                format!(
                    "MCP server {} did not answer within {} s",
                    server.name,
                    CALL_TIMEOUT.as_secs()
                ),
                true,
            ),
        };
        let (content, cut) = truncate(&text, RESULT_LIMIT);
        let content = if cut {
            format!(
                "{content}\n[truncated: the result had {} bytes]",
                text.len()
            )
        } else {
            content
        };
        let (logged, log_cut) = truncate(&text, LOG_LIMIT);
        let event = json!({
            "message": format!("mcp {} {}", server.name, t.tool),
            "data": {"server": server.name, "tool": t.tool, "isError": is_error,
                     "ms": started.elapsed().as_millis() as u64,
                     "result": logged, "truncated": log_cut},
        });
        Some(ToolOutcome {
            content,
            is_error,
            output: None,
            event: Some(("appstrate.progress", event)),
        })
    }
}

/// A tool result as text for the model: text blocks as they are, other blocks described.
fn render(content: &[ContentBlock], structured: Option<&Value>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for block in content {
        let v = serde_json::to_value(block).unwrap_or(Value::Null);
        match v.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(v["text"].as_str().unwrap_or("").to_string()),
            Some("resource") => match v["resource"]["text"].as_str() {
                Some(t) => parts.push(t.to_string()),
                None => parts.push(format!("[resource {}]", v["resource"]["uri"])),
            },
            Some("resource_link") => parts.push(format!("[resource link {}]", v["uri"])),
            Some(kind) => parts.push(format!(
                "[{kind} content, {}]",
                v.get("mimeType")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown type")
            )),
            None => {}
        }
    }
    if parts.is_empty() {
        if let Some(s) = structured {
            return s.to_string();
        }
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse() {
        let s =
            parse_servers(r#"[{"name":"files","id":"@t/files","description":"Files"}]"#).unwrap();
        assert_eq!(s[0].name, "files");
        assert_eq!(s[0].description, "Files");
        for (raw, needle) in [
            ("{}", "JSON array"),
            ("[{\"name\":\"Bad\"}]", "[0].name"),
            ("[{\"name\":\"a\"},{\"name\":\"a\"}]", "used twice"),
            ("nope", "not valid JSON"),
        ] {
            let e = parse_servers(raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }

    #[test]
    fn names_and_rendering() {
        assert_eq!(offered_name("files", "write_file"), "files__write_file");
        assert_eq!(offered_name("gh", "repo.get/x"), "gh__repo_get_x");
        assert_eq!(offered_name("a", &"t".repeat(100)).len(), 64);
        let blocks = vec![ContentBlock::text("one"), ContentBlock::text("two")];
        assert_eq!(render(&blocks, None), "one\ntwo");
        assert_eq!(render(&[], Some(&json!({"a": 1}))), "{\"a\":1}");
        let (t, cut) = truncate(&"é".repeat(10), 5);
        assert!(cut && t.len() <= 5);
    }
}
