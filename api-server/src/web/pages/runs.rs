//! Runs: the list with filters (status, agent, schedule, date range) and pagination, a run's page with
//! its live logs (the page's script follows the existing SSE stream), result, cancel and re-run.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{form_viewer, viewer_or};
use crate::domain::{DomainError, Principal};
use crate::infra::database::runs::{RunFilter, RunRow};
use crate::infra::database::PackageFilter;
use crate::infra::database::Page;
use crate::runs::access::{cancel_run, visible_run};
use crate::runs::create::{create_run, AgentSource, CreateRun};
use crate::state::AppState;
use crate::web::{error_page, render, render_status, see_other};

const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "success",
    "failed",
    "timeout",
    "cancelled",
];
const PAGE_SIZE: u32 = 25;

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    schedule: String,
    /// `YYYY-MM-DD`, inclusive.
    #[serde(default)]
    since: String,
    /// `YYYY-MM-DD`, inclusive.
    #[serde(default)]
    until: String,
    #[serde(default)]
    after: String,
}

#[derive(Serialize)]
struct RunLine {
    id: String,
    number: i64,
    agent: String,
    status: String,
    created_at: String,
    duration: String,
    cost: String,
}

fn when(t: &crate::infra::database::Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn duration(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms >= 1000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms} ms"),
        None => "—".into(),
    }
}

fn cost(c: Option<f64>) -> String {
    c.map(|c| format!("${c:.4}")).unwrap_or_else(|| "—".into())
}

fn agent_id(r: &RunRow) -> String {
    format!("{}/{}", r.agent_scope, r.agent_name)
}

fn date(raw: &str, field: &str) -> Result<Option<chrono::NaiveDate>, DomainError> {
    if raw.is_empty() {
        return Ok(None);
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| {
            DomainError::invalid_request(format!(
                "{field} must be a date (YYYY-MM-DD), got {raw:?}"
            ))
            .with_param(field)
        })
}

/// The run filter of the query, checked.
fn filter(f: &Filters) -> Result<RunFilter, DomainError> {
    if !f.status.is_empty() && !STATUSES.contains(&f.status.as_str()) {
        return Err(DomainError::invalid_request(format!(
            "Unknown status {:?}",
            f.status
        )));
    }
    let since = date(&f.since, "since")?;
    let until = date(&f.until, "until")?;
    let start = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    Ok(RunFilter {
        status: Some(f.status.clone()).filter(|s| !s.is_empty()),
        package_id: Some(f.agent.clone()).filter(|s| !s.is_empty()),
        schedule_id: Some(f.schedule.clone()).filter(|s| !s.is_empty()),
        created_from: since.and_then(start),
        created_before: until.and_then(|d| d.succ_opt()).and_then(start),
        ..Default::default()
    })
}

async fn agent_ids(state: &AppState, p: &Principal) -> Vec<String> {
    let Ok(app) = p.app() else { return Vec::new() };
    state
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
        .await
        .map(|p| p.items.into_iter().map(|r| r.package.package_id).collect())
        .unwrap_or_default()
}

/// `GET /runs`
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Response {
    let v = match viewer_or(&state, &headers, "/runs").await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let listed = async {
        v.principal.require_scope("runs:read")?;
        let app = v.principal.app()?;
        let rf = filter(&f)?;
        Ok::<_, DomainError>(
            state
                .infra
                .db
                .list_runs(
                    &app.id,
                    &rf,
                    &Page {
                        limit: PAGE_SIZE,
                        starting_after: Some(f.after.clone()).filter(|a| !a.is_empty()),
                    },
                )
                .await?,
        )
    };
    let (runs, has_more, error) = match listed.await {
        Ok(page) => (page.items, page.has_more, None),
        Err(e) if e.kind == crate::domain::ErrorKind::Invalid => {
            (Vec::new(), false, Some(e.detail))
        }
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let query = |after: &str| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, val) in [
            ("status", &f.status),
            ("agent", &f.agent),
            ("schedule", &f.schedule),
            ("since", &f.since),
            ("until", &f.until),
        ] {
            if !val.is_empty() {
                q.append_pair(k, val);
            }
        }
        if !after.is_empty() {
            q.append_pair("after", after);
        }
        format!("/runs?{}", q.finish())
    };
    let next_url = if has_more {
        runs.last().map(|r| query(&r.id))
    } else {
        None
    };
    let first_page_url = (!f.after.is_empty()).then(|| query(""));
    let lines: Vec<RunLine> = runs
        .iter()
        .map(|r| RunLine {
            id: r.id.clone(),
            number: r.run_number,
            agent: agent_id(r),
            status: r.status.clone(),
            created_at: when(&r.created_at),
            duration: duration(r.duration),
            cost: cost(r.cost),
        })
        .collect();
    render_status(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        "runs.html",
        minijinja::context! {
            title => "Runs", section => "runs", ctx => &v.ctx, runs => lines, filters => &f,
            statuses => STATUSES, agent_ids => agent_ids(&state, &v.principal).await,
            next_url, first_page_url, error,
        },
    )
}

/// What the run page and its result fragment show.
#[derive(Serialize)]
struct RunView {
    id: String,
    number: i64,
    agent: String,
    agent_path: String,
    status: String,
    terminal: bool,
    rerunnable: bool,
    duration: String,
    created_at: String,
    model: String,
    tokens: String,
    cost: String,
    input: String,
    error: Option<String>,
    output: Option<String>,
    output_is_text: bool,
}

fn tokens(usage: &Value) -> String {
    let n = |k: &str| usage.get(k).and_then(Value::as_i64);
    match (
        n("input_tokens").or(n("inputTokens")),
        n("output_tokens").or(n("outputTokens")),
    ) {
        (Some(i), Some(o)) => format!("{i} in, {o} out"),
        _ if usage.as_object().is_some_and(|o| !o.is_empty()) => usage.to_string(),
        _ => "—".into(),
    }
}

fn view(r: &RunRow) -> RunView {
    let output = r
        .result
        .as_ref()
        .map(|j| j.0.clone())
        .or_else(|| r.last_output.as_ref().map(|j| j.0.clone()));
    let (output, output_is_text) = match output {
        None | Some(Value::Null) => (None, false),
        Some(Value::String(s)) => (Some(s), true),
        Some(v) => (
            Some(serde_json::to_string_pretty(&v).unwrap_or_default()),
            false,
        ),
    };
    RunView {
        id: r.id.clone(),
        number: r.run_number,
        agent: agent_id(r),
        agent_path: agent_id(r),
        status: r.status.clone(),
        terminal: r.is_terminal(),
        rerunnable: r.kind == "package" && r.package_id.is_some(),
        duration: duration(r.duration),
        created_at: when(&r.created_at),
        model: r.model_label.clone().unwrap_or_else(|| "—".into()),
        tokens: tokens(&r.token_usage.0),
        cost: cost(r.cost),
        input: serde_json::to_string_pretty(&r.input.0).unwrap_or_default(),
        error: r.error.clone(),
        output,
        output_is_text,
    }
}

async fn run_of(state: &AppState, p: &Principal, id: &str) -> Result<RunRow, DomainError> {
    p.require_scope("runs:read")?;
    visible_run(state, p, id).await
}

/// `GET /runs/{id}`
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let v = match viewer_or(&state, &headers, &format!("/runs/{id}")).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let run = match run_of(&state, &v.principal, &id).await {
        Ok(r) => r,
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let logs = match state.infra.db.list_logs(&run.id, None, &[], 500).await {
        Ok(l) => l,
        Err(e) => return error_page(&DomainError::from(e), Some(&v.ctx)),
    };
    let logs: Vec<_> = logs
        .iter()
        .map(|l| {
            minijinja::context! {
                id => l.id, level => l.level.clone(),
                message => if l.message.is_empty() { l.event.clone() } else { l.message.clone() },
            }
        })
        .collect();
    let stream_url = format!("/api/realtime/runs/{}?appId={}", run.id, v.app().id);
    render(
        "run.html",
        minijinja::context! {
            title => format!("Run #{}", run.run_number), section => "runs", ctx => &v.ctx,
            run => view(&run), logs, stream_url, can_run => v.can("agents:run"),
        },
    )
}

/// `GET /runs/{id}/result`: the result section alone (fetched by the page when the run ends).
pub async fn result(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let v = match viewer_or(&state, &headers, &format!("/runs/{id}")).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match run_of(&state, &v.principal, &id).await {
        Ok(run) => render("run_result.html", minijinja::context! { run => view(&run) }),
        Err(e) => error_page(&e, Some(&v.ctx)),
    }
}

/// `POST /runs/{id}/cancel`
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let back = format!("/runs/{id}");
    let v = match form_viewer(&state, &headers, &back, &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match cancel_run(&state, &v.principal, &id).await {
        Ok(_) => see_other(&back),
        Err(e) if e.code == "not_cancellable" => see_other(&back),
        Err(e) => error_page(&e, Some(&v.ctx)),
    }
}

/// `POST /runs/{id}/rerun`: a new run of the same agent with the same input.
pub async fn rerun(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, &format!("/runs/{id}"), &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let again = async {
        v.principal.require_scope("agents:run")?;
        let run = run_of(&state, &v.principal, &id).await?;
        if run.kind != "package" {
            return Err(DomainError::invalid_request(
                "Only runs of an installed agent can be run again from the dashboard",
            ));
        }
        create_run(
            &state,
            &v.principal,
            CreateRun {
                agent: AgentSource::Package {
                    scope_name: agent_id(&run),
                    version: run.version_ref.clone(),
                },
                input: run.input.0.clone(),
                model: None,
                schedule_id: None,
                scheduled_for: None,
            },
        )
        .await
    };
    match again.await {
        Ok(run) => see_other(&format!("/runs/{}", run.id)),
        Err(e) => error_page(&e, Some(&v.ctx)),
    }
}
