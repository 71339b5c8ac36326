//! The runner's environment contract (§15.1), parsed once and validated as a whole so that a bad
//! environment is reported in one `[runner fatal]` line.

use serde_json::{Map, Value};
use std::time::Duration;

/// The two model API shapes the runner speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelApi {
    OpenAiCompletions,
    AnthropicMessages,
}

/// One integration the agent may call through `api_call`.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    pub id: String,
    pub auth_key: Option<String>,
    pub description: String,
    pub authorized_uris: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub run_id: String,
    pub sink_url: String,
    pub finalize_url: String,
    pub workspace_url: String,
    pub sink_secret: String,
    pub input: Map<String, Value>,
    pub timeout: Duration,
    pub timeout_seconds: u64,
    pub model_api: ModelApi,
    pub model_id: String,
    pub model_base_url: String,
    pub model_api_key: String,
    pub model_stream: bool,
    pub model_max_tokens: u64,
    pub sidecar_url: String,
    /// `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`: the HTTP client is built from these values (not
    /// from the process environment, which a slot's runner does not hold them in).
    pub http_proxy: String,
    pub https_proxy: String,
    pub no_proxy: String,
    pub integrations: Vec<Integration>,
    pub max_turns: u32,
    pub heartbeat_interval: Duration,
    /// Where input files are placed and `publish_document` paths are resolved.
    pub workspace_dir: String,
    /// `AGENT_BASH`: the platform runs this runner where commands are isolated (Docker), or the
    /// operator enabled unisolated commands; the `bash` tool is offered when a shell exists.
    pub bash: bool,
    /// `AGENT_MCP_SERVERS`: the run's MCP servers, served by the sidecar.
    pub mcp_servers: Vec<crate::mcp::ServerRef>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, String> {
        Config::parse(|k| std::env::var(k).ok())
    }

    /// Parses from any lookup; all problems are collected and joined with `; `.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut errs: Vec<String> = Vec::new();
        let mut required = |name: &str| -> String {
            match get(name) {
                Some(v) if !v.trim().is_empty() => v,
                _ => {
                    errs.push(format!("{name} is required"));
                    String::new()
                }
            }
        };
        let run_id = required("AGENT_RUN_ID");
        let sink_url = required("APPSTRATE_SINK_URL");
        let finalize_url = required("APPSTRATE_SINK_FINALIZE_URL");
        let workspace_url = required("APPSTRATE_WORKSPACE_URL");
        let sink_secret = required("APPSTRATE_SINK_SECRET");
        let input_raw = required("AGENT_INPUT");
        let timeout_raw = required("AGENT_TIMEOUT_SECONDS");
        let model_api_raw = required("MODEL_API");
        let model_id = required("MODEL_ID");
        let model_base_url = required("MODEL_BASE_URL");
        let model_api_key = required("MODEL_API_KEY");
        let sidecar_url = required("SIDECAR_URL");
        let http_proxy = required("HTTP_PROXY");
        let https_proxy = required("HTTPS_PROXY");
        let no_proxy = get("NO_PROXY").unwrap_or_else(|| {
            errs.push("NO_PROXY is required".into());
            String::new()
        });

        for (name, value) in [
            ("APPSTRATE_SINK_URL", &sink_url),
            ("APPSTRATE_SINK_FINALIZE_URL", &finalize_url),
            ("APPSTRATE_WORKSPACE_URL", &workspace_url),
            ("MODEL_BASE_URL", &model_base_url),
            ("SIDECAR_URL", &sidecar_url),
            ("HTTP_PROXY", &http_proxy),
            ("HTTPS_PROXY", &https_proxy),
        ] {
            if !value.is_empty() && !is_http_url(value) {
                errs.push(format!("{name} must be an http(s) URL"));
            }
        }
        if !sink_secret.is_empty() && sink_secret.chars().count() < 32 {
            errs.push("APPSTRATE_SINK_SECRET must be at least 32 characters".into());
        }
        let input = if input_raw.is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&input_raw) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    errs.push("AGENT_INPUT must be a JSON object".into());
                    Map::new()
                }
                Err(e) => {
                    errs.push(format!("AGENT_INPUT is not valid JSON: {e}"));
                    Map::new()
                }
            }
        };
        let timeout_seconds = if timeout_raw.is_empty() {
            0
        } else {
            positive_int(&timeout_raw, "AGENT_TIMEOUT_SECONDS", &mut errs).unwrap_or(0)
        };
        let model_api = match model_api_raw.as_str() {
            "openai-completions" => ModelApi::OpenAiCompletions,
            "anthropic-messages" => ModelApi::AnthropicMessages,
            "" => ModelApi::OpenAiCompletions,
            other => {
                errs.push(format!(
                    "MODEL_API must be openai-completions or anthropic-messages, got {other:?}"
                ));
                ModelApi::OpenAiCompletions
            }
        };
        let model_stream = match get("MODEL_STREAM").as_deref().map(str::trim) {
            None | Some("") | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                errs.push(format!("MODEL_STREAM must be true or false, got {other:?}"));
                true
            }
        };
        let optional_int = |name: &str, default: u64, errs: &mut Vec<String>| match get(name) {
            Some(v) if !v.trim().is_empty() => positive_int(&v, name, errs).unwrap_or(default),
            _ => default,
        };
        let model_max_tokens = optional_int("MODEL_MAX_TOKENS", 4096, &mut errs);
        let max_turns = optional_int("AGENT_MAX_TURNS", 25, &mut errs).min(u32::MAX as u64) as u32;
        let heartbeat = optional_int("RUN_HEARTBEAT_INTERVAL_SECONDS", 15, &mut errs);
        let integrations = match get("AGENT_INTEGRATIONS") {
            Some(v) if !v.trim().is_empty() => parse_integrations(&v).unwrap_or_else(|e| {
                errs.push(e);
                Vec::new()
            }),
            _ => Vec::new(),
        };
        let mcp_servers = match get("AGENT_MCP_SERVERS") {
            Some(v) if !v.trim().is_empty() => crate::mcp::parse_servers(&v).unwrap_or_else(|e| {
                errs.push(e);
                Vec::new()
            }),
            _ => Vec::new(),
        };
        let workspace_dir = get("WORKSPACE_DIR")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "/workspace".into());

        let bash = match get("AGENT_BASH").as_deref().map(str::trim) {
            None | Some("") | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                errs.push(format!("AGENT_BASH must be true or false, got {other:?}"));
                false
            }
        };

        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        Ok(Config {
            run_id,
            sink_url,
            finalize_url,
            workspace_url,
            sink_secret,
            input,
            timeout: Duration::from_secs(timeout_seconds),
            timeout_seconds,
            model_api,
            model_id,
            model_base_url: model_base_url.trim_end_matches('/').to_string(),
            model_api_key,
            model_stream,
            model_max_tokens,
            sidecar_url: sidecar_url.trim_end_matches('/').to_string(),
            http_proxy,
            https_proxy,
            no_proxy,
            integrations,
            max_turns,
            heartbeat_interval: Duration::from_secs(heartbeat),
            workspace_dir,
            bash,
            mcp_servers,
        })
    }

    pub fn heartbeat_url(&self) -> String {
        format!("{}/heartbeat", self.sink_url.trim_end_matches('/'))
    }
}

fn is_http_url(s: &str) -> bool {
    match reqwest::Url::parse(s) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some(),
        Err(_) => false,
    }
}

fn positive_int(raw: &str, name: &str, errs: &mut Vec<String>) -> Option<u64> {
    match raw.trim().parse::<u64>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            errs.push(format!("{name} must be a positive integer, got {raw:?}"));
            None
        }
    }
}

fn parse_integrations(raw: &str) -> Result<Vec<Integration>, String> {
    let bad = |why: &str| format!("AGENT_INTEGRATIONS {why}");
    let v: Value =
        serde_json::from_str(raw).map_err(|e| bad(&format!("is not valid JSON: {e}")))?;
    let items = v.as_array().ok_or_else(|| bad("must be a JSON array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let obj = item
                .as_object()
                .ok_or_else(|| bad(&format!("[{i}] must be an object")))?;
            let id = obj
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad(&format!("[{i}].id must be a non-empty string")))?;
            let str_field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(Integration {
                id: id.to_string(),
                auth_key: str_field("authKey"),
                description: str_field("description").unwrap_or_default(),
                authorized_uris: obj
                    .get("authorizedUris")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn base() -> HashMap<&'static str, String> {
        let mut m = HashMap::new();
        m.insert("AGENT_RUN_ID", "run_1".to_string());
        m.insert(
            "APPSTRATE_SINK_URL",
            "http://127.0.0.1:1/api/runs/run_1/events".into(),
        );
        m.insert(
            "APPSTRATE_SINK_FINALIZE_URL",
            "http://127.0.0.1:1/api/runs/run_1/events/finalize".into(),
        );
        m.insert(
            "APPSTRATE_WORKSPACE_URL",
            "http://127.0.0.1:1/api/runs/run_1/workspace".into(),
        );
        m.insert("APPSTRATE_SINK_SECRET", "s".repeat(43));
        m.insert("AGENT_INPUT", r#"{"topic":"rust"}"#.into());
        m.insert("AGENT_TIMEOUT_SECONDS", "300".into());
        m.insert("MODEL_API", "openai-completions".into());
        m.insert("MODEL_ID", "gpt-test".into());
        m.insert("MODEL_BASE_URL", "http://127.0.0.1:2/llm/openai/".into());
        m.insert("MODEL_API_KEY", "sk-appstrate-placeholder".into());
        m.insert("SIDECAR_URL", "http://127.0.0.1:2".into());
        m.insert("HTTP_PROXY", "http://127.0.0.1:3".into());
        m.insert("HTTPS_PROXY", "http://127.0.0.1:3".into());
        m.insert("NO_PROXY", "127.0.0.1,localhost".into());
        m
    }

    pub(crate) fn parse(m: &HashMap<&'static str, String>) -> Result<Config, String> {
        Config::parse(|k| m.get(k).cloned())
    }

    #[test]
    fn valid_env_with_defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.run_id, "run_1");
        assert_eq!(c.timeout, Duration::from_secs(300));
        assert_eq!(c.model_api, ModelApi::OpenAiCompletions);
        assert_eq!(c.model_base_url, "http://127.0.0.1:2/llm/openai");
        assert!(c.model_stream);
        assert_eq!(c.model_max_tokens, 4096);
        assert_eq!(c.max_turns, 25);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.workspace_dir, "/workspace");
        assert!(
            !c.bash,
            "bash is off unless the platform says commands are isolated"
        );
        assert!(c.integrations.is_empty());
        assert_eq!(c.input["topic"], "rust");
        assert_eq!(
            c.heartbeat_url(),
            "http://127.0.0.1:1/api/runs/run_1/events/heartbeat"
        );
    }

    #[test]
    fn missing_variables_are_all_named() {
        let mut m = base();
        m.remove("AGENT_RUN_ID");
        m.remove("MODEL_ID");
        let e = parse(&m).unwrap_err();
        assert!(e.contains("AGENT_RUN_ID is required"), "{e}");
        assert!(e.contains("MODEL_ID is required"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn short_secret_is_refused() {
        let mut m = base();
        m.insert("APPSTRATE_SINK_SECRET", "x".repeat(31));
        assert!(parse(&m).unwrap_err().contains("at least 32"));
        m.insert("APPSTRATE_SINK_SECRET", "x".repeat(32));
        assert!(parse(&m).is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v, needle) in [
            ("AGENT_INPUT", "[1,2]", "JSON object"),
            ("AGENT_INPUT", "{nope", "not valid JSON"),
            ("AGENT_TIMEOUT_SECONDS", "0", "positive integer"),
            ("AGENT_TIMEOUT_SECONDS", "ten", "positive integer"),
            ("MODEL_API", "gemini", "MODEL_API"),
            ("MODEL_STREAM", "maybe", "MODEL_STREAM"),
            ("AGENT_MAX_TURNS", "-1", "AGENT_MAX_TURNS"),
            ("APPSTRATE_SINK_URL", "not a url", "APPSTRATE_SINK_URL"),
            ("SIDECAR_URL", "ftp://x", "SIDECAR_URL"),
            ("AGENT_INTEGRATIONS", "{}", "AGENT_INTEGRATIONS"),
            ("AGENT_INTEGRATIONS", r#"[{"authKey":"k"}]"#, "[0].id"),
        ] {
            let mut m = base();
            m.insert(k, v.into());
            let e = parse(&m).expect_err(k);
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
    }

    #[test]
    fn optional_values_parse() {
        let mut m = base();
        m.insert("MODEL_API", "anthropic-messages".into());
        m.insert("MODEL_STREAM", "false".into());
        m.insert("MODEL_MAX_TOKENS", "512".into());
        m.insert("AGENT_MAX_TURNS", "3".into());
        m.insert("RUN_HEARTBEAT_INTERVAL_SECONDS", "1".into());
        m.insert(
            "AGENT_INTEGRATIONS",
            r#"[{"id":"@appstrate/github","authKey":"oauth","description":"GitHub","authorizedUris":["https://api.github.com/**"]}]"#.into(),
        );
        let c = parse(&m).unwrap();
        assert_eq!(c.model_api, ModelApi::AnthropicMessages);
        assert!(!c.model_stream);
        assert_eq!(c.model_max_tokens, 512);
        assert_eq!(c.max_turns, 3);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.integrations.len(), 1);
        assert_eq!(c.integrations[0].auth_key.as_deref(), Some("oauth"));
        assert_eq!(
            c.integrations[0].authorized_uris,
            vec!["https://api.github.com/**"]
        );
    }
}
