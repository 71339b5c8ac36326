//! Social and OIDC sign-in in the browser: `GET /api/auth/sign-in/{provider}` redirects to the provider,
//! `GET /api/auth/callback/{provider}` comes back. Failures are pages (the browser is on a redirect, not
//! in a script) that say what went wrong and what to do; an `APP_URL` that does not match the address
//! the page was opened at names the exact redirect URI to register.

use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::http::middleware::client_ip;
use crate::http::session::{secure_cookies, with_session_cookie};
use crate::people::sso::{self, Provider, SignInError};
use crate::people::ClientInfo;
use crate::state::AppState;

const STATE_COOKIE: &str = "appstrate_oauth_state";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/providers", get(providers))
        .route("/api/auth/sign-in/{provider}", get(sign_in))
        .route("/api/auth/callback/{provider}", get(callback))
}

/// The configured providers with the redirect URI each must have registered.
async fn providers(State(state): State<AppState>) -> Response {
    let data: Vec<_> = sso::configured(&state)
        .into_iter()
        .map(|p| {
            json!({
                "id": p.slug(),
                "signInUrl": format!("{}/api/auth/sign-in/{}", state.config.app_url, p.slug()),
                "redirectUri": sso::redirect_uri(&state.config.app_url, p),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data, "hasMore": false})).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The error page of a failed sign-in.
fn error_page(state: &AppState, status: StatusCode, err: &SignInError) -> Response {
    let (title, hint) = match err {
        SignInError::OriginMismatch { .. } => (
            "Sign-in is misconfigured",
            "An administrator must fix APP_URL or the provider's redirect URI.",
        ),
        SignInError::NotConfigured(_) => ("Provider not configured", "Ask an administrator."),
        _ => ("Sign-in failed", "Go back and sign in again."),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Appstrate</title></head>\
         <body><main><h1>{title}</h1><p id=\"error\">{}</p><p>{hint}</p>\
         <p><a href=\"{}/\">Back to Appstrate</a></p></main></body></html>",
        escape(&err.to_string()),
        escape(&state.config.app_url),
    );
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not a problem document: the outer layer leaves HTML error pages alone.
    res.extensions_mut()
        .insert(crate::http::middleware::OwnErrorBody);
    res
}

fn status_of(err: &SignInError) -> StatusCode {
    match err {
        SignInError::NotConfigured(_) => StatusCode::NOT_FOUND,
        SignInError::Provider(_) => StatusCode::BAD_GATEWAY,
        SignInError::Account(crate::people::PeopleError::SignUpDisabled)
        | SignInError::Account(crate::people::PeopleError::EmailDomainNotAllowed(_)) => {
            StatusCode::FORBIDDEN
        }
        SignInError::Account(crate::people::PeopleError::Db(_))
        | SignInError::Account(crate::people::PeopleError::Internal(_)) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The origin the browser used, from `Host` (or, behind trusted proxies, `X-Forwarded-Host` and
/// `X-Forwarded-Proto`), compared with `APP_URL` by host and port.
fn request_origin(state: &AppState, headers: &HeaderMap) -> String {
    let trusted = state.config.trust_proxy_hops > 0;
    let pick = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
    };
    let host = trusted
        .then(|| pick("x-forwarded-host"))
        .flatten()
        .or_else(|| pick(HOST.as_str()))
        .unwrap_or_default();
    let app_scheme = url::Url::parse(&state.config.app_url)
        .map(|u| u.scheme().to_string())
        .unwrap_or_else(|_| "http".into());
    let scheme = trusted
        .then(|| pick("x-forwarded-proto"))
        .flatten()
        .unwrap_or(app_scheme);
    // Through the origin serialisation, so that a default port compares equal to none.
    sso::origin_of(&format!("{scheme}://{host}")).unwrap_or(format!("{scheme}://{host}"))
}

fn provider_or_page(state: &AppState, slug: &str) -> Result<Provider, Response> {
    Provider::parse(slug)
        .filter(|p| sso::configured(state).contains(p))
        .ok_or_else(|| {
            error_page(
                state,
                StatusCode::NOT_FOUND,
                &SignInError::NotConfigured(match slug {
                    "google" => "Google",
                    "github" => "GitHub",
                    "oidc" => "OpenID Connect",
                    _ => "this provider",
                }),
            )
        })
}

fn state_cookie(state: &AppState, value: &str, max_age: i64) -> String {
    cookie::Cookie::build((STATE_COOKIE, value.to_string()))
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .path("/api/auth/callback")
        .secure(secure_cookies(state))
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
        .to_string()
}

async fn sign_in(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Response {
    let provider = match provider_or_page(&state, &slug) {
        Ok(p) => p,
        Err(page) => return page,
    };
    let result = async {
        sso::check_request_origin(&state, provider, &request_origin(&state, &headers))?;
        sso::start(&state, provider).await
    }
    .await;
    match result {
        Ok(started) => {
            let mut res = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&started.authorize_url) {
                res.headers_mut().insert(LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&state_cookie(&state, &started.state, 600)) {
                res.headers_mut().append(SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            tracing::warn!(provider = provider.slug(), error = %e, "social sign-in could not start");
            error_page(&state, status_of(&e), &e)
        }
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(q): Query<CallbackQuery>,
    req: Request,
) -> Response {
    let provider = match provider_or_page(&state, &slug) {
        Ok(p) => p,
        Err(page) => return page,
    };
    let ip = client_ip(&state, &req);
    let headers = req.headers().clone();
    let client = ClientInfo {
        ip: Some(ip),
        user_agent: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let cookie_state = crate::people::session::named_cookie(
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        STATE_COOKIE,
    );
    let result = async {
        sso::check_request_origin(&state, provider, &request_origin(&state, &headers))?;
        if let Some(error) = q.error {
            return Err(SignInError::Provider(match q.error_description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            }));
        }
        let (Some(code), Some(param)) = (q.code, q.state) else {
            return Err(SignInError::InvalidState);
        };
        sso::finish(
            &state,
            provider,
            &code,
            &param,
            cookie_state.as_deref(),
            &client,
        )
        .await
    }
    .await;
    let clear = state_cookie(&state, "", 0);
    let mut res = match result {
        Ok((_, opened)) => {
            let mut res = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{}/", state.config.app_url)) {
                res.headers_mut().insert(LOCATION, v);
            }
            with_session_cookie(&state, res, &opened.cookie_value)
        }
        Err(e) => {
            tracing::warn!(provider = provider.slug(), error = %e, "social sign-in failed");
            error_page(&state, status_of(&e), &e)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&clear) {
        res.headers_mut().append(SET_COOKIE, v);
    }
    res
}
