//! Schedules: the application's schedules with enable/disable and delete, and the create form, which
//! shows the next occurrences of the expression in its time zone before saving.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{agent_choices, back_or_error, form_viewer, value, viewer_or};
use crate::domain::{DomainError, FieldError};
use crate::infra::database::schedules::ScheduleRow;
use crate::infra::database::Page;
use crate::schedules::manage;
use crate::state::AppState;
use crate::web::context::Viewer;
use crate::web::form::form_errors;
use crate::web::{error_page, render_status};

/// How many occurrences the preview shows.
const PREVIEW: usize = 5;

#[derive(Serialize)]
struct Row {
    id: String,
    name: String,
    agent: String,
    cron: String,
    timezone: String,
    enabled: bool,
    next: Option<String>,
    last: Option<String>,
    disabled_reason: Option<String>,
}

fn row(s: ScheduleRow) -> Row {
    let at = |t: Option<crate::infra::database::Timestamp>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
    };
    Row {
        name: s.name.clone().unwrap_or_else(|| s.package_id.clone()),
        agent: s.package_id,
        cron: s.cron_expression,
        timezone: s.timezone,
        enabled: s.enabled,
        next: at(s.next_run_at),
        last: at(s.last_run_at),
        disabled_reason: s.disabled_reason,
        id: s.id,
    }
}

/// The create form as submitted (kept on an error or a preview).
#[derive(Serialize, Default)]
struct Draft {
    agent: String,
    name: String,
    cron: String,
    timezone: String,
    input: String,
}

impl Draft {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let get = |k: &str| value(pairs, k).unwrap_or("").trim().to_string();
        Draft {
            agent: get("agent"),
            name: get("name"),
            cron: get("cron_expression"),
            timezone: get("timezone"),
            input: get("input"),
        }
    }

    /// The JSON API's body for this draft (an input that is not a JSON object is a field error).
    fn body(&self) -> Result<Value, DomainError> {
        let mut b = Map::new();
        b.insert("cron_expression".into(), json!(self.cron));
        if !self.timezone.is_empty() {
            b.insert("timezone".into(), json!(self.timezone));
        }
        if !self.name.is_empty() {
            b.insert("name".into(), json!(self.name));
        }
        if !self.input.is_empty() {
            match serde_json::from_str::<Value>(&self.input) {
                Ok(v @ Value::Object(_)) => {
                    b.insert("input".into(), v);
                }
                _ => {
                    return Err(DomainError::validation(vec![FieldError::new(
                        "input",
                        "invalid_type",
                        "must be a JSON object, e.g. {\"topic\": \"news\"}",
                    )]))
                }
            }
        }
        Ok(Value::Object(b))
    }
}

#[derive(Default)]
struct Outcome {
    status: Option<StatusCode>,
    error: Option<String>,
    errors: HashMap<String, String>,
    draft: Draft,
    preview: Vec<String>,
    notice: Option<String>,
}

async fn page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let listed = manage::list(
        state,
        &v.principal,
        None,
        &Page {
            limit: 100,
            starting_after: None,
        },
    )
    .await;
    let schedules: Vec<Row> = match listed {
        Ok(p) => p.items.into_iter().map(row).collect(),
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let can_write = v.can("schedules:write") && v.can("agents:run");
    let agents = if can_write {
        agent_choices(state, &v.principal).await
    } else {
        Vec::new()
    };
    let mut draft = out.draft;
    if draft.timezone.is_empty() {
        draft.timezone = "UTC".into();
    }
    let errors = out.errors;
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "schedules.html",
        minijinja::context! {
            title => "Schedules", section => "schedules", ctx => &v.ctx, schedules, agents, can_write,
            draft, errors, error => out.error, preview => out.preview, notice => out.notice,
        },
    )
}

/// `GET /schedules`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/schedules").await {
        Ok(v) => page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

/// The form's fields, by the names the domain reports them with.
const FIELDS: [&str; 5] = ["agent", "name", "cron_expression", "timezone", "input"];

fn failed(e: DomainError, draft: Draft) -> Outcome {
    let (errors, error) = form_errors(&e, &FIELDS);
    Outcome {
        status: Some(crate::web::status_for(&e)),
        error,
        errors,
        draft,
        ..Default::default()
    }
}

/// `POST /schedules/preview`: the next occurrences of the expression, before saving.
pub async fn preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/schedules", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let draft = Draft::from_pairs(&pairs);
    let tz = if draft.timezone.is_empty() {
        "UTC"
    } else {
        draft.timezone.as_str()
    };
    let out = match manage::next_occurrences(&draft.cron, tz, PREVIEW) {
        Ok(times) => {
            let zone: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::UTC);
            Outcome {
                preview: times
                    .iter()
                    .map(|t| {
                        t.with_timezone(&zone)
                            .format("%a %Y-%m-%d %H:%M %Z")
                            .to_string()
                    })
                    .collect(),
                draft,
                ..Default::default()
            }
        }
        Err(e) => failed(e, draft),
    };
    page(&state, &v, out).await
}

/// `POST /schedules`: creates the schedule (it runs as the signed-in user, with their role at each fire).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/schedules", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let draft = Draft::from_pairs(&pairs);
    let created = async {
        if draft.agent.is_empty() {
            return Err(DomainError::validation(vec![FieldError::new(
                "agent",
                "required",
                "choose the agent to schedule",
            )]));
        }
        let body = draft.body()?;
        manage::create(&state, &v.principal, &draft.agent, &body).await
    };
    let out = match created.await {
        Ok(s) => Outcome {
            status: Some(StatusCode::CREATED),
            notice: Some(format!(
                "Schedule created; next run {}.",
                s.next_run_at
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "—".into())
            )),
            ..Default::default()
        },
        Err(e) => failed(e, draft),
    };
    page(&state, &v, out).await
}

/// `POST /schedules/{id}/enabled` (`enabled=true|false`)
pub async fn set_enabled(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/schedules", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let enabled = value(&pairs, "enabled") == Some("true");
    let updated = manage::update(&state, &v.principal, &id, &json!({ "enabled": enabled })).await;
    back_or_error(&v, updated, "/schedules")
}

/// `POST /schedules/{id}/delete`
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/schedules", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    back_or_error(
        &v,
        manage::delete(&state, &v.principal, &id).await,
        "/schedules",
    )
}
