//! What the runs pipeline asks of packages (§11.1 steps 5, 6 and 8; §16.3 run bundle).

use std::io::Cursor;

use crate::domain::{DomainError, ErrorKind, FieldError, Principal};
use bytes::Bytes;
use serde_json::{Map, Value};
use sidecar::config::{HeaderConfig, IntegrationConfig, RefreshConfig, Secret};

use super::afps::build_zip;
use super::connections::{run_connection, schema_field_errors};
use super::manifest::{auth_required, compile_schema};
use super::{pick_version, PackageId};
use crate::infra::database::PackageVersionRow;
use crate::state::AppState;

/// The agent (and version) a run executes.
#[derive(Debug, Clone)]
pub struct ResolvedAgent {
    /// `@scope/name`
    pub package_id: String,
    /// `@scope`
    pub scope: String,
    pub name: String,
    /// The exact version resolved.
    pub version: String,
    /// The manifest of that version.
    pub manifest: Value,
    /// Object-storage key of the archive.
    pub storage_key: String,
    /// `local` or `system`
    pub source: String,
    pub integrity: String,
    /// Organization and application the agent was resolved for (skills resolve the same way).
    pub org_id: String,
    pub application_id: String,
}

fn not_found(code: &str, detail: String) -> DomainError {
    DomainError::new(ErrorKind::NotFound, code, detail)
}

fn dependency_unresolved(detail: String) -> DomainError {
    DomainError::new(ErrorKind::Unprocessable, "dependency_unresolved", detail)
}

/// Resolves a version of a visible package of `kind`: an exact match first, else the highest version
/// satisfying `req` (a semver range); `None` is the latest. `Ok(None)` when the package is not visible
/// or not of that kind; `Err(Some)`-style misses are reported by the callers.
pub(super) async fn resolve_version(
    state: &AppState,
    application_id: &str,
    id: &str,
    kind: &str,
    req: Option<&str>,
) -> Result<
    Option<(
        crate::infra::database::PackageRow,
        Option<PackageVersionRow>,
    )>,
    DomainError,
> {
    let db = &state.infra.db;
    let Some(pkg) = db.find_visible_package(application_id, id).await? else {
        return Ok(None);
    };
    if pkg.kind != kind {
        return Ok(None);
    }
    let version = match req.map(str::trim).filter(|r| !r.is_empty()) {
        None => db.get_package_version(&pkg.id, &pkg.latest_version).await?,
        Some(r) => {
            if let Some(v) = db.get_package_version(&pkg.id, r).await? {
                Some(v)
            } else {
                let versions = db.list_package_versions(&pkg.id).await?;
                let names: Vec<String> = versions.iter().map(|v| v.version.clone()).collect();
                let picked = pick_version(&names, Some(r)).map(str::to_string);
                picked.and_then(|p| versions.into_iter().find(|v| v.version == p))
            }
        }
    };
    Ok(Some((pkg, version)))
}

/// §11.1 step 5: the agent `@scope/name` (`%40scope/name` accepted) visible to the caller's application,
/// at `version_req` (exact version or semver range; `None` = latest).
///
/// Errors: 404 `agent_not_found`, 404 `version_not_found`.
pub async fn resolve_agent(
    state: &AppState,
    auth: &Principal,
    scope_name: &str,
    version_req: Option<&str>,
) -> Result<ResolvedAgent, DomainError> {
    let app = auth.app()?;
    let missing = || not_found("agent_not_found", format!("Agent {scope_name} not found"));
    let id = PackageId::parse(scope_name).ok_or_else(missing)?;
    let (pkg, version) = resolve_version(state, &app.id, &id.to_string(), "agent", version_req)
        .await?
        .ok_or_else(missing)?;
    let version = version.ok_or_else(|| {
        not_found(
            "version_not_found",
            format!(
                "No version of {id} matches {:?}",
                version_req.unwrap_or("latest")
            ),
        )
    })?;
    Ok(ResolvedAgent {
        package_id: pkg.package_id,
        scope: pkg.scope,
        name: pkg.name,
        version: version.version,
        manifest: version.manifest.0,
        storage_key: version.storage_key,
        source: pkg.source,
        integrity: version.integrity,
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
    })
}

pub(super) async fn load_archive(state: &AppState, key: &str) -> Result<Bytes, DomainError> {
    state
        .infra
        .storage
        .get(key)
        .await
        .map_err(DomainError::internal)?
        .ok_or_else(|| {
            DomainError::internal(format!("package archive {key} is missing from storage"))
        })
}

/// Copies the files of a stored archive into `out`, each name prefixed with `prefix`.
fn copy_entries(
    out: &mut zip::ZipWriter<Cursor<Vec<u8>>>,
    archive: &[u8],
    prefix: &str,
) -> Result<(), DomainError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(archive)).map_err(DomainError::internal)?;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(DomainError::internal)?;
        // The stored name the import validated (`name()` may be a CP437 decoding of it).
        let name = String::from_utf8(entry.name_raw().to_vec()).map_err(DomainError::internal)?;
        if entry.is_dir() || name.starts_with("__MACOSX/") {
            continue;
        }
        out.raw_copy_file_rename(entry, format!("{prefix}{name}"))
            .map_err(DomainError::internal)?;
    }
    Ok(())
}

/// §16.3: the run bundle ZIP — the agent's files at the root and each resolved skill dependency under
/// `skills/@scope/name/`. Errors: 422 `dependency_unresolved` for a skill that cannot be resolved.
pub async fn run_bundle(state: &AppState, resolved: &ResolvedAgent) -> Result<Bytes, DomainError> {
    let agent = load_archive(state, &resolved.storage_key).await?;
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    copy_entries(&mut out, &agent, "")?;
    if let Some(skills) = resolved
        .manifest
        .pointer("/dependencies/skills")
        .and_then(Value::as_object)
    {
        for (id, range) in skills {
            let range = range.as_str();
            let missing = || {
                dependency_unresolved(format!(
                    "Skill {id} {} is not available to this application",
                    range.unwrap_or("")
                ))
            };
            let (_, version) = resolve_version(state, &resolved.application_id, id, "skill", range)
                .await?
                .ok_or_else(missing)?;
            let version = version.ok_or_else(missing)?;
            let archive = load_archive(state, &version.storage_key).await?;
            copy_entries(&mut out, &archive, &format!("skills/{id}/"))?;
        }
    }
    let cursor = out.finish().map_err(DomainError::internal)?;
    Ok(Bytes::from(cursor.into_inner()))
}

/// §16.3: the bundle of an inline run: its manifest and prompt.
pub fn inline_bundle(manifest: &Value, prompt: &str) -> Bytes {
    let manifest = serde_json::to_vec_pretty(manifest).unwrap_or_else(|_| b"{}".to_vec());
    Bytes::from(build_zip(&[
        ("manifest.json", &manifest),
        ("prompt.md", prompt.as_bytes()),
    ]))
}

/// One integration auth a run may use through the sidecar, with its rendered credential header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIntegration {
    /// `@scope/name`
    pub id: String,
    pub auth_key: String,
    /// The integration manifest's `description` (for the agent's tool documentation).
    pub description: Option<String>,
    pub display_name: Option<String>,
    pub authorized_uris: Vec<String>,
    pub allow_all_uris: bool,
    /// The rendered header; its value is a secret (`Debug` prints `[redacted]`).
    pub header: HeaderConfig,
    /// The OAuth connection behind the header (its sidecar may ask for a fresh token); `None` for
    /// pasted credentials.
    pub oauth_connection_id: Option<String>,
}

impl RunIntegration {
    /// The sidecar's `/configure` entry for this integration; `refresh` is where its sidecar asks for a
    /// fresh credential after a 401 (OAuth connections only).
    pub fn to_config(&self, refresh: Option<RefreshConfig>) -> IntegrationConfig {
        IntegrationConfig {
            id: self.id.clone(),
            auth_key: self.auth_key.clone(),
            authorized_uris: self.authorized_uris.clone(),
            allow_all_uris: self.allow_all_uris,
            header: self.header.clone(),
            refresh,
        }
    }
}

/// §11.1 step 8: resolves `manifest.dependencies.integrations` to installed or system versions; every
/// auth that is required (`_meta["dev.appstrate/auth"].required`, default true) or connected needs a
/// `delivery.http` rule and a connection (the end-user's when the actor is one and it exists, else the
/// application's); the credentials are decrypted and the header rendered.
///
/// Errors: 422 `dependency_unresolved`; 422 `unsupported_delivery`; 412 `missing_integration_connection`
/// (naming the integration and auth key).
pub async fn run_integrations(
    state: &AppState,
    auth: &Principal,
    manifest: &Value,
) -> Result<Vec<RunIntegration>, DomainError> {
    let app = auth.app()?;
    let mut out = Vec::new();
    let Some(deps) = manifest
        .pointer("/dependencies/integrations")
        .and_then(Value::as_object)
    else {
        return Ok(out);
    };
    for (id, range) in deps {
        let range = range.as_str();
        let missing = || {
            dependency_unresolved(format!(
                "Integration {id} {} is not installed and is not a system package",
                range.unwrap_or("")
            ))
        };
        let (_, version) = resolve_version(state, &app.id, id, "integration", range)
            .await?
            .ok_or_else(missing)?;
        let version = version.ok_or_else(missing)?;
        let m = &version.manifest.0;
        let Some(auths) = m.get("auths").and_then(Value::as_object) else {
            continue;
        };
        for (auth_key, def) in auths {
            let connection = run_connection(state, auth, id, auth_key).await?;
            let required = auth_required(def);
            if connection.is_none() && !required {
                continue;
            }
            let Some(delivery) = def.pointer("/delivery/http") else {
                return Err(DomainError::new(
                    ErrorKind::Unprocessable,
                    "unsupported_delivery",
                    format!(
                        "Integration {id} auth {auth_key} does not deliver credentials over HTTP \
                         (delivery.http); only delivery.http is supported for runs"
                    ),
                ));
            };
            let Some(connection) = connection else {
                let e = DomainError::new(
                    ErrorKind::PreconditionFailed,
                    "missing_integration_connection",
                    format!(
                        "Integration {id} auth {auth_key} has no connection; create one with \
                         PUT /api/packages/{id}/connections/{auth_key} (or connect an oauth2 auth \
                         with POST /api/integrations/{id}/auths/{auth_key}/connect/oauth2)"
                    ),
                );
                connection_missing(state, auth, manifest, id, auth_key, &e).await;
                return Err(e);
            };
            // OAuth: refreshed before it expires; one that needs a reconnect stops the run here.
            let connection = match crate::integrations::refresh::for_run(state, connection).await {
                Ok(c) => c,
                Err((e, reconnect)) => {
                    if reconnect {
                        connection_missing(state, auth, manifest, id, auth_key, &e).await;
                    }
                    return Err(e);
                }
            };
            let oauth_connection_id = state
                .infra
                .db
                .get_connection_oauth(&connection.id)
                .await?
                .map(|_| connection.id.clone());
            let creds = state
                .keyring
                .decrypt_json(&connection.credentials_encrypted)
                .map_err(|e| DomainError::internal(format!("connection {}: {e}", connection.id)))?;
            let empty = Map::new();
            let creds = creds.as_object().unwrap_or(&empty);
            let (name, value) =
                sidecar::delivery::render_header(delivery, creds).map_err(|e| match e {
                    sidecar::delivery::DeliveryError::MissingCredential(field) => DomainError::new(
                        ErrorKind::PreconditionFailed,
                        "missing_integration_connection",
                        format!(
                            "The connection for integration {id} auth {auth_key} lacks the credential \
                             field {field}"
                        ),
                    ),
                    other => DomainError::new(
                        ErrorKind::Unprocessable,
                        "unsupported_delivery",
                        format!("Integration {id} auth {auth_key}: {other}"),
                    ),
                })?;
            out.push(RunIntegration {
                id: id.clone(),
                auth_key: auth_key.clone(),
                description: m
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                display_name: m
                    .get("display_name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                authorized_uris: def
                    .get("authorized_uris")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                allow_all_uris: def
                    .get("allow_all_uris")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                header: HeaderConfig {
                    name,
                    value: Secret::new(value),
                },
                oauth_connection_id,
            });
        }
    }
    Ok(out)
}

/// Emits `run.connection_missing` for the agent of `manifest` (the run is refused before it exists).
async fn connection_missing(
    state: &AppState,
    auth: &Principal,
    manifest: &Value,
    integration: &str,
    auth_key: &str,
    error: &DomainError,
) {
    let Ok(app) = auth.app() else {
        return;
    };
    let agent = manifest.get("name").and_then(Value::as_str);
    crate::webhooks::emit_connection_missing(
        state,
        &crate::webhooks::ConnectionMissing {
            application_id: &app.id,
            agent_id: agent,
            integration,
            auth_key,
            end_user_id: auth.end_user.as_ref().map(|e| e.id.as_str()),
            code: &error.code,
            message: &error.detail,
        },
    )
    .await;
}

/// §11.1 step 6: applies the top-level `default`s of `manifest.input.schema` to `input` (null counts as
/// `{}`), then validates it. Errors: 400 `validation_failed` with fields `input.<field>`.
pub fn validate_input(manifest: &Value, input: &Value) -> Result<Value, DomainError> {
    let mut input = match input {
        Value::Null => Value::Object(Map::new()),
        Value::Object(_) => input.clone(),
        _ => {
            return Err(DomainError::validation(vec![FieldError::new(
                "input",
                "invalid_type",
                "must be an object",
            )]))
        }
    };
    let Some(schema) = manifest.pointer("/input/schema") else {
        return Ok(input);
    };
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        input.as_object_mut(),
    ) {
        for (key, prop) in props {
            if let Some(default) = prop.get("default") {
                if !obj.contains_key(key) {
                    obj.insert(key.clone(), default.clone());
                }
            }
        }
    }
    let validator = compile_schema(schema).map_err(|e| {
        DomainError::bad_request(
            "invalid_package",
            format!("manifest.input.schema does not compile: {e}"),
        )
    })?;
    let errors = schema_field_errors(&validator, &input, "input");
    if errors.is_empty() {
        Ok(input)
    } else {
        Err(DomainError::validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Value {
        json!({"input": {"schema": {"type": "object",
            "properties": {"topic": {"type": "string", "minLength": 2},
                           "priority": {"type": "string", "enum": ["low", "high"], "default": "low"},
                           "count": {"type": "integer", "maximum": 3}},
            "required": ["topic"], "additionalProperties": false}}})
    }

    fn fields(e: DomainError) -> Vec<(String, &'static str)> {
        assert_eq!(e.code, "validation_failed");
        e.errors
            .unwrap()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn defaults_then_validation() {
        let ok = validate_input(&manifest(), &json!({"topic": "AI"})).unwrap();
        assert_eq!(ok, json!({"topic": "AI", "priority": "low"}));
        let mut got = fields(validate_input(&manifest(), &Value::Null).unwrap_err());
        got.sort();
        assert_eq!(got, vec![("input.topic".to_string(), "required")]);
        let mut got = fields(
            validate_input(
                &manifest(),
                &json!({"topic": 1, "priority": "mid", "count": 9, "extra": true}),
            )
            .unwrap_err(),
        );
        got.sort();
        assert_eq!(
            got,
            vec![
                ("input.count".to_string(), "out_of_range"),
                ("input.extra".to_string(), "unknown_field"),
                ("input.priority".to_string(), "invalid_value"),
                ("input.topic".to_string(), "invalid_type"),
            ]
        );
        assert_eq!(
            validate_input(&json!({}), &json!({"any": 1})).unwrap(),
            json!({"any": 1})
        );
        assert_eq!(
            fields(validate_input(&json!({}), &json!([1])).unwrap_err()),
            vec![("input".to_string(), "invalid_type")]
        );
    }

    #[test]
    fn inline_bundle_has_manifest_and_prompt() {
        let b = inline_bundle(&json!({"name": "x"}), "Hello");
        let mut z = zip::ZipArchive::new(Cursor::new(b.to_vec())).unwrap();
        let mut names: Vec<String> = (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["manifest.json", "prompt.md"]);
    }
}
