//! Sign-in, sign-up (which claims a fresh installation), sign-out and the organization / application
//! switcher. Sign-in and sign-up share the JSON API's rate-limit buckets (per IP and per email), so the
//! dashboard is no way around them.

use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::header::{SET_COOKIE, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;

use super::{form_viewer, local_path, value};
use crate::domain::{DomainError, ErrorKind};
use crate::people::{accounts, session, ClientInfo, PeopleError};
use crate::state::AppState;
use crate::web::context::{check_form, context_cookie, signed_in};
use crate::web::{render_status, see_other};

#[derive(Serialize, Default)]
struct Values {
    email: String,
    name: String,
}

#[derive(Serialize, Default)]
struct Errors {
    email: Option<String>,
    password: Option<String>,
}

#[derive(serde::Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
    invite: Option<String>,
}

fn providers(state: &AppState) -> Vec<minijinja::Value> {
    crate::people::sso::configured(state)
        .into_iter()
        .map(|p| {
            let label = match p.slug() {
                "google" => "Google",
                "github" => "GitHub",
                _ => "Single sign-on (OIDC)",
            };
            minijinja::context! { id => p.slug(), label }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn page(
    state: &AppState,
    status: StatusCode,
    mode: &str,
    next: &str,
    invite: Option<&str>,
    values: Values,
    errors: Errors,
    error: Option<String>,
) -> Response {
    let title = if mode == "sign-in" {
        "Sign in"
    } else {
        "Create your account"
    };
    let action = format!(
        "/{mode}?next={}",
        url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
    );
    render_status(
        status,
        "sign_in.html",
        minijinja::context! {
            title, mode, action, values, errors, error, invite,
            providers => providers(state),
        },
    )
}

/// `GET /`: the agents of a signed-in person, the sign-in page otherwise.
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).await.is_some() {
        see_other("/agents")
    } else {
        see_other("/sign-in")
    }
}

pub async fn sign_in_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    page(
        &state,
        StatusCode::OK,
        "sign-in",
        &local_path(q.next.as_deref()),
        q.invite.as_deref(),
        Values::default(),
        Errors::default(),
        None,
    )
}

pub async fn sign_up_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    page(
        &state,
        StatusCode::OK,
        "sign-up",
        &local_path(q.next.as_deref()),
        q.invite.as_deref(),
        Values::default(),
        Errors::default(),
        None,
    )
}

fn client(headers: &HeaderMap, ip: String) -> ClientInfo {
    ClientInfo {
        ip: Some(ip),
        user_agent: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// One hit on the JSON API's bucket `key` (same key strings, so both faces share it).
async fn hit(
    state: &AppState,
    key: String,
    limit: u32,
    window_secs: u64,
) -> Result<(), DomainError> {
    match state
        .infra
        .rate_limiter
        .hit(&key, limit, Duration::from_secs(window_secs))
        .await
    {
        Ok(d) if !d.allowed => Err(DomainError::new(
            ErrorKind::RateLimited,
            "rate_limited",
            format!(
                "Too many attempts: try again in {} seconds.",
                d.reset_secs.max(1)
            ),
        )
        .with_retry_after(d.reset_secs)),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; request let through");
            Ok(())
        }
    }
}

/// One attempt against the JSON route `route`'s buckets: per IP, then per email (`(limit, window_secs)`).
async fn attempts(
    state: &AppState,
    route: &str,
    ip: &str,
    email: &str,
    per_ip: (u32, u64),
    per_email: (u32, u64),
) -> Result<(), DomainError> {
    hit(state, format!("POST:{route}:ip:{ip}"), per_ip.0, per_ip.1).await?;
    let email = email.to_lowercase();
    hit(
        state,
        format!("POST:{route}:email:{email}"),
        per_email.0,
        per_email.1,
    )
    .await
}

/// The request's parts a sign-in or sign-up needs, and its form.
async fn read_form(
    state: &AppState,
    req: Request,
) -> Result<(HeaderMap, String, Vec<(String, String)>), Response> {
    let ip = crate::net::client_ip(state, &req);
    let headers = req.headers().clone();
    let Form(pairs): Form<Vec<(String, String)>> =
        match <Form<Vec<(String, String)>> as axum::extract::FromRequest<AppState>>::from_request(
            req, state,
        )
        .await
        {
            Ok(f) => f,
            Err(e) => {
                return Err(crate::web::message_page(
                    StatusCode::BAD_REQUEST,
                    "This did not work",
                    &format!("The form could not be read: {e}"),
                ))
            }
        };
    check_form(state, &headers, None, None)
        .map_err(|m| crate::web::message_page(StatusCode::FORBIDDEN, "Form refused", &m))?;
    Ok((headers, ip, pairs))
}

fn with_cookie(mut res: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(SET_COOKIE, v);
    }
    res
}

fn secure(state: &AppState) -> bool {
    state.config.app_url.starts_with("https://")
}

/// Where to go after signing in: the invitation to accept, else `next`.
async fn after_sign_in(
    state: &AppState,
    user: &crate::infra::database::people::UserRow,
    invite: Option<&str>,
    next: &str,
) -> Result<String, PeopleError> {
    if let Some(token) = invite.filter(|t| !t.is_empty()) {
        crate::people::orgs::accept(state, user, token).await?;
        return Ok("/agents".into());
    }
    Ok(next.to_string())
}

pub async fn sign_in(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
    req: Request,
) -> Response {
    let next = local_path(q.next.as_deref());
    let (headers, ip, pairs) = match read_form(&state, req).await {
        Ok(p) => p,
        Err(res) => return res,
    };
    let email = value(&pairs, "email").unwrap_or("").trim().to_string();
    let password = value(&pairs, "password").unwrap_or("").to_string();
    let invite = value(&pairs, "invite").map(str::to_string);
    let again = |status: StatusCode, errors: Errors, error: Option<String>| {
        page(
            &state,
            status,
            "sign-in",
            &next,
            invite.as_deref(),
            Values {
                email: email.clone(),
                name: String::new(),
            },
            errors,
            error,
        )
    };
    let limited = attempts(
        &state,
        "/api/auth/sign-in/email",
        &ip,
        &email,
        (20, 60),
        (10, 300),
    );
    if let Err(e) = limited.await {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            Errors::default(),
            Some(e.detail),
        );
    }
    match accounts::sign_in(&state, &email, &password, &client(&headers, ip)).await {
        Ok((user, opened)) => {
            let to = match after_sign_in(&state, &user, invite.as_deref(), &next).await {
                Ok(to) => to,
                Err(e) => {
                    return again(
                        StatusCode::BAD_REQUEST,
                        Errors::default(),
                        Some(e.to_string()),
                    )
                }
            };
            with_cookie(
                see_other(&to),
                &session::set_cookie(
                    &opened.cookie_value,
                    state.config.people.session_ttl_seconds,
                    secure(&state),
                ),
            )
        }
        Err(PeopleError::InvalidCredentials) => again(
            StatusCode::UNAUTHORIZED,
            Errors::default(),
            Some("The email or the password is wrong.".into()),
        ),
        Err(e) => {
            let e = DomainError::from(e);
            again(
                crate::web::status_for(&e),
                Errors::default(),
                Some(e.detail),
            )
        }
    }
}

pub async fn sign_up(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
    req: Request,
) -> Response {
    let next = local_path(q.next.as_deref());
    let (headers, ip, pairs) = match read_form(&state, req).await {
        Ok(p) => p,
        Err(res) => return res,
    };
    let email = value(&pairs, "email").unwrap_or("").trim().to_string();
    let name = value(&pairs, "name").unwrap_or("").trim().to_string();
    let password = value(&pairs, "password").unwrap_or("").to_string();
    let invite = value(&pairs, "invite").map(str::to_string);
    let again = |status: StatusCode, errors: Errors, error: Option<String>| {
        page(
            &state,
            status,
            "sign-up",
            &next,
            invite.as_deref(),
            Values {
                email: email.clone(),
                name: name.clone(),
            },
            errors,
            error,
        )
    };
    let limited = attempts(
        &state,
        "/api/auth/sign-up/email",
        &ip,
        &email,
        (10, 3600),
        (3, 3600),
    );
    if let Err(e) = limited.await {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            Errors::default(),
            Some(e.detail),
        );
    }
    let input = accounts::SignUp {
        email: email.clone(),
        password,
        name: Some(name.clone()).filter(|n| !n.is_empty()),
    };
    match accounts::sign_up(&state, input, &client(&headers, ip)).await {
        Ok(done) => {
            let to = match after_sign_in(&state, &done.user, invite.as_deref(), &next).await {
                Ok(to) => to,
                Err(e) => {
                    return again(
                        StatusCode::BAD_REQUEST,
                        Errors::default(),
                        Some(e.to_string()),
                    )
                }
            };
            let mut res = with_cookie(
                see_other(&to),
                &session::set_cookie(
                    &done.opened.cookie_value,
                    state.config.people.session_ttl_seconds,
                    secure(&state),
                ),
            );
            if let Some(org) = &done.claimed_org {
                // The claimed organization becomes the dashboard's context.
                res = with_cookie(res, &context_cookie(org, "", secure(&state)));
            }
            res
        }
        Err(PeopleError::Invalid { field, message, .. }) => {
            let mut errors = Errors::default();
            match field {
                "email" => errors.email = Some(message),
                "password" => errors.password = Some(message),
                _ => {
                    return again(
                        StatusCode::BAD_REQUEST,
                        errors,
                        Some(format!("{field}: {message}")),
                    )
                }
            }
            again(StatusCode::BAD_REQUEST, errors, None)
        }
        Err(PeopleError::EmailTaken) => again(
            StatusCode::CONFLICT,
            Errors {
                email: Some("An account with this email already exists: sign in instead.".into()),
                password: None,
            },
            None,
        ),
        Err(e) => {
            let e = DomainError::from(e);
            again(
                crate::web::status_for(&e),
                Errors::default(),
                Some(e.detail),
            )
        }
    }
}

/// `POST /sign-out`: revokes the session and clears the cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let Some((_, session_row)) = signed_in(&state, &headers).await else {
        return see_other("/sign-in");
    };
    if let Err(m) = check_form(
        &state,
        &headers,
        Some(&session_row.id),
        value(&pairs, "_csrf"),
    ) {
        return crate::web::message_page(StatusCode::FORBIDDEN, "Form refused", &m);
    }
    if let Err(e) = state
        .infra
        .db
        .revoke_session(&session_row.user_id, &session_row.id)
        .await
    {
        return crate::web::error_page::<()>(&DomainError::from(e), None);
    }
    with_cookie(
        see_other("/sign-in"),
        &session::clear_cookie(secure(&state)),
    )
}

/// `POST /context`: chooses the organization and application the pages show.
pub async fn switch_context(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let back = local_path(value(&pairs, "back"));
    let v = match form_viewer(&state, &headers, &back, &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let org = value(&pairs, "org").unwrap_or(&v.ctx.org_id).to_string();
    // A new organization starts on its default application; the same one keeps the chosen application.
    let app = if org == v.ctx.org_id {
        value(&pairs, "app").unwrap_or("").to_string()
    } else {
        String::new()
    };
    if !v.ctx.orgs.iter().any(|o| o.id == org) {
        return crate::web::message_page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "You are not a member of that organization.",
        );
    }
    with_cookie(
        see_other(&back),
        &context_cookie(&org, &app, secure(&state)),
    )
}
