//! API keys of the application (owners and admins): the list, the create form with its scopes (the key
//! is shown once) and revocation. A key made here holds at most its creator's role.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{back_or_error, form_viewer, value, viewer_or};
use crate::domain::{DomainError, SCOPES};
use crate::infra::database::{ApiKeyRow, Page};
use crate::people::api_keys;
use crate::state::AppState;
use crate::web::context::Viewer;
use crate::web::form::form_errors;
use crate::web::{error_page, render_status};

#[derive(Serialize)]
struct Row {
    id: String,
    name: String,
    prefix: String,
    scopes: Vec<String>,
    expires: Option<String>,
    last_used: Option<String>,
    created: String,
}

fn row(k: ApiKeyRow) -> Row {
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    Row {
        id: k.id,
        name: k.name,
        prefix: k.key_prefix,
        scopes: k.scopes.0,
        expires: k.expires_at.map(at),
        last_used: k.last_used_at.map(at),
        created: at(k.created_at),
    }
}

#[derive(Serialize, Default)]
struct Draft {
    name: String,
    scopes: Vec<String>,
    expires: String,
}

impl Draft {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        Draft {
            name: value(pairs, "name").unwrap_or("").trim().to_string(),
            scopes: pairs
                .iter()
                .filter(|(k, _)| k == "scopes")
                .map(|(_, v)| v.clone())
                .collect(),
            expires: value(pairs, "expires").unwrap_or("").trim().to_string(),
        }
    }

    /// The JSON API's body; a date (`YYYY-MM-DD`) expires at the end of that day, UTC.
    fn body(&self) -> Value {
        let mut b = Map::new();
        b.insert("name".into(), json!(self.name));
        b.insert("scopes".into(), json!(self.scopes));
        if !self.expires.is_empty() {
            let at = match chrono::NaiveDate::parse_from_str(&self.expires, "%Y-%m-%d") {
                Ok(d) => format!("{d}T23:59:59Z"),
                Err(_) => self.expires.clone(),
            };
            b.insert("expiresAt".into(), json!(at));
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

const FIELDS: [&str; 3] = ["name", "scopes", "expiresAt"];

async fn page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let page = Page {
        limit: 100,
        starting_after: None,
    };
    let keys: Vec<Row> = match api_keys::list(state, &v.principal, &page).await {
        Ok(p) => p.items.into_iter().map(row).collect(),
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    // A key holds at most its creator's role: offer only the scopes the viewer's role allows.
    let scopes: Vec<&str> = SCOPES.iter().copied().filter(|s| v.can(s)).collect();
    let draft = out.draft.unwrap_or_else(|| Draft {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let (created_name, created_key) = out.created.unzip();
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "api_keys.html",
        minijinja::context! {
            title => "API keys", section => "api-keys", ctx => &v.ctx, keys, scopes, draft,
            errors => out.errors, error => out.error, created_name, created_key,
            app_url => &state.config.app_url,
        },
    )
}

/// `GET /api-keys`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/api-keys").await {
        Ok(v) => page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

/// `POST /api-keys`: creates the key and shows it, once.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/api-keys", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let draft = Draft::from_pairs(&pairs);
    let created = async {
        if draft.scopes.is_empty() {
            // The JSON API reads no scopes as all twelve; a form with every box unticked means none.
            return Err(DomainError::validation(vec![
                crate::domain::FieldError::new("scopes", "required", "tick at least one scope"),
            ]));
        }
        api_keys::create(&state, &v.principal, &draft.body()).await
    };
    let out = match created.await {
        Ok((k, secret)) => Outcome {
            status: Some(StatusCode::CREATED),
            created: Some((k.name, secret)),
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

/// `POST /api-keys/{id}/revoke`
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/api-keys", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    back_or_error(
        &v,
        api_keys::revoke(&state, &v.principal, &id).await,
        "/api-keys",
    )
}
