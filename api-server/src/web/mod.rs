//! The web dashboard: server-rendered pages over the domain, served by `appstrate` itself at `APP_URL`.
//!
//! - Pages call the domain directly (packages, runs, people) with the viewer's [`crate::domain::Principal`],
//!   never the JSON API over loopback; authorization is the same permission table.
//! - Templates (minijinja, auto-escaped) and assets are embedded in the binary; assets are served under
//!   content-hashed names with a one-year cache (`assets.rs`). A little hand-written JavaScript enhances
//!   the pages (live logs over the existing SSE stream, the context switcher); every form works without it.
//! - Every page answers with a strict Content-Security-Policy (no inline script or style), `frame-ancestors
//!   'none'`, `nosniff`, `Referrer-Policy: same-origin` and `Cache-Control: no-store`; every form carries a
//!   CSRF token (`context.rs`).
//! - Domain errors are shown the dashboard's way: next to the field for validation errors, otherwise on an
//!   error page with the status of their kind.

mod assets;
mod context;
mod form;
mod pages;

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;
use serde::Serialize;

use crate::domain::{DomainError, ErrorKind};
use crate::state::AppState;

pub use context::CONTEXT_COOKIE;

/// The policy of every page: scripts and styles only from this origin, no framing, forms only to here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: [(&str, &str); 22] = [
    ("base.html", include_str!("../../web/templates/base.html")),
    (
        "sign_in.html",
        include_str!("../../web/templates/sign_in.html"),
    ),
    ("error.html", include_str!("../../web/templates/error.html")),
    (
        "agents.html",
        include_str!("../../web/templates/agents.html"),
    ),
    ("agent.html", include_str!("../../web/templates/agent.html")),
    ("runs.html", include_str!("../../web/templates/runs.html")),
    ("run.html", include_str!("../../web/templates/run.html")),
    (
        "run_result.html",
        include_str!("../../web/templates/run_result.html"),
    ),
    (
        "no_org.html",
        include_str!("../../web/templates/no_org.html"),
    ),
    (
        "members.html",
        include_str!("../../web/templates/members.html"),
    ),
    (
        "invite.html",
        include_str!("../../web/templates/invite.html"),
    ),
    (
        "macros.html",
        include_str!("../../web/templates/macros.html"),
    ),
    (
        "schedules.html",
        include_str!("../../web/templates/schedules.html"),
    ),
    (
        "webhooks.html",
        include_str!("../../web/templates/webhooks.html"),
    ),
    (
        "webhook.html",
        include_str!("../../web/templates/webhook.html"),
    ),
    (
        "api_keys.html",
        include_str!("../../web/templates/api_keys.html"),
    ),
    (
        "models.html",
        include_str!("../../web/templates/models.html"),
    ),
    (
        "profile.html",
        include_str!("../../web/templates/profile.html"),
    ),
    (
        "instance.html",
        include_str!("../../web/templates/instance.html"),
    ),
    (
        "connections.html",
        include_str!("../../web/templates/connections.html"),
    ),
    (
        "connect.html",
        include_str!("../../web/templates/connect.html"),
    ),
    (
        "end_users.html",
        include_str!("../../web/templates/end_users.html"),
    ),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name} does not compile: {e}"));
        }
        env.add_function("asset", |name: String| assets::url(&name));
        env
    })
}

/// Renders `template` with `data` as a 200 page (or the error page when rendering fails).
pub fn render<S: Serialize>(template: &str, data: S) -> Response {
    render_status(StatusCode::OK, template, data)
}

pub fn render_status<S: Serialize>(status: StatusCode, template: &str, data: S) -> Response {
    match env().get_template(template).and_then(|t| t.render(data)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template, "a dashboard page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>This page failed to render.</p>"),
            )
                .into_response()
        }
    }
}

/// The status the dashboard shows a domain error kind with.
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid | ErrorKind::Unprocessable => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound | ErrorKind::Gone => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::PreconditionFailed => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status a domain error is shown with.
pub fn status_for(e: &DomainError) -> StatusCode {
    status_of(e.kind)
}

/// The error page of a domain error (signed-in header when `ctx` is given).
pub fn error_page<C: Serialize>(e: &DomainError, ctx: Option<&C>) -> Response {
    let title = match e.kind {
        ErrorKind::NotFound | ErrorKind::Gone => "Not found",
        ErrorKind::Forbidden => "Not allowed",
        ErrorKind::RateLimited => "Too many requests",
        ErrorKind::Unavailable => "Temporarily unavailable",
        ErrorKind::Internal => "Something went wrong",
        _ => "This did not work",
    };
    render_status(
        status_of(e.kind),
        "error.html",
        minijinja::context! { title, message => e.detail.clone(), ctx },
    )
}

/// A message page (e.g. a refused form) with `status`.
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    render_status(status, "error.html", minijinja::context! { title, message })
}

/// `303 See Other` to `to` (after a form post).
pub fn see_other(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

/// Security headers on every dashboard answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/assets/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !is_asset {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The dashboard's routes (merged into the application router by `http::router`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::auth::home))
        .route("/assets/{file}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .route(
            "/sign-in",
            get(pages::auth::sign_in_page).post(pages::auth::sign_in),
        )
        .route(
            "/sign-up",
            get(pages::auth::sign_up_page).post(pages::auth::sign_up),
        )
        .route("/sign-out", post(pages::auth::sign_out))
        .route("/context", post(pages::auth::switch_context))
        .route("/agents", get(pages::agents::list))
        .route("/agents/import", post(pages::agents::import))
        .route("/agents/{scope}/{name}", get(pages::agents::detail))
        .route("/agents/{scope}/{name}/run", post(pages::agents::run))
        .route("/members", get(pages::members::list))
        .route("/members/invite", post(pages::members::invite))
        .route("/members/{id}/role", post(pages::members::set_role))
        .route("/members/{id}/remove", post(pages::members::remove))
        .route(
            "/invite/{token}",
            get(pages::members::invitation).post(pages::members::accept),
        )
        .route("/runs", get(pages::runs::list))
        .route("/runs/{id}", get(pages::runs::detail))
        .route("/runs/{id}/result", get(pages::runs::result))
        .route("/runs/{id}/cancel", post(pages::runs::cancel))
        .route("/runs/{id}/rerun", post(pages::runs::rerun))
        .route(
            "/schedules",
            get(pages::schedules::list).post(pages::schedules::create),
        )
        .route("/schedules/preview", post(pages::schedules::preview))
        .route(
            "/schedules/{id}/enabled",
            post(pages::schedules::set_enabled),
        )
        .route("/schedules/{id}/delete", post(pages::schedules::delete))
        .route(
            "/webhooks",
            get(pages::webhooks::list).post(pages::webhooks::create),
        )
        .route("/webhooks/{id}", get(pages::webhooks::detail))
        .route("/webhooks/{id}/rotate", post(pages::webhooks::rotate))
        .route("/webhooks/{id}/enabled", post(pages::webhooks::set_enabled))
        .route("/webhooks/{id}/delete", post(pages::webhooks::delete))
        .route(
            "/api-keys",
            get(pages::api_keys::list).post(pages::api_keys::create),
        )
        .route("/api-keys/{id}/revoke", post(pages::api_keys::revoke))
        .route("/profile", get(pages::account::profile))
        .route(
            "/profile/sessions/{id}/revoke",
            post(pages::account::revoke_session),
        )
        .route("/profile/password", post(pages::account::change_password))
        .route("/instance", get(pages::account::instance))
        .route("/end-users", get(pages::end_users::list))
        .route("/connections", get(pages::connections::list))
        .route(
            "/connections/{scope}/{name}/{auth}/client",
            post(pages::connections::add_client),
        )
        .route(
            "/connections/{scope}/{name}/{auth}/connect",
            post(pages::connections::connect),
        )
        .route(
            "/connections/{scope}/{name}/{auth}/credentials",
            post(pages::connections::credentials),
        )
        .route(
            "/connections/{scope}/{name}/{auth}/disconnect",
            post(pages::connections::disconnect),
        )
        .route("/models", get(pages::models::list))
        .route("/models/credentials", post(pages::models::add_key))
        .route("/models/models", post(pages::models::add_model))
        .route("/models/default", post(pages::models::set_default))
        .route("/models/agent", post(pages::models::set_agent))
        .route_layer(from_fn(security_headers))
}
