//! The `/configure` body (`SidecarConfig`) and its validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::allowlist::UriPattern;
use crate::ssrf::{self, Policy};

/// A secret string. `Debug` and `Display` print `[redacted]`; serialisation emits the real value
/// (the API server needs it to POST `/configure`), so never serialise a config into a log.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The LLM provider API shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    Openai,
    Anthropic,
}

impl LlmProvider {
    /// The path segment used in `/llm/{provider}/…`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LlmProvider::Openai => "openai",
            LlmProvider::Anthropic => "anthropic",
        }
    }
}

/// The model endpoint and its real key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmConfig {
    pub provider: LlmProvider,
    pub base_url: String,
    pub api_key: Secret,
}

/// The rendered credential header of an integration auth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderConfig {
    pub name: String,
    pub value: Secret,
}

/// One integration auth the run may call through `/proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrationConfig {
    /// `@scope/name`
    pub id: String,
    /// The key in the manifest's `auths` (e.g. `primary`).
    pub auth_key: String,
    #[serde(default)]
    pub authorized_uris: Vec<String>,
    #[serde(default)]
    pub allow_all_uris: bool,
    pub header: HeaderConfig,
    /// Where to ask the platform for a fresh credential when the provider answers 401 (OAuth
    /// connections). Absent: a 401 is passed to the agent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshConfig>,
}

/// The platform endpoint that re-renders an integration's credential header after a refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshConfig {
    /// `POST` here (same origin as `platformUrl`); answers `{name, value}`.
    pub url: String,
    /// Presented as `Authorization: Bearer …`; bound to this run and connection.
    pub token: Secret,
}

/// The body of `POST /configure`, also passed directly by the API server in process mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    pub run_id: String,
    /// The per-run token that every `/llm`, `/proxy` and forward-proxy request must present (the runner
    /// gets it as `MODEL_API_KEY`): 32 to 256 characters of `A-Z a-z 0-9 _ -`.
    pub run_token: Secret,
    pub platform_url: String,
    pub llm: LlmConfig,
    #[serde(default)]
    pub integrations: Vec<IntegrationConfig>,
    /// Hosts exempt from the SSRF range block (`EGRESS_ALLOW_INTERNAL_HOSTS`).
    #[serde(default)]
    pub allow_internal_hosts: Vec<String>,
    /// The agent's part (run slots): the runner's configuration, handed over once through
    /// `GET /agent-config` to `agent.address` only, then forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    /// The run's MCP servers (see [`crate::mcp`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<crate::mcp::McpServerConfig>,
    /// The run workspace as the sidecar sees it: the working directory of the stdio MCP servers that
    /// share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_dir: Option<String>,
}

/// The run configuration of a waiting runner (a run slot's agent): its environment contract
/// (§15.1), secrets included, and the only address it is handed to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent container's IP address on the run network.
    pub address: String,
    /// The runner's variables (`AGENT_RUN_ID`, `APPSTRATE_SINK_SECRET`, `HTTP_PROXY`, …).
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are secrets (the sink secret, the run token): only the names are shown.
        f.debug_struct("AgentConfig")
            .field("address", &self.address)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Maximum number of variables in `agent.env`.
const MAX_AGENT_ENV: usize = 256;

/// A configuration rejected by validation (400 `invalid_config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A validated integration with its compiled patterns.
#[derive(Debug, Clone)]
pub(crate) struct Integration {
    pub id: String,
    pub auth_key: String,
    pub patterns: Vec<UriPattern>,
    pub allow_all_uris: bool,
    pub header_name: http::HeaderName,
    /// Replaced in place when the platform hands a fresh credential after a 401.
    pub header_value: std::sync::Arc<std::sync::RwLock<http::HeaderValue>>,
    pub refresh: Option<(Url, Secret)>,
}

/// A validated configuration, ready to serve.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub run_id: String,
    pub run_token: Secret,
    pub platform: Url,
    pub llm_provider: LlmProvider,
    pub llm_base: Url,
    pub llm_key: http::HeaderValue,
    pub integrations: Vec<Integration>,
    pub policy: Policy,
    /// `agent.address`, parsed (the agent part itself is kept by the handover, not here).
    pub agent_address: Option<IpAddr>,
    pub mcp: Vec<crate::mcp::config::McpServer>,
    pub workspace_dir: Option<String>,
}

impl SidecarConfig {
    /// Validates the configuration: URLs parse, `llm.baseUrl` passes the literal SSRF check (unless
    /// exempt), header names and values are valid, `authorizedUris` compile.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    /// The SSRF policy of this run (its `allowInternalHosts`).
    pub fn policy(&self) -> Policy {
        Policy::with_exemptions(&self.allow_internal_hosts)
    }

    pub(crate) fn compile(&self) -> Result<Validated, ConfigError> {
        if self.run_id.trim().is_empty() {
            return Err(ConfigError("runId must not be empty".into()));
        }
        let token = self.run_token.expose();
        if !(32..=256).contains(&token.len())
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError(
                "runToken must be 32 to 256 characters of A-Z, a-z, 0-9, `_` and `-`".into(),
            ));
        }
        let policy = self.policy();
        let platform = ssrf::parse_url(&self.platform_url)
            .map_err(|e| ConfigError(format!("platformUrl: {e}")))?;
        let llm_base = ssrf::parse_url(&self.llm.base_url)
            .map_err(|e| ConfigError(format!("llm.baseUrl: {e}")))?;
        if llm_base.query().is_some() || llm_base.fragment().is_some() {
            return Err(ConfigError(
                "llm.baseUrl must not have a query or fragment".into(),
            ));
        }
        ssrf::check_url_literal(&llm_base, &policy)
            .map_err(|e| ConfigError(format!("llm.baseUrl is blocked: {e}")))?;
        let key = self.llm.api_key.expose();
        if key.is_empty() {
            return Err(ConfigError("llm.apiKey must not be empty".into()));
        }
        let header_key = match self.llm.provider {
            LlmProvider::Openai => format!("Bearer {key}"),
            LlmProvider::Anthropic => key.to_string(),
        };
        let mut llm_key = http::HeaderValue::from_str(&header_key)
            .map_err(|_| ConfigError("llm.apiKey is not a valid header value".into()))?;
        llm_key.set_sensitive(true);

        let mut integrations = Vec::with_capacity(self.integrations.len());
        for (i, integ) in self.integrations.iter().enumerate() {
            if !is_package_id(&integ.id) {
                return Err(ConfigError(format!(
                    "integrations[{i}].id must be @scope/name"
                )));
            }
            if integ.auth_key.is_empty() {
                return Err(ConfigError(format!(
                    "integrations[{i}].authKey must not be empty"
                )));
            }
            let patterns = integ
                .authorized_uris
                .iter()
                .map(|p| UriPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError(format!("integrations[{i}].authorizedUris: {e}")))?;
            let header_name = http::HeaderName::from_bytes(integ.header.name.as_bytes())
                .map_err(|_| ConfigError(format!("integrations[{i}].header.name is invalid")))?;
            let mut header_value = http::HeaderValue::from_str(integ.header.value.expose())
                .map_err(|_| ConfigError(format!("integrations[{i}].header.value is invalid")))?;
            header_value.set_sensitive(true);
            let refresh = match &integ.refresh {
                None => None,
                Some(r) => {
                    let url = ssrf::parse_url(&r.url)
                        .map_err(|e| ConfigError(format!("integrations[{i}].refresh.url: {e}")))?;
                    if url.origin() != platform.origin() {
                        return Err(ConfigError(format!(
                            "integrations[{i}].refresh.url must be on platformUrl's origin"
                        )));
                    }
                    Some((url, r.token.clone()))
                }
            };
            integrations.push(Integration {
                id: integ.id.clone(),
                auth_key: integ.auth_key.clone(),
                patterns,
                allow_all_uris: integ.allow_all_uris,
                header_name,
                header_value: std::sync::Arc::new(std::sync::RwLock::new(header_value)),
                refresh,
            });
        }
        let agent_address = match &self.agent {
            None => None,
            Some(agent) => {
                let ip = agent.address.trim().parse::<IpAddr>().map_err(|_| {
                    ConfigError(
                        "agent.address must be an IP address (the agent container's)".into(),
                    )
                })?;
                if agent.env.is_empty() || agent.env.len() > MAX_AGENT_ENV {
                    return Err(ConfigError(format!(
                        "agent.env must hold 1 to {MAX_AGENT_ENV} variables"
                    )));
                }
                if let Some(bad) = agent.env.keys().find(|k| {
                    k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                }) {
                    return Err(ConfigError(format!(
                        "agent.env: {bad:?} is not a variable name (A-Z, a-z, 0-9, `_`)"
                    )));
                }
                Some(ip.to_canonical())
            }
        };
        let mcp = crate::mcp::config::compile(&self.mcp_servers, &integrations, &policy)?;
        Ok(Validated {
            agent_address,
            mcp,
            workspace_dir: self.workspace_dir.clone().filter(|w| !w.is_empty()),
            run_id: self.run_id.clone(),
            run_token: self.run_token.clone(),
            platform,
            llm_provider: self.llm.provider,
            llm_base,
            llm_key,
            integrations,
            policy,
        })
    }
}

/// `@scope/name` with non-empty parts and no further slashes.
pub(crate) fn is_package_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix('@') else {
        return false;
    };
    let mut parts = rest.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(scope), Some(name), None) if !scope.is_empty() && !name.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> serde_json::Value {
        json!({
            "runId": "run_1",
            "runToken": "sct_CANARY0123456789abcdef0123456789",
            "platformUrl": "http://127.0.0.1:3000",
            "llm": {"provider": "openai", "baseUrl": "https://api.openai.com/v1", "apiKey": "sk-real-CANARY"},
            "integrations": [{
                "id": "@appstrate/github", "authKey": "primary",
                "authorizedUris": ["https://api.github.com/**"], "allowAllUris": false,
                "header": {"name": "Authorization", "value": "Bearer ghp_CANARY"}
            }],
            "allowInternalHosts": []
        })
    }

    #[test]
    fn parses_and_redacts() {
        let cfg: SidecarConfig = serde_json::from_value(sample()).unwrap();
        cfg.validate().unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        assert_eq!(cfg.llm.api_key.to_string(), "[redacted]");
        assert_eq!(cfg.llm.api_key.expose(), "sk-real-CANARY");
        // Serialisation round-trips the real values (the API posts this body).
        let back: SidecarConfig =
            serde_json::from_value(serde_json::to_value(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn the_agent_part_is_validated_and_never_printed() {
        let mut v = sample();
        v["agent"] =
            json!({"address": "172.30.0.3", "env": {"APPSTRATE_SINK_SECRET": "CANARY-sink"}});
        let cfg: SidecarConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            cfg.compile().unwrap().agent_address,
            Some("172.30.0.3".parse().unwrap())
        );
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("CANARY-sink"), "{dbg}");
        assert!(dbg.contains("APPSTRATE_SINK_SECRET"), "{dbg}");
        for (field, value, message) in [
            (
                "address",
                json!("sidecar"),
                "agent.address must be an IP address",
            ),
            ("env", json!({}), "agent.env must hold 1 to 256 variables"),
            ("env", json!({"A-B": "x"}), "is not a variable name"),
        ] {
            let mut bad = v.clone();
            bad["agent"][field] = value;
            let cfg: SidecarConfig = serde_json::from_value(bad).unwrap();
            let err = cfg.validate().unwrap_err().0;
            assert!(err.contains(message), "{err}");
        }
        let mut unknown = v.clone();
        unknown["agent"]["secret"] = json!("x");
        assert!(serde_json::from_value::<SidecarConfig>(unknown).is_err());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let mut v = sample();
        v["extra"] = json!(1);
        assert!(serde_json::from_value::<SidecarConfig>(v).is_err());
        let mut v = sample();
        v["llm"]["provider"] = json!("mistral");
        assert!(serde_json::from_value::<SidecarConfig>(v).is_err());
        let mut v = sample();
        v["integrations"][0]["header"]["extra"] = json!(1);
        assert!(serde_json::from_value::<SidecarConfig>(v).is_err());

        let mut v = sample();
        v["llm"]["baseUrl"] = json!("http://169.254.169.254/v1");
        let cfg: SidecarConfig = serde_json::from_value(v).unwrap();
        assert!(cfg.validate().unwrap_err().0.contains("blocked"));

        let mut v = sample();
        v["llm"]["baseUrl"] = json!("http://127.0.0.1:9999/v1");
        v["allowInternalHosts"] = json!(["127.0.0.1"]);
        let cfg: SidecarConfig = serde_json::from_value(v).unwrap();
        cfg.validate().unwrap();

        let mut v = sample();
        v["integrations"][0]["header"]["name"] = json!("Bad Header");
        let cfg: SidecarConfig = serde_json::from_value(v).unwrap();
        assert!(cfg.validate().is_err());

        let mut v = sample();
        v["integrations"][0]["id"] = json!("github");
        let cfg: SidecarConfig = serde_json::from_value(v).unwrap();
        assert!(cfg.validate().is_err());

        let mut v = sample();
        v.as_object_mut().unwrap().remove("runToken");
        let e = serde_json::from_value::<SidecarConfig>(v).unwrap_err();
        assert!(e.to_string().contains("runToken"), "{e}");
        for bad in [
            "",
            "short",
            "sct_has a space in it 0123456789abcdef",
            &"x".repeat(257),
        ] {
            let mut v = sample();
            v["runToken"] = json!(bad);
            let cfg: SidecarConfig = serde_json::from_value(v).unwrap();
            let e = cfg.validate().unwrap_err().0;
            assert!(e.starts_with("runToken"), "{e}");
        }
    }

    #[test]
    fn package_ids() {
        assert!(is_package_id("@appstrate/github"));
        assert!(!is_package_id("appstrate/github"));
        assert!(!is_package_id("@appstrate/"));
        assert!(!is_package_id("@a/b/c"));
    }
}
