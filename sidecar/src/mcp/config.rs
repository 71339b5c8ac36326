//! The `mcpServers` part of `/configure`: the MCP servers of a run and their validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::{ConfigError, Integration, Secret};
use crate::ssrf::{self, Policy};

/// Most MCP servers one run may have.
pub const MAX_SERVERS: usize = 16;

/// One MCP server of the run: a stdio server the sidecar launches (`command`) or a remote Streamable
/// HTTP server it forwards to (`url`), exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServerConfig {
    /// What the agent calls it: 1 to 32 of `a-z 0-9 _`. Its tools are offered as `<name>__<tool>` and
    /// it is served at `/mcp/<name>`.
    pub name: String,
    /// `@scope/name` of the `mcp-server` package (for messages).
    pub id: String,
    /// stdio: the program — an absolute path, a path relative to `dir`, or a name on `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// stdio: its arguments; `${__dirname}` is replaced by `dir`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// stdio: the directory holding the package's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// stdio: whether it runs in the run workspace (`workspaceDir`, its working directory and
    /// `WORKSPACE_DIR`), as the manifest's `_meta["dev.appstrate/workspace"]` asks.
    #[serde(default)]
    pub share_workspace: bool,
    /// stdio: `read-write` or `read-only` (passed as `WORKSPACE_ACCESS`; process mode cannot enforce it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_access: Option<String>,
    /// stdio: environment variables, the credentials of its companion integration among them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Secret>,
    /// remote: the server's Streamable HTTP URL (`https`, or `http` for an exempt host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// remote (required): `@scope/name[#authKey]` of a run integration whose credential header is
    /// injected; the URL must match its `authorizedUris` (or the integration allows all URIs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<String>,
}

/// A validated MCP server.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        dir: Option<String>,
        share_workspace: bool,
        workspace_access: Option<String>,
        env: BTreeMap<String, Secret>,
    },
    Remote {
        url: Url,
        /// Index in `Validated::integrations`: the header injected and the allowlist applied.
        integration: usize,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct McpServer {
    pub name: String,
    pub id: String,
    pub transport: Transport,
}

impl McpServer {
    /// The secret values it holds (scrubbed from anything it prints).
    pub fn secrets(&self) -> Vec<String> {
        match &self.transport {
            Transport::Stdio { env, .. } => env
                .values()
                .map(|v| v.expose().to_string())
                .filter(|v| v.len() >= 4)
                .collect(),
            Transport::Remote { .. } => Vec::new(),
        }
    }
}

fn valid_name(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_var(n: &str) -> bool {
    !n.is_empty()
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Validates `mcpServers` against the run's integrations and SSRF policy.
pub(crate) fn compile(
    servers: &[McpServerConfig],
    integrations: &[Integration],
    policy: &Policy,
) -> Result<Vec<McpServer>, ConfigError> {
    if servers.len() > MAX_SERVERS {
        return Err(ConfigError(format!(
            "mcpServers holds at most {MAX_SERVERS} servers"
        )));
    }
    let mut out: Vec<McpServer> = Vec::with_capacity(servers.len());
    for (i, s) in servers.iter().enumerate() {
        let at = |field: &str, why: &str| ConfigError(format!("mcpServers[{i}].{field} {why}"));
        if !valid_name(&s.name) {
            return Err(at("name", "must be 1 to 32 of a-z, 0-9 and `_`"));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(at("name", "is used by another server"));
        }
        if !crate::config::is_package_id(&s.id) {
            return Err(at("id", "must be @scope/name"));
        }
        let transport = match (&s.command, &s.url) {
            (Some(command), None) => {
                if command.trim().is_empty() || command.contains('\0') {
                    return Err(at("command", "must be a non-empty program name or path"));
                }
                if s.args.iter().any(|a| a.contains('\0')) {
                    return Err(at("args", "must not contain NUL"));
                }
                if let Some(bad) = s.env.keys().find(|k| !valid_var(k)) {
                    return Err(at(
                        "env",
                        &format!("{bad:?} is not a variable name (A-Z, a-z, 0-9, `_`)"),
                    ));
                }
                if s.env.values().any(|v| v.expose().contains('\0')) {
                    return Err(at("env", "values must not contain NUL"));
                }
                match s.workspace_access.as_deref() {
                    None | Some("read-write") | Some("read-only") => {}
                    Some(_) => {
                        return Err(at("workspaceAccess", "must be read-write or read-only"))
                    }
                }
                Transport::Stdio {
                    command: command.clone(),
                    args: s.args.clone(),
                    dir: s.dir.clone(),
                    share_workspace: s.share_workspace,
                    workspace_access: s.workspace_access.clone(),
                    env: s.env.clone(),
                }
            }
            (None, Some(raw)) => {
                let url =
                    ssrf::parse_url(raw).map_err(|e| at("url", &format!("is invalid: {e}")))?;
                let exempt = ssrf::url_host(&url).is_some_and(|h| policy.is_exempt(&h));
                if url.scheme() != "https" && !exempt {
                    return Err(at("url", "must be an https URL"));
                }
                ssrf::check_url_literal(&url, policy)
                    .map_err(|e| at("url", &format!("is blocked: {e}")))?;
                // Like `/proxy`: a remote server is reached with an integration's credential and under its
                // allowlist, never as an open door.
                let Some(spec) = &s.integration else {
                    return Err(at(
                        "integration",
                        "is required for a remote server (its credential and allowlist apply)",
                    ));
                };
                let (id, key) = match spec.split_once('#') {
                    Some((id, key)) => (id, Some(key)),
                    None => (spec.as_str(), None),
                };
                let idx = integrations
                    .iter()
                    .position(|g| g.id == id && key.is_none_or(|k| g.auth_key == k))
                    .ok_or_else(|| at("integration", "is not one of the run's integrations"))?;
                let integ = &integrations[idx];
                if !integ.allow_all_uris && !crate::allowlist::any_matches(&integ.patterns, &url) {
                    return Err(at(
                        "url",
                        &format!("is not in authorizedUris of {}", integ.id),
                    ));
                }
                let integration = idx;
                Transport::Remote { url, integration }
            }
            _ => return Err(at("command", "or url is required (exactly one of them)")),
        };
        out.push(McpServer {
            name: s.name.clone(),
            id: s.id.clone(),
            transport,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn remote_integration(pattern: &str) -> Integration {
        Integration {
            id: "@t/api".into(),
            auth_key: "primary".into(),
            patterns: vec![crate::allowlist::UriPattern::parse(pattern).unwrap()],
            allow_all_uris: false,
            header_name: http::HeaderName::from_static("authorization"),
            header_value: std::sync::Arc::new(std::sync::RwLock::new(
                http::HeaderValue::from_static("Bearer x"),
            )),
            refresh: None,
        }
    }

    fn server(v: serde_json::Value) -> McpServerConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn stdio_and_remote_servers_are_validated() {
        let policy = Policy::with_exemptions(["127.0.0.1"]);
        let ok = compile(
            &[
                server(json!({"name": "files", "id": "@t/files", "command": "./srv", "args": ["--stdio"],
                              "env": {"API_TOKEN": "secret-CANARY"}, "shareWorkspace": true})),
                server(json!({"name": "remote", "id": "@t/remote", "url": "http://127.0.0.1:9/mcp",
                              "integration": "@t/api#primary"})),
            ],
            &[remote_integration("http://127.0.0.1:9/**")],
            &policy,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].secrets(), vec!["secret-CANARY".to_string()]);
        assert!(!format!("{ok:?}").contains("CANARY"));
        for (v, needle) in [
            (
                json!({"name": "Bad", "id": "@t/x", "command": "x"}),
                "mcpServers[0].name",
            ),
            (
                json!({"name": "x", "id": "x", "command": "x"}),
                "mcpServers[0].id",
            ),
            (json!({"name": "x", "id": "@t/x"}), "exactly one"),
            (
                json!({"name": "x", "id": "@t/x", "command": "x", "url": "https://a.example/mcp"}),
                "exactly one",
            ),
            (
                json!({"name": "x", "id": "@t/x", "command": "x", "env": {"A-B": "v"}}),
                "mcpServers[0].env",
            ),
            (
                json!({"name": "x", "id": "@t/x", "command": "x", "workspaceAccess": "all"}),
                "workspaceAccess",
            ),
            (
                json!({"name": "x", "id": "@t/x", "url": "http://mcp.example.com/mcp"}),
                "https",
            ),
            (
                json!({"name": "x", "id": "@t/x", "url": "https://169.254.169.254/mcp"}),
                "blocked",
            ),
            (
                json!({"name": "x", "id": "@t/x", "url": "https://a.example/mcp", "integration": "@t/none"}),
                "integration",
            ),
        ] {
            let e = compile(&[server(v.clone())], &[], &Policy::new())
                .unwrap_err()
                .0;
            assert!(e.contains(needle), "{v}: {e}");
        }
        let twice = [
            server(json!({"name": "x", "id": "@t/x", "command": "x"})),
            server(json!({"name": "x", "id": "@t/y", "command": "y"})),
        ];
        assert!(compile(&twice, &[], &policy)
            .unwrap_err()
            .0
            .contains("another server"));
        assert!(serde_json::from_value::<McpServerConfig>(
            json!({"name": "x", "id": "@t/x", "command": "x", "surprise": 1})
        )
        .is_err());
    }
}
