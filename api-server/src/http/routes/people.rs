//! Accounts and sessions on the JSON face (route names as the original's): sign-up, sign-in, sign-out,
//! get-session, the session list, the profile and the password. Organizations live in `orgs.rs`.

use axum::extract::{Path, Request, State};
use axum::http::header::USER_AGENT;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::middleware::{client_ip, hit_limit, rate_limit, Limit};
use crate::http::session::{
    check_form_origin, require_user, session_cookie, with_session_cookie, without_session_cookie,
    SignedIn,
};
use crate::infra::database::people::{SessionRow, UserRow};
use crate::people::{accounts, ClientInfo};
use crate::state::AppState;

/// Sign-in: 20 per minute per IP, 10 per 5 minutes per email. Sign-up: 10 per hour per IP, 3 per hour per
/// email (docs/people.md).
pub const SIGN_IN_PER_IP: Limit = Limit {
    limit: 20,
    window_secs: 60,
};
pub const SIGN_IN_PER_EMAIL: Limit = Limit {
    limit: 10,
    window_secs: 300,
};
pub const SIGN_UP_PER_IP: Limit = Limit {
    limit: 10,
    window_secs: 3600,
};
pub const SIGN_UP_PER_EMAIL: Limit = Limit {
    limit: 3,
    window_secs: 3600,
};

pub fn router(state: &AppState) -> Router<AppState> {
    let rl = |l: Limit| from_fn_with_state((state.clone(), l), rate_limit);
    let user = || from_fn_with_state(state.clone(), require_user);
    let public = Router::new()
        .route(
            "/api/auth/sign-up/email",
            post(sign_up).route_layer(rl(SIGN_UP_PER_IP)),
        )
        .route(
            "/api/auth/sign-in/email",
            post(sign_in).route_layer(rl(SIGN_IN_PER_IP)),
        )
        .route("/api/auth/sign-out", post(sign_out))
        .route("/api/auth/get-session", get(get_session))
        .route(
            "/api/auth/forget-password",
            post(forget_password).route_layer(rl(SIGN_UP_PER_IP)),
        )
        .route(
            "/api/auth/reset-password",
            post(reset_password).route_layer(rl(SIGN_IN_PER_IP)),
        );
    let signed_in = Router::new()
        .route("/api/auth/sessions", get(list_sessions))
        .route("/api/auth/sessions/{id}", delete(revoke_session))
        .route("/api/profile", get(get_profile).patch(update_profile))
        .route("/api/profile/password", post(change_password))
        .route_layer(user());
    public.merge(signed_in)
}

fn client(req_headers: &HeaderMap, ip: String) -> ClientInfo {
    ClientInfo {
        ip: Some(ip),
        user_agent: req_headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

pub fn user_dto(u: &UserRow) -> Value {
    json!({
        "id": u.id,
        "object": "user",
        "email": u.email,
        "name": u.name,
        "emailVerified": u.email_verified,
        "hasPassword": u.password_hash.is_some(),
        "createdAt": u.created_at,
        "updatedAt": u.updated_at,
    })
}

pub fn session_dto(s: &SessionRow, current: Option<&str>) -> Value {
    json!({
        "id": s.id,
        "object": "session",
        "userId": s.user_id,
        "ipAddress": s.ip,
        "userAgent": s.user_agent,
        "createdAt": s.created_at,
        "expiresAt": s.expires_at,
        "current": current == Some(s.id.as_str()),
    })
}

/// The body, the client address and the headers of a form-like request.
async fn form(state: &AppState, req: Request) -> Result<(Value, ClientInfo, HeaderMap), ApiError> {
    let ip = client_ip(state, &req);
    let headers = req.headers().clone();
    check_form_origin(state, &headers)?;
    let JsonBody(body) =
        <JsonBody as axum::extract::FromRequest<()>>::from_request(req, &()).await?;
    let info = client(&headers, ip);
    Ok((body, info, headers))
}

fn email_key(raw: &str) -> String {
    raw.trim().to_lowercase()
}

pub async fn sign_up(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (body, info, _) = form(&state, req).await?;
    let mut f = Fields::new(&body, "");
    let email = f.string("email", true, 1, 254);
    let password = f.string("password", true, 1, 1024);
    let name = f.string("name", false, 0, 100);
    // Accepted for compatibility with the original's clients, unused.
    let _ = f.raw("image");
    let _ = f.raw("callbackURL");
    f.finish()?;
    let email = email.unwrap_or_default();
    hit_limit(
        &state,
        "POST:/api/auth/sign-up/email",
        &format!("email:{}", email_key(&email)),
        SIGN_UP_PER_EMAIL,
    )
    .await?;
    let done = accounts::sign_up(
        &state,
        accounts::SignUp {
            email,
            password: password.unwrap_or_default(),
            name,
        },
        &info,
    )
    .await?;
    let res = (
        StatusCode::OK,
        Json(json!({
            "user": user_dto(&done.user),
            "session": session_dto(&done.opened.session, Some(&done.opened.session.id)),
            "claimedOrgId": done.claimed_org,
        })),
    )
        .into_response();
    Ok(with_session_cookie(&state, res, &done.opened.cookie_value))
}

pub async fn sign_in(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (body, info, _) = form(&state, req).await?;
    let mut f = Fields::new(&body, "");
    let email = f.string("email", true, 1, 254);
    let password = f.string("password", true, 1, 1024);
    let _ = f.raw("rememberMe");
    let _ = f.raw("callbackURL");
    f.finish()?;
    let email = email.unwrap_or_default();
    hit_limit(
        &state,
        "POST:/api/auth/sign-in/email",
        &format!("email:{}", email_key(&email)),
        SIGN_IN_PER_EMAIL,
    )
    .await?;
    let (user, opened) =
        accounts::sign_in(&state, &email, &password.unwrap_or_default(), &info).await?;
    let res = Json(json!({
        "user": user_dto(&user),
        "session": session_dto(&opened.session, Some(&opened.session.id)),
    }))
    .into_response();
    Ok(with_session_cookie(&state, res, &opened.cookie_value))
}

/// Revokes the current session (if any) and clears the cookie. Idempotent.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(cookie) = session_cookie(&headers) {
        if let Some(session) = accounts::resolve_session(&state, &cookie).await? {
            crate::http::session::check_origin(&state, &axum::http::Method::POST, &headers)?;
            state
                .infra
                .db
                .revoke_session(&session.user_id, &session.id)
                .await
                .ok();
        }
    }
    let res = Json(json!({"success": true})).into_response();
    Ok(without_session_cookie(&state, res))
}

/// `{session, user}` for a live session, `null` otherwise (as the original answers).
pub async fn get_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(cookie) = session_cookie(&headers) else {
        return Ok(Json(Value::Null).into_response());
    };
    let Some(session) = accounts::resolve_session(&state, &cookie).await? else {
        return Ok(without_session_cookie(
            &state,
            Json(Value::Null).into_response(),
        ));
    };
    let Some(user) = state.infra.db.get_user(&session.user_id).await? else {
        return Ok(Json(Value::Null).into_response());
    };
    Ok(Json(json!({
        "session": session_dto(&session, Some(&session.id)),
        "user": user_dto(&user),
    }))
    .into_response())
}

pub async fn list_sessions(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
) -> Result<Response, ApiError> {
    let sessions = state
        .infra
        .db
        .list_sessions(&me.user.id, crate::infra::database::now())
        .await?;
    let data: Vec<Value> = sessions
        .iter()
        .map(|s| session_dto(s, Some(&me.session.id)))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "hasMore": false})).into_response())
}

pub async fn revoke_session(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .infra
        .db
        .revoke_session(&me.user.id, &id)
        .await
        .map_err(|e| match e {
            crate::infra::database::DbError::NotFound => {
                ApiError::not_found(format!("Session {id} not found or already revoked"))
            }
            other => other.into(),
        })?;
    let res = StatusCode::NO_CONTENT.into_response();
    Ok(if id == me.session.id {
        without_session_cookie(&state, res)
    } else {
        res
    })
}

pub async fn get_profile(Extension(me): Extension<SignedIn>) -> Response {
    Json(user_dto(&me.user)).into_response()
}

pub async fn update_profile(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let name = f.string("name", false, 1, 100);
    f.finish()?;
    let user = match name {
        Some(n) => state.infra.db.rename_user(&me.user.id, n.trim()).await?,
        None => me.user,
    };
    Ok(Json(user_dto(&user)).into_response())
}

pub async fn change_password(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let current = f.string("currentPassword", true, 1, 1024);
    let new = f.string("newPassword", true, 1, 1024);
    f.finish()?;
    accounts::change_password(
        &state,
        &me.user,
        &current.unwrap_or_default(),
        &new.unwrap_or_default(),
        &me.session.id,
    )
    .await?;
    Ok(Json(json!({"success": true})).into_response())
}

/// Without SMTP, password reset is unavailable (503 `email_unavailable`).
pub async fn forget_password(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let email = f.string("email", true, 1, 254);
    let _ = f.raw("redirectTo");
    f.finish()?;
    accounts::request_password_reset(&state, &email.unwrap_or_default()).await?;
    Ok(Json(json!({"status": true})).into_response())
}

pub async fn reset_password(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let token = f.string("token", true, 1, 200);
    let new = f.string("newPassword", true, 1, 1024);
    f.finish()?;
    accounts::reset_password(&state, &token.unwrap_or_default(), &new.unwrap_or_default()).await?;
    Ok(Json(json!({"status": true})).into_response())
}
