//! Agents: the list with the import form, an agent's page with the run form generated from its input
//! schema, and starting a run.

use std::collections::HashMap;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde_json::Value;

use super::{form_viewer, viewer_or};
use crate::domain::{DomainError, Principal};
use crate::infra::database::PackageFilter;
use crate::infra::database::Page;
use crate::packages::{self, AgentSummary, PackageId};
use crate::runs::create::{create_run, AgentSource, CreateRun};
use crate::state::AppState;
use crate::web::context::{check_form, Viewer};
use crate::web::form::{errors_by_field, fields, input, submitted};
use crate::web::{error_page, render_status, see_other};

pub(super) async fn agents_of(
    state: &AppState,
    p: &Principal,
) -> Result<Vec<AgentSummary>, DomainError> {
    p.require_scope("agents:read")?;
    let app = p.app()?;
    let rows = state
        .infra
        .db
        .list_visible_packages(
            &app.id,
            &PackageFilter {
                kind: Some("agent".into()),
            },
            &Page {
                limit: 100,
                starting_after: None,
            },
        )
        .await?
        .items;
    let running = packages::running_runs_by_agent(state, p).await?;
    Ok(packages::agent_summaries(rows, &running))
}

fn list_page(
    v: &Viewer,
    agents: Vec<AgentSummary>,
    status: StatusCode,
    error: Option<String>,
    error_fields: Vec<crate::domain::FieldError>,
) -> Response {
    render_status(
        status,
        "agents.html",
        minijinja::context! {
            title => "Agents", section => "agents", ctx => &v.ctx, agents, error, error_fields,
            can_write => v.can("packages:write"),
        },
    )
}

/// `GET /agents`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = match viewer_or(&state, &headers, "/agents").await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match agents_of(&state, &v.principal).await {
        Ok(agents) => list_page(&v, agents, StatusCode::OK, None, Vec::new()),
        Err(e) => error_page(&e, Some(&v.ctx)),
    }
}

/// `POST /agents/import` (multipart, field `file`): imports an `.afps` and opens the agent.
pub async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let v = match viewer_or(&state, &headers, "/agents").await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let (mut token, mut bytes) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => match field.name() {
                Some("_csrf") => token = field.text().await.ok(),
                Some("file") => match field.bytes().await {
                    Ok(b) => bytes = Some(b),
                    Err(e) => {
                        return import_failed(&state, &v, e.status(), e.body_text(), Vec::new())
                            .await
                    }
                },
                _ => {}
            },
            Ok(None) => break,
            Err(e) => {
                return import_failed(&state, &v, e.status(), e.body_text(), Vec::new()).await
            }
        }
    }
    if let Err(m) = check_form(&state, &headers, Some(&v.session.id), token.as_deref()) {
        return crate::web::message_page(StatusCode::FORBIDDEN, "Form refused", &m);
    }
    let Some(bytes) = bytes.filter(|b| !b.is_empty()) else {
        return import_failed(
            &state,
            &v,
            StatusCode::BAD_REQUEST,
            "Choose an .afps file to import.".into(),
            Vec::new(),
        )
        .await;
    };
    let imported = async {
        v.principal.require_scope("packages:write")?;
        packages::import_package(&state, &v.principal, &bytes).await
    };
    match imported.await {
        Ok(out) => {
            let p = out.package;
            if p.kind == "agent" {
                see_other(&format!("/agents/{}/{}", p.scope, p.name))
            } else {
                see_other("/agents")
            }
        }
        Err(e) => {
            let status = crate::web::status_for(&e);
            let fields = e.errors.clone().unwrap_or_default();
            import_failed(&state, &v, status, e.detail, fields).await
        }
    }
}

async fn import_failed(
    state: &AppState,
    v: &Viewer,
    status: StatusCode,
    message: String,
    fields: Vec<crate::domain::FieldError>,
) -> Response {
    let agents = agents_of(state, &v.principal).await.unwrap_or_default();
    list_page(
        v,
        agents,
        status,
        Some(format!("The import failed: {message}")),
        fields,
    )
}

/// The agent `scope/name` as the viewer sees it, with its latest manifest and versions.
async fn agent(
    state: &AppState,
    p: &Principal,
    scope: &str,
    name: &str,
) -> Result<AgentData, DomainError> {
    p.require_scope("agents:read")?;
    let id = PackageId::from_parts(scope, name)
        .ok_or_else(|| DomainError::not_found(format!("No agent {scope}/{name}")))?;
    let pkg = packages::visible_package(state, p, &id)
        .await?
        .filter(|p| p.kind == "agent")
        .ok_or_else(|| DomainError::not_found(format!("No agent {id} in this application")))?;
    let db = &state.infra.db;
    let manifest = db
        .get_package_version(&pkg.id, &pkg.latest_version)
        .await?
        .map(|v| v.manifest.0)
        .unwrap_or(Value::Null);
    let mut versions = db.list_package_versions(&pkg.id).await?;
    packages::sort_versions_desc(&mut versions, |v| &v.version);
    let running = packages::running_runs_by_agent(state, p).await?;
    let summary = packages::agent_summaries(
        vec![crate::infra::database::PackageWithManifest {
            package: pkg,
            manifest: sqlx::types::Json(manifest.clone()),
        }],
        &running,
    )
    .remove(0);
    let requires = requirements(state, p, &manifest).await;
    Ok(AgentData {
        summary,
        manifest,
        versions: versions.into_iter().map(|v| v.version).collect(),
        requires,
    })
}

/// An agent with what its page shows besides the summary.
struct AgentData {
    summary: AgentSummary,
    manifest: Value,
    versions: Vec<String>,
    requires: Vec<Requirement>,
}

/// An integration the agent depends on, and whether this application is connected to it.
#[derive(serde::Serialize)]
struct Requirement {
    id: String,
    /// `connected`, `expiring`, `needs_reconnect`, `revoked`, or `not connected`.
    status: String,
    message: Option<String>,
}

async fn requirements(state: &AppState, p: &Principal, manifest: &Value) -> Vec<Requirement> {
    let Some(deps) = manifest
        .pointer("/dependencies/integrations")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for id in deps.keys() {
        let conns = match PackageId::parse(id) {
            Some(pid) => crate::integrations::status::list(state, p, &pid)
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let own = conns.into_iter().find(|c| c.end_user_id.is_none());
        out.push(Requirement {
            id: id.clone(),
            status: own
                .as_ref()
                .map_or_else(|| "not connected".to_string(), |c| c.status.clone()),
            message: own.and_then(|c| c.status_message),
        });
    }
    out
}

fn agent_page(
    v: &Viewer,
    status: StatusCode,
    a: &AgentData,
    values: &HashMap<String, String>,
    errors: &HashMap<String, String>,
    error: Option<String>,
) -> Response {
    let (summary, manifest, versions) = (&a.summary, &a.manifest, &a.versions);
    let schema = manifest.pointer("/input/schema");
    let pretty = |p: &str| {
        manifest
            .pointer(p)
            .map(|s| serde_json::to_string_pretty(s).unwrap_or_default())
    };
    render_status(
        status,
        "agent.html",
        minijinja::context! {
            title => summary.display_name.clone().unwrap_or_else(|| summary.id.clone()),
            section => "agents", ctx => &v.ctx, agent => summary, versions,
            fields => fields(schema, values, errors), error,
            can_run => v.can("agents:run"), requires => &a.requires,
            requires_missing => a.requires.iter().any(|r| r.status != "connected"),
            input_schema => pretty("/input/schema"), output_schema => pretty("/output/schema"),
        },
    )
}

/// `GET /agents/{scope}/{name}`
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((scope, name)): Path<(String, String)>,
) -> Response {
    let path = format!("/agents/{scope}/{name}");
    let v = match viewer_or(&state, &headers, &path).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match agent(&state, &v.principal, &scope, &name).await {
        Ok(a) => agent_page(
            &v,
            StatusCode::OK,
            &a,
            &HashMap::new(),
            &HashMap::new(),
            None,
        ),
        Err(e) => error_page(&e, Some(&v.ctx)),
    }
}

/// `POST /agents/{scope}/{name}/run`: starts a run with the form's input and opens its page; a
/// validation error re-renders the form with the message next to each field.
pub async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((scope, name)): Path<(String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/agents/{scope}/{name}");
    let v = match form_viewer(&state, &headers, &path, &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let a = match agent(&state, &v.principal, &scope, &name).await {
        Ok(a) => a,
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let schema = a.manifest.pointer("/input/schema");
    let values = submitted(&pairs);
    let again = |errors: HashMap<String, String>, error: Option<String>, status: StatusCode| {
        agent_page(&v, status, &a, &values, &errors, error)
    };
    let input = match input(schema, &values) {
        Ok(i) => i,
        Err(errors) => {
            return again(
                errors,
                Some("Some fields need attention.".into()),
                StatusCode::BAD_REQUEST,
            )
        }
    };
    let started = async {
        v.principal.require_scope("agents:run")?;
        create_run(
            &state,
            &v.principal,
            CreateRun {
                agent: AgentSource::Package {
                    scope_name: format!("{scope}/{name}"),
                    version: None,
                },
                input,
                model: None,
                schedule_id: None,
                scheduled_for: None,
            },
        )
        .await
    };
    match started.await {
        Ok(run) => see_other(&format!("/runs/{}", run.id)),
        Err(e) if e.errors.is_some() => {
            let (by_field, other) = errors_by_field(e.errors.as_deref().unwrap_or(&[]), schema);
            let summary_line = if other.is_empty() {
                "Some fields need attention.".to_string()
            } else {
                other.join("; ")
            };
            again(by_field, Some(summary_line), crate::web::status_for(&e))
        }
        Err(e) => {
            let status = crate::web::status_for(&e);
            again(HashMap::new(), Some(e.detail), status)
        }
    }
}
