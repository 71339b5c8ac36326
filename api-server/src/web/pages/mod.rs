//! The dashboard's pages, one file per area.

pub mod account;
pub mod agents;
pub mod api_keys;
pub mod auth;
pub mod connections;
pub mod end_users;
pub mod members;
pub mod models;
pub mod runs;
pub mod schedules;
pub mod webhooks;

use axum::http::HeaderMap;
use axum::response::Response;

use super::context::{self, NoViewer, Viewer};
use crate::state::AppState;

/// The viewer of a signed-in page, or the answer to give instead (sign-in redirect, no-organization page).
pub async fn viewer_or(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
) -> Result<Viewer, Response> {
    match context::viewer(state, headers, path).await {
        Ok(v) => Ok(v),
        Err(NoViewer::SignedOut) => Err(super::see_other(&format!(
            "/sign-in?next={}",
            url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
        ))),
        Err(NoViewer::NoOrganization(user)) => Err(super::render(
            "no_org.html",
            minijinja::context! { title => "No organization yet", email => user.email },
        )),
        Err(NoViewer::Failed(e)) => Err(super::error_page::<()>(
            &crate::domain::DomainError::internal(e),
            None,
        )),
    }
}

/// A form post by a signed-in viewer: the viewer, or the refusal page (CSRF) / sign-in redirect.
pub async fn form_viewer(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    pairs: &[(String, String)],
) -> Result<Viewer, Response> {
    let v = viewer_or(state, headers, path).await?;
    let token = pairs
        .iter()
        .find(|(k, _)| k == "_csrf")
        .map(|(_, v)| v.as_str());
    context::check_form(state, headers, Some(&v.session.id), token)
        .map_err(|m| super::message_page(axum::http::StatusCode::FORBIDDEN, "Form refused", &m))?;
    Ok(v)
}

/// The value of `name` in a form post.
pub fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Only local paths are followed after sign-in or a context switch (no open redirect).
pub fn local_path(raw: Option<&str>) -> String {
    match raw {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_string(),
        _ => "/agents".to_string(),
    }
}

/// An agent to choose in a form.
#[derive(serde::Serialize)]
pub struct AgentChoice {
    pub id: String,
    pub label: String,
}

/// The agents the viewer can see, for a select (empty when they cannot read agents).
pub async fn agent_choices(state: &AppState, p: &crate::domain::Principal) -> Vec<AgentChoice> {
    agents::agents_of(state, p)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|a| AgentChoice {
            label: match &a.display_name {
                Some(d) if !d.is_empty() => format!("{d} ({})", a.id),
                _ => a.id.clone(),
            },
            id: a.id,
        })
        .collect()
}

/// The answer to a form that did one domain action: back to `back` (303), or the error page.
pub fn back_or_error<T>(
    v: &Viewer,
    result: Result<T, crate::domain::DomainError>,
    back: &str,
) -> Response {
    match result {
        Ok(_) => super::see_other(back),
        Err(e) => super::error_page(&e, Some(&v.ctx)),
    }
}
