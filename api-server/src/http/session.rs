//! The browser session on the JSON face: reading the cookie, the CSRF rule, and the signed-in user of the
//! people routes.
//!
//! CSRF: a state-changing request (any method but GET, HEAD, OPTIONS) authenticated by the session cookie
//! must carry an `Origin` (or, failing that, a `Referer`) whose origin is `APP_URL`'s. Browsers send
//! `Origin` on every cross-site and same-origin non-GET fetch or form post; a request from another site
//! is refused with 403 `csrf_rejected`. Bearer-authenticated requests carry no ambient credential and are
//! not checked. `SameSite=Lax` on the cookie is a second layer.

use axum::extract::{Request, State};
use axum::http::header::{COOKIE, ORIGIN, REFERER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::infra::database::people::{SessionRow, UserRow};
use crate::people::session;
use crate::state::AppState;

/// The signed-in user of a people route.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: UserRow,
    pub session: SessionRow,
}

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    session::cookie_value(
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

pub fn signed_out() -> ApiError {
    ApiError::unauthorized("Your session has expired or was signed out; sign in again")
}

fn origin_of(raw: &str) -> Option<String> {
    url::Url::parse(raw)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// Whether the session cookie should be `Secure` (APP_URL is https).
pub fn secure_cookies(state: &AppState) -> bool {
    state.config.app_url.starts_with("https://")
}

/// The CSRF rule for cookie-authenticated requests (see the module documentation).
pub fn check_origin(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let expected = origin_of(&state.config.app_url).unwrap_or_default();
    let sent = headers
        .get(ORIGIN)
        .or_else(|| headers.get(REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(sent) = sent else {
        return Err(csrf(format!(
            "A cookie-authenticated {method} request must carry an Origin header equal to {expected}"
        )));
    };
    if origin_of(sent).as_deref() == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(csrf(format!(
            "Cross-site request refused: origin {sent} is not {expected} (APP_URL)"
        )))
    }
}

/// Like [`check_origin`] for the sign-in and sign-up forms, which carry no session yet: a request that
/// names another site as its origin is refused (login CSRF); one without `Origin` (a script) is allowed.
pub fn check_form_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.get(ORIGIN).is_none() {
        return Ok(());
    }
    check_origin(state, &Method::POST, headers)
}

fn csrf(detail: String) -> ApiError {
    ApiError::forbidden(detail).with_code("csrf_rejected")
}

/// Middleware of the people routes that need a signed-in user (profile, sessions, organizations,
/// invitation acceptance): resolves the cookie, applies the CSRF rule and loads the user.
pub async fn require_user(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let cookie = session_cookie(req.headers()).ok_or_else(|| {
        ApiError::unauthorized("Sign in first: this route needs a session cookie")
    })?;
    let session = crate::people::accounts::resolve_session(&state, &cookie)
        .await?
        .ok_or_else(signed_out)?;
    check_origin(&state, req.method(), req.headers())?;
    let user = state
        .infra
        .db
        .get_user(&session.user_id)
        .await?
        .ok_or_else(signed_out)?;
    req.extensions_mut().insert(SignedIn { user, session });
    Ok(next.run(req).await)
}

/// Adds the `Set-Cookie` that carries `signed` to a response.
pub fn with_session_cookie(state: &AppState, mut res: Response, signed: &str) -> Response {
    let value = session::set_cookie(
        signed,
        state.config.people.session_ttl_seconds,
        secure_cookies(state),
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().append(SET_COOKIE, v);
    }
    res
}

/// Adds the `Set-Cookie` that removes the session cookie.
pub fn without_session_cookie(state: &AppState, mut res: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(secure_cookies(state))) {
        res.headers_mut().append(SET_COOKIE, v);
    }
    res
}
