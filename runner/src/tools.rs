//! The agent's tools (§15.3): `output`, `log`, with integrations `api_call` through the sidecar, and the
//! platform's memory and document tools (`platform.rs`), and the workspace's file tools and `bash`
//! (`workspace/`). Each group lists its definitions and answers the calls addressed to it by name.

use crate::config::Integration;
use crate::llm::{parse_args, ToolCall, ToolSpec};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The model sees at most this much of an `api_call` response body.
const API_BODY_LIMIT: usize = 32 * 1024;
const API_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a tool call produced.
#[derive(Debug, PartialEq)]
pub struct ToolOutcome {
    /// Text returned to the model.
    pub content: String,
    pub is_error: bool,
    /// Set by a successful `output` call.
    pub output: Option<Value>,
    /// Event to emit for the call (type, data), e.g. `log.written`.
    pub event: Option<(&'static str, Value)>,
}

impl ToolOutcome {
    pub fn err(content: impl Into<String>) -> Self {
        ToolOutcome {
            content: content.into(),
            is_error: true,
            output: None,
            event: None,
        }
    }
}

pub struct Tools {
    /// The manifest's output schema, when it declares one.
    pub output_schema: Option<Value>,
    validator: Option<jsonschema::Validator>,
    integrations: Vec<Integration>,
    sidecar_url: String,
    /// The run's sidecar token (`MODEL_API_KEY`), sent as `Proxy-Authorization: Bearer` on `/proxy`.
    sidecar_token: String,
    http: reqwest::Client,
    /// Memory and document tools, when the platform answered the run's context.
    platform: Option<crate::platform::PlatformTools>,
    /// File tools and `bash` on the run's workspace.
    workspace: Option<crate::workspace::tools::WorkspaceTools>,
    /// The tools of the run's MCP servers (`mcp.rs`).
    mcp: Option<crate::mcp::McpTools>,
}

impl Tools {
    pub fn new(
        output_schema: Option<Value>,
        integrations: Vec<Integration>,
        sidecar_url: String,
        sidecar_token: String,
        http: reqwest::Client,
    ) -> Result<Tools, String> {
        let validator = match &output_schema {
            Some(s) => Some(
                jsonschema::validator_for(s)
                    .map_err(|e| format!("the manifest's output schema does not compile: {e}"))?,
            ),
            None => None,
        };
        Ok(Tools {
            output_schema,
            validator,
            integrations,
            sidecar_url,
            sidecar_token,
            http,
            platform: None,
            workspace: None,
            mcp: None,
        })
    }

    /// Adds the memory and document tools.
    pub fn with_platform(mut self, platform: crate::platform::PlatformTools) -> Tools {
        self.platform = Some(platform);
        self
    }

    /// Adds the workspace tools.
    pub fn with_workspace(mut self, workspace: crate::workspace::tools::WorkspaceTools) -> Tools {
        self.workspace = Some(workspace);
        self
    }

    /// Adds the tools of the run's MCP servers.
    pub fn with_mcp(mut self, mcp: crate::mcp::McpTools) -> Tools {
        self.mcp = Some(mcp);
        self
    }

    /// The checkpoint set with `set_checkpoint`, if any.
    pub fn checkpoint(&self) -> Option<Value> {
        self.platform
            .as_ref()
            .and_then(|p| p.checkpoint.borrow().clone())
    }

    /// Tool definitions offered to the model; `only_output` for the corrective turn.
    pub fn specs(&self, only_output: bool) -> Vec<ToolSpec> {
        let data_schema = self
            .output_schema
            .clone()
            .unwrap_or_else(|| json!({"type": "object"}));
        let mut specs = vec![ToolSpec {
            name: "output",
            description:
                "Deliver the run's final structured result. Call it exactly once, with the \
                          result under `data`; the run ends when it is accepted."
                    .into(),
            parameters: json!({
                "type": "object",
                "properties": {"data": data_schema},
                "required": ["data"],
            }),
        }];
        if only_output {
            return specs;
        }
        specs.push(ToolSpec {
            name: "log",
            description: "Write a progress message to the run's log.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "level": {"type": "string", "enum": ["info", "warn", "error"]},
                    "message": {"type": "string"},
                },
                "required": ["level", "message"],
            }),
        });
        if let Some(p) = &self.platform {
            specs.extend(p.specs());
        }
        if let Some(w) = &self.workspace {
            specs.extend(w.specs());
        }
        if let Some(m) = &self.mcp {
            specs.extend(m.specs());
        }
        if !self.integrations.is_empty() {
            let list: Vec<String> = self
                .integrations
                .iter()
                .map(|i| {
                    let uris = i.authorized_uris.join(", ");
                    if i.description.is_empty() {
                        format!("- {} (URLs: {uris})", i.id)
                    } else {
                        format!("- {}: {} (URLs: {uris})", i.id, i.description)
                    }
                })
                .collect();
            specs.push(ToolSpec {
                name: "api_call",
                description: format!(
                    "Call an integration's HTTP API. Credentials are added for you; never send your own. \
                     Available integrations:\n{}",
                    list.join("\n")
                ),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "integration": {"type": "string", "enum": self.integrations.iter().map(|i| i.id.clone()).collect::<Vec<_>>()},
                        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
                        "url": {"type": "string", "description": "Absolute URL"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "body": {"description": "Request body: a string, or JSON sent as application/json"},
                    },
                    "required": ["integration", "method", "url"],
                }),
            });
        }
        specs
    }

    pub async fn call(&self, call: &ToolCall) -> ToolOutcome {
        let args = match parse_args(&call.arguments) {
            Ok(a) => a,
            Err(e) => return ToolOutcome::err(e),
        };
        match call.name.as_str() {
            "output" => self.output(&args),
            "log" => log(&args),
            "api_call" if !self.integrations.is_empty() => self.api_call(&args).await,
            other if self.mcp.is_some() && other.contains("__") => {
                match self.mcp.as_ref().expect("checked").call(other, &args).await {
                    Some(outcome) => outcome,
                    None => ToolOutcome::err(format!("Unknown tool `{other}`")),
                }
            }
            other => {
                if let Some(p) = &self.platform {
                    if let Some(outcome) = p.call(other, &args).await {
                        return outcome;
                    }
                }
                if let Some(w) = &self.workspace {
                    if let Some(outcome) = w.call(other, &args).await {
                        return outcome;
                    }
                }
                ToolOutcome::err(format!("Unknown tool `{other}`"))
            }
        }
    }

    pub fn output(&self, args: &Map<String, Value>) -> ToolOutcome {
        let Some(data) = args.get("data") else {
            return ToolOutcome::err("Missing `data`: call `output` with {\"data\": <result>}.");
        };
        if let Some(v) = &self.validator {
            let errors: Vec<String> = v
                .iter_errors(data)
                .take(20)
                .map(|e| {
                    let path = e.instance_path().to_string();
                    format!("{}: {e}", if path.is_empty() { "/" } else { &path })
                })
                .collect();
            if !errors.is_empty() {
                return ToolOutcome::err(format!(
                    "Output validation failed: {}. Fix the data and call `output` again.",
                    errors.join("; ")
                ));
            }
        }
        ToolOutcome {
            content: "Output accepted.".into(),
            is_error: false,
            output: Some(data.clone()),
            event: Some(("output.emitted", json!({ "data": data }))),
        }
    }

    async fn api_call(&self, args: &Map<String, Value>) -> ToolOutcome {
        let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
        let (integration, url) = (s("integration"), s("url"));
        let method = s("method").to_ascii_uppercase();
        let Some(integ) = self.integrations.iter().find(|i| i.id == integration) else {
            return ToolOutcome::err(format!(
                "Unknown integration `{integration}`; use one of: {}",
                self.integrations
                    .iter()
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return ToolOutcome::err("`method` must be an HTTP method");
        };
        if reqwest::Url::parse(url).is_err() {
            return ToolOutcome::err("`url` must be an absolute URL");
        }
        let target_integration = match &integ.auth_key {
            Some(k) if !k.is_empty() => format!("{}#{k}", integ.id),
            _ => integ.id.clone(),
        };
        // The sidecar forwards our method, headers and body to X-Target, injecting the credential.
        let mut req = self
            .http
            .request(method, format!("{}/proxy", self.sidecar_url))
            .header("X-Target", url)
            .header("X-Integration", target_integration)
            .header(
                reqwest::header::PROXY_AUTHORIZATION,
                format!("Bearer {}", self.sidecar_token),
            )
            .timeout(API_CALL_TIMEOUT);
        let mut has_content_type = false;
        if let Some(h) = args.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                let lower = k.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "host"
                        | "content-length"
                        | "x-target"
                        | "x-integration"
                        | "proxy-authorization"
                ) {
                    continue;
                }
                has_content_type |= lower == "content-type";
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                req = req.header(k.as_str(), v);
            }
        }
        match args.get("body") {
            None | Some(Value::Null) => {}
            Some(Value::String(b)) => req = req.body(b.clone()),
            Some(other) => {
                if !has_content_type {
                    req = req.header("content-type", "application/json");
                }
                req = req.body(other.to_string());
            }
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return ToolOutcome::err(format!(
                    "api_call failed: {}",
                    crate::sink::error_chain(&e)
                ))
            }
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let sidecar_truncated = resp
            .headers()
            .get("x-truncated")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = match read_capped(resp, API_BODY_LIMIT).await {
            Ok(b) => b,
            Err(e) => {
                return ToolOutcome::err(format!("api_call failed reading the response: {e}"))
            }
        };
        let truncated = body.1 || sidecar_truncated;
        let mut headers = Map::new();
        if let Some(ct) = content_type {
            headers.insert("content-type".into(), Value::String(ct));
        }
        let result = json!({
            "status": status,
            "headers": headers,
            "body": String::from_utf8_lossy(&body.0),
            "truncated": truncated,
        });
        ToolOutcome {
            content: result.to_string(),
            is_error: status >= 400,
            output: None,
            event: None,
        }
    }
}

/// Reads at most `limit` bytes; the flag says whether more was available.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

fn log(args: &Map<String, Value>) -> ToolOutcome {
    let level = match args.get("level").and_then(Value::as_str) {
        Some(l @ ("info" | "warn" | "error")) => l,
        Some(other) => {
            return ToolOutcome::err(format!(
                "`level` must be info, warn or error, got {other:?}"
            ))
        }
        None => "info",
    };
    let Some(message) = args.get("message").and_then(Value::as_str) else {
        return ToolOutcome::err("`message` is required");
    };
    ToolOutcome {
        content: "Logged.".into(),
        is_error: false,
        output: None,
        event: Some(("log.written", json!({"level": level, "message": message}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(schema: Option<Value>, integrations: Vec<Integration>) -> Tools {
        Tools::new(
            schema,
            integrations,
            "http://127.0.0.1:9".into(),
            "sct_test".into(),
            reqwest::Client::new(),
        )
        .unwrap()
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn output_is_validated_against_the_schema() {
        let t = tools(
            Some(
                json!({"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}}),
            ),
            vec![],
        );
        let bad = t.output(&args(json!({"data": {"topic": 3}})));
        assert!(bad.is_error);
        assert!(
            bad.content.contains("Output validation failed: /topic"),
            "{}",
            bad.content
        );
        assert!(bad.output.is_none());
        let missing = t.output(&args(json!({"data": {}})));
        assert!(missing.is_error && missing.content.contains("topic"));
        assert!(t.output(&args(json!({}))).is_error);
        let good = t.output(&args(json!({"data": {"topic": "x"}})));
        assert!(!good.is_error);
        assert_eq!(good.output, Some(json!({"topic": "x"})));
        assert_eq!(good.event.unwrap().0, "output.emitted");
    }

    #[test]
    fn bad_output_schema_is_an_error() {
        let r = Tools::new(
            Some(json!({"type": 12})),
            vec![],
            String::new(),
            String::new(),
            reqwest::Client::new(),
        );
        assert!(r.is_err());
    }

    #[test]
    fn specs_depend_on_integrations_and_corrective_turn() {
        let names = |t: &Tools, only| t.specs(only).iter().map(|s| s.name).collect::<Vec<_>>();
        let plain = tools(None, vec![]);
        assert_eq!(names(&plain, false), vec!["output", "log"]);
        assert_eq!(names(&plain, true), vec!["output"]);
        assert_eq!(
            plain.specs(false)[0].parameters["properties"]["data"],
            json!({"type": "object"})
        );
        let with = tools(
            None,
            vec![Integration {
                id: "@appstrate/github".into(),
                auth_key: None,
                description: "GitHub".into(),
                authorized_uris: vec!["https://api.github.com/**".into()],
            }],
        );
        assert_eq!(names(&with, false), vec!["output", "log", "api_call"]);
    }

    #[test]
    fn log_tool() {
        let r = log(&args(json!({"level": "warn", "message": "careful"})));
        assert_eq!(
            r.event,
            Some((
                "log.written",
                json!({"level": "warn", "message": "careful"})
            ))
        );
        assert!(log(&args(json!({"level": "debug", "message": "m"}))).is_error);
        assert!(log(&args(json!({"level": "info"}))).is_error);
    }
}
