//! Webhooks: the application's webhooks and the create form (the signing secret is shown once), and a
//! webhook's page with its delivery attempts, secret rotation (the new secret shown once), enable/disable
//! and delete.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{agent_choices, back_or_error, form_viewer, value, viewer_or};
use crate::domain::DomainError;
use crate::infra::database::webhooks::WebhookRow;
use crate::infra::database::{Page, Timestamp};
use crate::state::AppState;
use crate::web::context::Viewer;
use crate::web::form::form_errors;
use crate::web::{error_page, render_status, see_other};
use crate::webhooks::{manage, DEFAULT_ROTATION_GRACE_SECONDS, EVENTS};

fn at(t: Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[derive(Serialize)]
struct Row {
    id: String,
    url: String,
    events: Vec<String>,
    agent: Option<String>,
    payload_mode: String,
    enabled: bool,
    created: String,
    previous_secret_until: Option<String>,
}

fn row(w: &WebhookRow) -> Row {
    Row {
        id: w.id.clone(),
        url: w.url.clone(),
        events: serde_json::from_value(w.events.0.clone()).unwrap_or_default(),
        agent: w.package_id.clone(),
        payload_mode: w.payload_mode.clone(),
        enabled: w.enabled,
        created: at(w.created_at),
        previous_secret_until: w
            .previous_secret_expires_at
            .filter(|t| *t > crate::infra::database::now())
            .map(at),
    }
}

/// The create form as submitted.
#[derive(Serialize, Default)]
struct Draft {
    url: String,
    events: Vec<String>,
    agent: String,
    payload_mode: String,
}

impl Draft {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        Draft {
            url: value(pairs, "url").unwrap_or("").trim().to_string(),
            events: pairs
                .iter()
                .filter(|(k, _)| k == "events")
                .map(|(_, v)| v.clone())
                .collect(),
            agent: value(pairs, "agent").unwrap_or("").to_string(),
            payload_mode: value(pairs, "payload_mode").unwrap_or("full").to_string(),
        }
    }

    fn body(&self) -> Value {
        let mut b = Map::new();
        b.insert("url".into(), json!(self.url));
        b.insert("events".into(), json!(self.events));
        b.insert("payloadMode".into(), json!(self.payload_mode));
        if !self.agent.is_empty() {
            b.insert("packageId".into(), json!(self.agent));
        }
        Value::Object(b)
    }
}

#[derive(Default)]
struct Outcome {
    status: Option<StatusCode>,
    error: Option<String>,
    errors: HashMap<String, String>,
    draft: Option<Draft>,
    created: Option<(String, String)>,
}

const FIELDS: [&str; 4] = ["url", "events", "packageId", "payloadMode"];

async fn page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let page = Page {
        limit: 100,
        starting_after: None,
    };
    let webhooks: Vec<Row> = match manage::list(state, &v.principal, &page).await {
        Ok(p) => p.items.iter().map(row).collect(),
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let can_write = v.can("webhooks:write");
    let agents = if can_write {
        agent_choices(state, &v.principal).await
    } else {
        Vec::new()
    };
    let draft = out.draft.unwrap_or_else(|| Draft {
        events: EVENTS.iter().map(|e| e.to_string()).collect(),
        payload_mode: "full".into(),
        ..Default::default()
    });
    let (created_id, created_secret) = out.created.unzip();
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "webhooks.html",
        minijinja::context! {
            title => "Webhooks", section => "webhooks", ctx => &v.ctx, webhooks, agents, can_write,
            events => EVENTS, draft, errors => out.errors, error => out.error,
            created_id, created_secret,
        },
    )
}

/// `GET /webhooks`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/webhooks").await {
        Ok(v) => page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

/// `POST /webhooks`: creates the webhook and shows its secret, once.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/webhooks", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let draft = Draft::from_pairs(&pairs);
    let out = match manage::create(&state, &v.principal, &draft.body()).await {
        Ok((w, secret)) => Outcome {
            status: Some(StatusCode::CREATED),
            created: Some((w.id, secret)),
            ..Default::default()
        },
        Err(e) => {
            let (errors, error) = form_errors(&e, &FIELDS);
            Outcome {
                status: Some(crate::web::status_for(&e)),
                error,
                errors,
                draft: Some(draft),
                ..Default::default()
            }
        }
    };
    page(&state, &v, out).await
}

#[derive(Serialize)]
struct Delivery {
    event_type: String,
    event_id: String,
    attempt: i64,
    status: String,
    status_code: Option<i64>,
    latency_ms: Option<i64>,
    error: Option<String>,
    at: String,
}

async fn detail_page(
    state: &AppState,
    v: &Viewer,
    id: &str,
    secret: Option<String>,
    error: Option<DomainError>,
) -> Response {
    let w = match manage::get(state, &v.principal, id).await {
        Ok(w) => w,
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let page = Page {
        limit: 50,
        starting_after: None,
    };
    let deliveries: Vec<Delivery> = match manage::deliveries(state, &v.principal, id, &page).await {
        Ok(p) => p
            .items
            .into_iter()
            .map(|d| Delivery {
                event_type: d.event_type,
                event_id: d.event_id,
                attempt: d.attempt,
                status: d.status,
                status_code: d.status_code,
                latency_ms: d.latency_ms,
                error: d.error,
                at: at(d.created_at),
            })
            .collect(),
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    let status = error
        .as_ref()
        .map(crate::web::status_for)
        .unwrap_or(StatusCode::OK);
    render_status(
        status,
        "webhook.html",
        minijinja::context! {
            title => format!("Webhook {}", w.url), section => "webhooks", ctx => &v.ctx,
            webhook => row(&w), deliveries, secret, can_write => v.can("webhooks:write"),
            error => error.map(|e| e.detail), grace_hours => DEFAULT_ROTATION_GRACE_SECONDS / 3600,
        },
    )
}

/// `GET /webhooks/{id}`
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match viewer_or(&state, &headers, &format!("/webhooks/{id}")).await {
        Ok(v) => detail_page(&state, &v, &id, None, None).await,
        Err(res) => res,
    }
}

/// `POST /webhooks/{id}/rotate` (`grace=keep|end`): a new secret, shown once; with `keep` the previous
/// one keeps signing next to it for the default window.
pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/webhooks/{id}");
    let v = match form_viewer(&state, &headers, &path, &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let grace = if value(&pairs, "grace") == Some("end") {
        0
    } else {
        DEFAULT_ROTATION_GRACE_SECONDS
    };
    match manage::rotate_secret(&state, &v.principal, &id, grace).await {
        Ok((_, secret)) => detail_page(&state, &v, &id, Some(secret), None).await,
        Err(e) => detail_page(&state, &v, &id, None, Some(e)).await,
    }
}

/// `POST /webhooks/{id}/enabled` (`enabled=true|false`)
pub async fn set_enabled(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/webhooks/{id}");
    let v = match form_viewer(&state, &headers, &path, &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let enabled = value(&pairs, "enabled") == Some("true");
    match manage::update(&state, &v.principal, &id, &json!({ "enabled": enabled })).await {
        Ok(_) => see_other(&path),
        Err(e) => detail_page(&state, &v, &id, None, Some(e)).await,
    }
}

/// `POST /webhooks/{id}/delete`
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/webhooks", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    back_or_error(
        &v,
        manage::delete(&state, &v.principal, &id).await,
        "/webhooks",
    )
}
