//! The signed-in person's own pages: the profile with the active sessions (each can be signed out) and
//! the password change, and — for administrators — the instance page, which shows what `/health` knows.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;

use super::{form_viewer, value, viewer_or};
use crate::domain::DomainError;
use crate::infra::database::{now, Timestamp};
use crate::people::accounts;
use crate::state::AppState;
use crate::web::context::Viewer;
use crate::web::form::form_errors;
use crate::web::{error_page, render_status, see_other};

fn at(t: Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[derive(Serialize)]
struct Session {
    id: String,
    current: bool,
    ip: Option<String>,
    user_agent: Option<String>,
    created: String,
    expires: String,
}

#[derive(Default)]
struct Outcome {
    status: Option<StatusCode>,
    notice: Option<String>,
    error: Option<String>,
    errors: std::collections::HashMap<String, String>,
}

async fn profile_page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let sessions = match state.infra.db.list_sessions(&v.user.id, now()).await {
        Ok(s) => s,
        Err(e) => return error_page(&DomainError::from(e), Some(&v.ctx)),
    };
    let sessions: Vec<Session> = sessions
        .into_iter()
        .map(|s| Session {
            current: s.id == v.session.id,
            ip: s.ip,
            user_agent: s.user_agent,
            created: at(s.created_at),
            expires: at(s.expires_at),
            id: s.id,
        })
        .collect();
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "profile.html",
        minijinja::context! {
            title => "Your account", ctx => &v.ctx, name => &v.user.name, email => &v.user.email,
            sessions, notice => out.notice, error => out.error, errors => out.errors,
            has_password => v.user.password_hash.is_some(),
        },
    )
}

/// `GET /profile`
pub async fn profile(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/profile").await {
        Ok(v) => profile_page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

/// `POST /profile/sessions/{id}/revoke`: signs that browser out (this one too, when it is this one).
pub async fn revoke_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/profile", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match state.infra.db.revoke_session(&v.user.id, &id).await {
        Ok(()) if id == v.session.id => see_other("/sign-in"),
        Ok(()) => see_other("/profile"),
        Err(e) => error_page(&DomainError::from(e), Some(&v.ctx)),
    }
}

/// `POST /profile/password`: every other session is signed out.
pub async fn change_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/profile", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let current = value(&pairs, "current_password").unwrap_or("");
    let new = value(&pairs, "new_password").unwrap_or("");
    let out = match accounts::change_password(&state, &v.user, current, new, &v.session.id).await {
        Ok(()) => Outcome {
            notice: Some("Password changed; your other sessions were signed out.".into()),
            ..Default::default()
        },
        Err(e) => {
            let e = DomainError::from(e);
            let (errors, error) = form_errors(&e, &["currentPassword", "newPassword"]);
            Outcome {
                status: Some(crate::web::status_for(&e)),
                error,
                errors,
                ..Default::default()
            }
        }
    };
    profile_page(&state, &v, out).await
}

/// `GET /instance` (administrators): tier, adapter per concern, checks, Docker pool, versions.
pub async fn instance(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let v = match viewer_or(&state, &headers, "/instance").await {
        Ok(v) => v,
        Err(res) => return res,
    };
    if let Err(e) = v.principal.require_permission("org:write") {
        return error_page(&e, Some(&v.ctx));
    }
    let (_, health) = crate::instance::health(&state).await;
    let pretty = serde_json::to_string_pretty(&health).unwrap_or_default();
    render_status(
        StatusCode::OK,
        "instance.html",
        minijinja::context! {
            title => "Instance", section => "instance", ctx => &v.ctx, health, pretty,
        },
    )
}
