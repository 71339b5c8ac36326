//! Integrations and connections of the application: per integration auth, the connections with their
//! lifecycle status; for oauth2 auths the OAuth clients (register one, with the exact redirect URI to give
//! the provider) and the **Connect** button; for the other auths the credential form. Disconnect revokes
//! the grant at the provider when it can.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde_json::{json, Map, Value};

use super::{back_or_error, form_viewer, value, viewer_or};
use crate::domain::{DomainError, FieldError};
use crate::integrations::{clients, connect, overview};
use crate::packages::{connections, PackageId};
use crate::state::AppState;
use crate::web::context::Viewer;
use crate::web::form::form_errors;
use crate::web::{error_page, render, render_status};

#[derive(Default)]
struct Outcome {
    status: Option<StatusCode>,
    notice: Option<String>,
    /// `<package>/<auth>` of the form the error belongs to.
    target: Option<String>,
    error: Option<String>,
    errors: HashMap<String, String>,
}

async fn page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let integrations = match overview::list(state, &v.principal).await {
        Ok(i) => i,
        Err(e) => return error_page(&e, Some(&v.ctx)),
    };
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "connections.html",
        minijinja::context! {
            title => "Connections", section => "connections", ctx => &v.ctx, integrations,
            can_write => v.can("packages:write"), notice => out.notice, target => out.target,
            error => out.error, errors => out.errors,
        },
    )
}

/// `GET /connections`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/connections").await {
        Ok(v) => page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

fn package(scope: &str, name: &str) -> Result<PackageId, DomainError> {
    PackageId::parse(&format!("{scope}/{name}"))
        .ok_or_else(|| DomainError::not_found(format!("Integration {scope}/{name} not found")))
}

fn failed(target: String, e: DomainError, known: &[&str]) -> Outcome {
    let (errors, error) = form_errors(&e, known);
    Outcome {
        status: Some(crate::web::status_for(&e)),
        target: Some(target),
        error: error.or_else(|| Some(e.detail.clone())),
        errors,
        ..Default::default()
    }
}

/// `POST /connections/{scope}/{name}/{auth}/client`: registers the provider's OAuth client (the secret is
/// stored encrypted and never shown again).
pub async fn add_client(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((scope, name, auth)): Path<(String, String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/connections", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let mut body = Map::new();
    for (field, key) in [("client_id", "clientId"), ("client_secret", "clientSecret")] {
        if let Some(x) = value(&pairs, field)
            .map(str::trim)
            .filter(|x| !x.is_empty())
        {
            body.insert(key.into(), json!(x));
        }
    }
    let target = format!("{scope}/{name}/{auth}");
    let done = async {
        v.principal.require_scope("packages:write")?;
        let id = package(&scope, &name)?;
        clients::create_client(&state, &v.principal, &id, &auth, &Value::Object(body)).await
    };
    let out = match done.await {
        Ok(c) => Outcome {
            status: Some(StatusCode::CREATED),
            notice: Some(format!(
                "OAuth client {} registered for {scope}/{name}. Its redirect URI at the provider must be exactly {}",
                c.client_id, c.callback_url
            )),
            ..Default::default()
        },
        Err(e) => failed(target, e, &["clientId", "clientSecret"]),
    };
    page(&state, &v, out).await
}

/// `POST /connections/{scope}/{name}/{auth}/connect`: starts the OAuth2 flow and sends the browser to
/// the provider. The page carries the authorization link (the script follows it at once; the
/// Content-Security-Policy's `form-action 'self'` forbids a form post from redirecting off-site).
pub async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((scope, name, auth)): Path<(String, String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/connections", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let target = format!("{scope}/{name}/{auth}");
    let started = async {
        v.principal.require_scope("packages:write")?;
        let id = package(&scope, &name)?;
        connect::start(&state, &v.principal, &id, &auth, &json!({})).await
    };
    match started.await {
        Ok(s) => {
            let host = url::Url::parse(&s.authorization_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            render(
                "connect.html",
                minijinja::context! {
                    title => "Connecting", ctx => &v.ctx, url => s.authorization_url, host,
                    integration => format!("{scope}/{name}"), scopes => s.scopes,
                },
            )
        }
        Err(e) => page(&state, &v, failed(target, e, &[])).await,
    }
}

/// `POST /connections/{scope}/{name}/{auth}/credentials`: stores pasted credentials (`cred.<field>`).
pub async fn credentials(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((scope, name, auth)): Path<(String, String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/connections", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let mut creds = Map::new();
    for (k, x) in &pairs {
        if let Some(field) = k.strip_prefix("cred.") {
            if !x.is_empty() {
                creds.insert(field.to_string(), json!(x));
            }
        }
    }
    let target = format!("{scope}/{name}/{auth}");
    let done = async {
        v.principal.require_scope("packages:write")?;
        let id = package(&scope, &name)?;
        connections::put_connection(
            &state,
            &v.principal,
            &id,
            &auth,
            &json!({ "credentials": creds }),
        )
        .await
    };
    let out = match done.await {
        Ok(_) => Outcome {
            notice: Some(format!("{scope}/{name} connected.")),
            ..Default::default()
        },
        Err(e) => {
            // `credentials.<field>` → `<field>`, shown next to the field.
            let e = DomainError {
                errors: e.errors.clone().map(|list| {
                    list.into_iter()
                        .map(|f| {
                            FieldError::new(
                                f.field.trim_start_matches("credentials.").to_string(),
                                "invalid",
                                f.message,
                            )
                        })
                        .collect()
                }),
                ..e
            };
            let known: Vec<String> = pairs
                .iter()
                .filter_map(|(k, _)| k.strip_prefix("cred.").map(str::to_string))
                .collect();
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            failed(target, e, &known)
        }
    };
    page(&state, &v, out).await
}

/// `POST /connections/{scope}/{name}/{auth}/disconnect`
pub async fn disconnect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((scope, name, auth)): Path<(String, String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/connections", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let done = async {
        v.principal.require_scope("packages:write")?;
        let id = package(&scope, &name)?;
        connections::delete_connection(&state, &v.principal, &id, &auth).await
    };
    back_or_error(&v, done.await, "/connections")
}
