//! `mcp-server` packages (issue 16): manifest validation, and the MCP servers a run uses.
//!
//! An agent lists the servers it uses in `dependencies.mcp_servers` (`{"@scope/name": "<range>"}`).
//! At run creation each is resolved like the other dependencies (installed or system, semver range);
//! its companion integration (the first of its own `dependencies.integrations`) supplies the
//! credentials that `server.mcp_config.env` values reference as `{$credential.<field>}`, rendered here
//! and handed only to the sidecar, which launches the server.

use bytes::Bytes;
use serde_json::{Map, Value};
use sidecar::config::Secret;
use sidecar::McpServerConfig;

use super::connections::run_connection;
use super::manifest::Check;
use super::run::{load_archive, resolve_version};
use super::RunIntegration;
use crate::domain::{DomainError, ErrorKind, FieldError, Principal};
use crate::state::AppState;

/// `_meta` key of the workspace request.
pub const WORKSPACE_META: &str = "dev.appstrate/workspace";

fn relative_path_ok(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn env_name_ok(n: &str) -> bool {
    !n.is_empty()
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The `mcp-server` fields of a manifest: `server` (`type`, `entry_point`, `mcp_config.command`,
/// `.args`, `.env`, or `url` for a remote server), `tools` and `_meta["dev.appstrate/workspace"]`.
pub(crate) fn validate_server(c: &mut Check, obj: &Map<String, Value>) {
    match obj.get("server") {
        None => c.err(
            "server",
            "required",
            "is required for an mcp-server package: {type, entry_point, mcp_config: {command, args}}",
        ),
        Some(server) => {
            if let Some(server) = c.object(server, "server") {
                validate_launch(c, server);
                let remote = server.get("type").and_then(Value::as_str) == Some("remote");
                let has_integration = obj
                    .get("dependencies")
                    .and_then(|d| d.get("integrations"))
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty());
                if remote && !has_integration {
                    c.err(
                        "dependencies.integrations",
                        "required",
                        "a remote server needs its companion integration: its credential is injected \
                         and its authorized_uris must allow server.url",
                    );
                }
            }
        }
    }
    if let Some(tools) = obj.get("tools") {
        match tools.as_array() {
            None => c.err(
                "tools",
                "invalid_type",
                format!(
                    "must be an array of {{name, description}}, got {}",
                    Check::type_name(tools)
                ),
            ),
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    let path = format!("tools[{i}]");
                    let Some(t) = c.object(t, &path) else {
                        continue;
                    };
                    if let Some(name) = c.string(t, "name", &format!("{path}.name"), true) {
                        if name.trim().is_empty() {
                            c.err(
                                &format!("{path}.name"),
                                "invalid_value",
                                "must not be empty",
                            );
                        }
                    }
                    c.string(t, "description", &format!("{path}.description"), true);
                }
            }
        }
    }
    if let Some(ws) = obj
        .get("_meta")
        .and_then(Value::as_object)
        .and_then(|m| m.get(WORKSPACE_META))
    {
        let path = format!("_meta.{WORKSPACE_META}");
        if let Some(ws) = c.object(ws, &path) {
            if let Some(mount) = c.string(ws, "mount", &format!("{path}.mount"), true) {
                if !mount.starts_with('/') || mount.split('/').any(|s| s == "..") {
                    c.err(
                        &format!("{path}.mount"),
                        "invalid_format",
                        "must be an absolute path without `..`, e.g. /workspace",
                    );
                }
            }
            match c.string(ws, "access", &format!("{path}.access"), true) {
                None | Some("read-only" | "read-write") => {}
                Some(_) => c.err(
                    &format!("{path}.access"),
                    "invalid_value",
                    "must be read-only or read-write",
                ),
            }
        }
    }
}

fn validate_launch(c: &mut Check, server: &Map<String, Value>) {
    match c.string(server, "type", "server.type", true) {
        None => {}
        Some("node" | "binary") => {
            if let Some(entry) = c.string(server, "entry_point", "server.entry_point", true) {
                if !relative_path_ok(entry) {
                    c.err(
                        "server.entry_point",
                        "invalid_format",
                        "must be a relative path inside the package, e.g. server/index.js",
                    );
                }
            }
            match server.get("mcp_config") {
                None => c.err(
                    "server.mcp_config",
                    "required",
                    "is required: {command, args} launching the stdio server",
                ),
                Some(cfg) => {
                    if let Some(cfg) = c.object(cfg, "server.mcp_config") {
                        validate_mcp_config(c, cfg);
                    }
                }
            }
        }
        Some("remote") => {
            if let Some(url) = c.string(server, "url", "server.url", true) {
                match url::Url::parse(url) {
                    Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
                    _ => c.err(
                        "server.url",
                        "invalid_value",
                        "must be an https URL of a Streamable HTTP MCP server",
                    ),
                }
            }
        }
        Some(other) => c.err(
            "server.type",
            "invalid_value",
            format!(
                "must be node or binary (a stdio server) or remote (an https URL), got {other:?}"
            ),
        ),
    }
}

fn validate_mcp_config(c: &mut Check, cfg: &Map<String, Value>) {
    if let Some(cmd) = c.string(cfg, "command", "server.mcp_config.command", true) {
        if cmd.trim().is_empty() || cmd.contains('\0') {
            c.err(
                "server.mcp_config.command",
                "invalid_value",
                "must name the program, e.g. node or ${__dirname}/server",
            );
        }
    }
    if let Some(args) = cfg.get("args") {
        let ok = args.as_array().is_some_and(|a| {
            a.iter()
                .all(|v| v.as_str().is_some_and(|s| !s.contains('\0')))
        });
        if !ok {
            c.err(
                "server.mcp_config.args",
                "invalid_type",
                "must be an array of strings",
            );
        }
    }
    if let Some(env) = cfg.get("env") {
        if let Some(env) = c.object(env, "server.mcp_config.env") {
            for (k, v) in env {
                let p = format!("server.mcp_config.env.{k}");
                if !env_name_ok(k) {
                    c.err(
                        &p,
                        "invalid_format",
                        "variable names are A-Z, a-z, 0-9 and `_`",
                    );
                }
                if !v.is_string() {
                    c.err(
                        &p,
                        "invalid_type",
                        "must be a string (use {$credential.<field>} for a credential)",
                    );
                }
            }
        }
    }
}

/// `archive` / `required` when a stdio server's `entry_point` is not a file of the archive.
pub(crate) fn entry_point_missing<'a>(
    manifest: &Value,
    mut names: impl Iterator<Item = &'a str>,
) -> Option<FieldError> {
    let server = manifest.get("server")?;
    if !matches!(
        server.get("type").and_then(Value::as_str),
        Some("node" | "binary")
    ) {
        return None;
    }
    let entry = server.get("entry_point").and_then(Value::as_str)?;
    if !relative_path_ok(entry) || names.any(|n| n == entry) {
        return None;
    }
    Some(FieldError::new(
        "manifest.server.entry_point",
        "required",
        format!("{entry} is not a file of the archive"),
    ))
}

/// One MCP server of a run, resolved.
#[derive(Debug, Clone)]
pub struct RunMcpServer {
    /// The agent's name for it (`<name>__<tool>`, `/mcp/<name>`).
    pub name: String,
    /// `@scope/name`
    pub id: String,
    pub version: String,
    pub description: String,
    /// The package archive (stdio servers: its files are unpacked for the sidecar).
    pub archive: Option<Bytes>,
    /// `server.entry_point` (made executable when unpacked).
    pub entry_point: Option<String>,
    /// The sidecar's entry; `dir` and the workspace are filled in by the run adapter.
    pub config: McpServerConfig,
    /// A remote server's companion integration, for the sidecar's integration list.
    pub integration: Option<RunIntegration>,
}

/// `@scope/my-server` → `my_server` (1 to 32 of `a-z 0-9 _`), made unique with a suffix.
fn server_name(id: &str, taken: &[String]) -> String {
    let base: String = id
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(28)
        .collect();
    let base = if base.is_empty() {
        "mcp".to_string()
    } else {
        base
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

fn unprocessable(code: &str, detail: String) -> DomainError {
    DomainError::new(ErrorKind::Unprocessable, code, detail)
}

/// The credentials of an MCP server's companion integration: the first of its
/// `dependencies.integrations`, its first auth with a connection. `None` when it declares none.
async fn companion_credentials(
    state: &AppState,
    auth: &Principal,
    server_id: &str,
    manifest: &Value,
) -> Result<Option<(String, Map<String, Value>)>, DomainError> {
    let app = auth.app()?;
    let Some((integ_id, range)) = manifest
        .pointer("/dependencies/integrations")
        .and_then(Value::as_object)
        .and_then(|m| m.iter().next())
    else {
        return Ok(None);
    };
    let missing = || {
        unprocessable(
            "dependency_unresolved",
            format!("Integration {integ_id} of MCP server {server_id} is not available to this application"),
        )
    };
    let (_, version) = resolve_version(state, &app.id, integ_id, "integration", range.as_str())
        .await?
        .ok_or_else(missing)?;
    let version = version.ok_or_else(missing)?;
    let keys: Vec<String> = version
        .manifest
        .0
        .get("auths")
        .and_then(Value::as_object)
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    for key in &keys {
        if let Some(conn) = run_connection(state, auth, integ_id, key).await? {
            let creds = state
                .keyring
                .decrypt_json(&conn.credentials_encrypted)
                .map_err(|e| DomainError::internal(format!("connection {}: {e}", conn.id)))?;
            return Ok(Some((
                integ_id.clone(),
                creds.as_object().cloned().unwrap_or_default(),
            )));
        }
    }
    Err(DomainError::new(
        ErrorKind::PreconditionFailed,
        "missing_integration_connection",
        format!(
            "MCP server {server_id} needs a connection of its integration {integ_id}; create one with \
             PUT /api/packages/{integ_id}/connections/{}",
            keys.first().map(String::as_str).unwrap_or("<authKey>")
        ),
    ))
}

/// §11.1 step 8 for MCP servers: resolves `manifest.dependencies.mcp_servers`, renders each stdio
/// server's environment from its companion integration's connection, and, for a remote server, the
/// integration whose header the sidecar injects.
///
/// Errors: 422 `dependency_unresolved`; 412 `missing_integration_connection`; 422 `unsupported_delivery`.
pub async fn run_mcp_servers(
    state: &AppState,
    auth: &Principal,
    manifest: &Value,
) -> Result<Vec<RunMcpServer>, DomainError> {
    let app = auth.app()?;
    let Some(deps) = manifest
        .pointer("/dependencies/mcp_servers")
        .and_then(Value::as_object)
    else {
        return Ok(Vec::new());
    };
    let mut out: Vec<RunMcpServer> = Vec::new();
    for (id, range) in deps {
        let range = range.as_str();
        let missing = || {
            unprocessable(
                "dependency_unresolved",
                format!(
                    "MCP server {id} {} is not installed and is not a system package",
                    range.unwrap_or("")
                ),
            )
        };
        let (_, version) = resolve_version(state, &app.id, id, "mcp-server", range)
            .await?
            .ok_or_else(missing)?;
        let version = version.ok_or_else(missing)?;
        let m = &version.manifest.0;
        let server = m.get("server").cloned().unwrap_or(Value::Null);
        let taken: Vec<String> = out.iter().map(|s| s.name.clone()).collect();
        let name = server_name(id, &taken);
        let description = m
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut config = McpServerConfig {
            name: name.clone(),
            id: id.clone(),
            command: None,
            args: Vec::new(),
            dir: None,
            share_workspace: false,
            workspace_access: None,
            env: Default::default(),
            url: None,
            integration: None,
        };
        let mut archive = None;
        let mut integration = None;
        let mut entry_point = None;
        if server["type"] == "remote" {
            config.url = server["url"].as_str().map(str::to_string);
            // The companion integration's header, rendered like an agent's integration.
            let url = server["url"].as_str().unwrap_or_default();
            let integs = super::run_integrations(state, auth, m).await?;
            // The sidecar refuses a URL outside the integration's allowlist; say so before the run.
            let allowed = |i: &RunIntegration| {
                i.allow_all_uris
                    || url::Url::parse(url).is_ok_and(|u| {
                        i.authorized_uris.iter().any(|p| {
                            sidecar::allowlist::UriPattern::parse(p)
                                .is_ok_and(|p| sidecar::allowlist::any_matches(&[p], &u))
                        })
                    })
            };
            let Some(i) = integs.into_iter().find(allowed) else {
                return Err(unprocessable(
                    "dependency_unresolved",
                    format!(
                        "MCP server {id}: server.url {url} is not in the authorized_uris of a connected \
                         auth of its integration"
                    ),
                ));
            };
            config.integration = Some(format!("{}#{}", i.id, i.auth_key));
            integration = Some(i);
        } else {
            config.command = server
                .pointer("/mcp_config/command")
                .and_then(Value::as_str)
                .map(str::to_string);
            config.args = server
                .pointer("/mcp_config/args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            entry_point = server["entry_point"].as_str().map(str::to_string);
            if let Some(ws) = m.pointer("/_meta/dev.appstrate~1workspace") {
                config.share_workspace = true;
                config.workspace_access = ws["access"].as_str().map(str::to_string);
            }
            let env = server
                .pointer("/mcp_config/env")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let needs_credentials = env
                .values()
                .any(|v| v.as_str().is_some_and(|s| s.contains("{$credential.")));
            let creds = if needs_credentials {
                companion_credentials(state, auth, id, m).await?
            } else {
                None
            };
            let empty = Map::new();
            for (k, v) in &env {
                let template = v.as_str().unwrap_or("");
                let creds = creds.as_ref().map(|c| &c.1).unwrap_or(&empty);
                let value = sidecar::delivery::render_template(template, creds).map_err(|e| {
                    DomainError::new(
                        ErrorKind::PreconditionFailed,
                        "missing_integration_connection",
                        format!("MCP server {id}: server.mcp_config.env.{k}: {e}"),
                    )
                })?;
                config.env.insert(k.clone(), Secret::new(value));
            }
            archive = Some(load_archive(state, &version.storage_key).await?);
        }
        out.push(RunMcpServer {
            name,
            id: id.clone(),
            version: version.version.clone(),
            description,
            archive,
            entry_point,
            config,
            integration,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::validate_manifest;
    use serde_json::json;

    fn manifest(server: Value) -> Value {
        json!({"schema_version": "0.1", "name": "@t/files", "version": "1.0.0", "type": "mcp-server",
               "server": server,
               "tools": [{"name": "echo", "description": "Echo"}],
               "_meta": {"dev.appstrate/workspace": {"mount": "/workspace", "access": "read-write"}}})
    }

    fn fields(v: Value) -> Vec<(String, &'static str)> {
        validate_manifest(&v)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn a_stdio_server_manifest_is_accepted() {
        let m = manifest(json!({"type": "node", "entry_point": "server/index.js",
            "mcp_config": {"command": "node", "args": ["${__dirname}/server/index.js"],
                           "env": {"GITHUB_TOKEN": "{$credential.access_token}"}}}));
        let ok = validate_manifest(&m).unwrap();
        assert_eq!(ok.kind.as_str(), "mcp-server");
        let mut remote = manifest(json!({"type": "remote", "url": "https://mcp.example.com/mcp"}));
        assert_eq!(
            fields(remote.clone()),
            vec![("manifest.dependencies.integrations".to_string(), "required")]
        );
        remote["dependencies"] = json!({"integrations": {"@t/api": "^1"}});
        assert!(validate_manifest(&remote).is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        for (server, want) in [
            (
                json!({"type": "python", "entry_point": "a.py"}),
                ("manifest.server.type", "invalid_value"),
            ),
            (
                json!({"entry_point": "a"}),
                ("manifest.server.type", "required"),
            ),
            (
                json!({"type": "binary", "mcp_config": {"command": "x"}}),
                ("manifest.server.entry_point", "required"),
            ),
            (
                json!({"type": "binary", "entry_point": "../x", "mcp_config": {"command": "x"}}),
                ("manifest.server.entry_point", "invalid_format"),
            ),
            (
                json!({"type": "binary", "entry_point": "/abs", "mcp_config": {"command": "x"}}),
                ("manifest.server.entry_point", "invalid_format"),
            ),
            (
                json!({"type": "binary", "entry_point": "x"}),
                ("manifest.server.mcp_config", "required"),
            ),
            (
                json!({"type": "binary", "entry_point": "x", "mcp_config": {}}),
                ("manifest.server.mcp_config.command", "required"),
            ),
            (
                json!({"type": "binary", "entry_point": "x", "mcp_config": {"command": " "}}),
                ("manifest.server.mcp_config.command", "invalid_value"),
            ),
            (
                json!({"type": "binary", "entry_point": "x", "mcp_config": {"command": "x", "args": [1]}}),
                ("manifest.server.mcp_config.args", "invalid_type"),
            ),
            (
                json!({"type": "binary", "entry_point": "x", "mcp_config": {"command": "x", "env": {"A-B": "v"}}}),
                ("manifest.server.mcp_config.env.A-B", "invalid_format"),
            ),
            (
                json!({"type": "binary", "entry_point": "x", "mcp_config": {"command": "x", "env": {"A": 1}}}),
                ("manifest.server.mcp_config.env.A", "invalid_type"),
            ),
            (
                json!({"type": "remote", "url": "http://mcp.example.com/"}),
                ("manifest.server.url", "invalid_value"),
            ),
            (json!("node"), ("manifest.server", "invalid_type")),
        ] {
            let got = fields(manifest(server.clone()));
            assert!(
                got.contains(&(want.0.to_string(), want.1)),
                "{server}: {got:?}"
            );
        }
        let mut m =
            manifest(json!({"type": "binary", "entry_point": "x", "mcp_config": {"command": "x"}}));
        m["tools"] = json!([{"name": ""}, 3]);
        m["_meta"]["dev.appstrate/workspace"] = json!({"mount": "workspace", "access": "all"});
        let got = fields(m);
        for want in [
            ("manifest.tools[0].name", "invalid_value"),
            ("manifest.tools[0].description", "required"),
            ("manifest.tools[1]", "invalid_type"),
            (
                "manifest._meta.dev.appstrate/workspace.mount",
                "invalid_format",
            ),
            (
                "manifest._meta.dev.appstrate/workspace.access",
                "invalid_value",
            ),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1)),
                "{want:?} in {got:?}"
            );
        }
        let mut m =
            manifest(json!({"type": "binary", "entry_point": "x", "mcp_config": {"command": "x"}}));
        m.as_object_mut().unwrap().remove("server");
        assert!(fields(m).contains(&("manifest.server".into(), "required")));
    }

    #[test]
    fn entry_points_must_be_in_the_archive() {
        let m = manifest(
            json!({"type": "binary", "entry_point": "bin/srv", "mcp_config": {"command": "x"}}),
        );
        assert!(entry_point_missing(&m, ["manifest.json", "bin/srv"].into_iter()).is_none());
        let e = entry_point_missing(&m, ["manifest.json"].into_iter()).unwrap();
        assert_eq!(e.field, "manifest.server.entry_point");
        let remote = manifest(json!({"type": "remote", "url": "https://a.example/mcp"}));
        assert!(entry_point_missing(&remote, std::iter::empty()).is_none());
    }

    #[test]
    fn server_names() {
        assert_eq!(server_name("@t/fake-mcp", &[]), "fake_mcp");
        assert_eq!(
            server_name("@u/fake-mcp", &["fake_mcp".into()]),
            "fake_mcp_2"
        );
        assert_eq!(
            server_name(&format!("@t/{}", "a".repeat(60)), &[]).len(),
            28
        );
    }
}
