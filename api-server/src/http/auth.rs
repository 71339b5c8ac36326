//! Authentication, application context, scopes and end-user impersonation (§7). One middleware resolves
//! the caller into an [`Auth`] before any handler runs.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::session::{check_origin, session_cookie, signed_out};
use crate::crypto::sha256_hex;
use crate::infra::database::{now, ApplicationRow};
use crate::people::Role;
use crate::state::AppState;

pub use crate::domain::{Credential, Principal as Auth, SCOPES};

const APP_SCOPED: [&str; 11] = [
    "/api/agents",
    "/api/runs",
    "/api/schedules",
    "/api/webhooks",
    "/api/end-users",
    "/api/api-keys",
    "/api/packages",
    "/api/realtime",
    "/api/documents",
    "/api/uploads",
    "/api/integrations",
];

/// Routes that honour `Idempotency-Key` (§8); the header on any other mutating route is refused.
const IDEMPOTENT_ROUTES: [&str; 4] = [
    "/api/agents/{scope}/{name}/run",
    "/api/runs/inline",
    "/api/end-users",
    "/api/webhooks",
];

fn invalid_key() -> ApiError {
    ApiError::unauthorized("Invalid or expired API key")
        .with_header(WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
}

fn missing_credentials() -> ApiError {
    ApiError::unauthorized("Invalid or missing credentials").with_header(WWW_AUTHENTICATE, "Bearer")
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| ApiError::invalid_request(format!("{name} header is not valid text"))),
    }
}

/// What authentication needs from the request, detached from the (non-`Sync`) body.
struct RequestInfo {
    headers: HeaderMap,
    path: String,
    query: String,
}

/// The bearer token from `Authorization`, or from `?token=` on realtime routes.
fn bearer(req: &RequestInfo) -> Option<String> {
    if let Some(v) = req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = v.splitn(2, ' ');
        let scheme = parts.next().unwrap_or("");
        let token = parts.next().unwrap_or("").trim();
        if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
            return Some(token.to_string());
        }
        return None;
    }
    if req.path.starts_with("/api/realtime") {
        return query_param(req, "token");
    }
    None
}

fn query_param(req: &RequestInfo, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Resolves the credential. Unknown, revoked or expired → 401.
/// The org, the credential and, for an API key, its pinned application.
type Authenticated = (String, Credential, Option<ApplicationRow>);

async fn authenticate(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    let db = &state.infra.db;
    if token.starts_with("ask_") {
        let (key, pinned) = db
            .find_api_key_with_application(&sha256_hex(token))
            .await?
            .ok_or_else(invalid_key)?;
        let at = now();
        if key.revoked_at.is_some() || key.expires_at.is_some_and(|e| e <= at) {
            return Err(invalid_key());
        }
        // A key created by a user holds at most that user's role's permissions, and none once the user
        // has left the organization.
        let scopes = crate::people::orgs::effective_key_scopes(db.as_ref(), &key)
            .await?
            .ok_or_else(invalid_key)?;
        if state.should_touch(&key.id) {
            let db = db.clone();
            let id = key.id.clone();
            tokio::spawn(async move {
                if let Err(e) = db.touch_api_key(&id, at).await {
                    tracing::warn!(error = %e, "could not record API key use");
                }
            });
        }
        return Ok((
            key.org_id,
            Credential::ApiKey {
                id: key.id,
                application_id: key.application_id,
                scopes,
            },
            Some(pinned),
        ));
    }
    if token.starts_with("adm_") {
        let tok = db
            .find_admin_token(&sha256_hex(token))
            .await?
            .ok_or_else(invalid_key)?;
        if state.should_touch(&tok.id) {
            let db = db.clone();
            let id = tok.id.clone();
            tokio::spawn(async move {
                if let Err(e) = db.touch_admin_token(&id, now()).await {
                    tracing::warn!(error = %e, "could not record admin token use");
                }
            });
        }
        return Ok((tok.org_id, Credential::Admin { id: tok.id }, None));
    }
    Err(missing_credentials())
}

/// The application context of an app-scoped request (§7.2).
async fn resolve_application(
    state: &AppState,
    req: &RequestInfo,
    org_id: &str,
    credential: &Credential,
    pinned: Option<ApplicationRow>,
) -> Result<ApplicationRow, ApiError> {
    let requested = requested_application(req)?;
    let app_id = match (credential, requested) {
        (Credential::ApiKey { application_id, .. }, None) => application_id.clone(),
        (Credential::ApiKey { application_id, .. }, Some(h)) => {
            if &h != application_id {
                return Err(ApiError::forbidden(
                    "Application header does not match the API key's application",
                ));
            }
            h
        }
        (_, None) => {
            return Err(ApiError::invalid_request(
                "Application context required. Provide X-App-Id header or use an API key.",
            )
            .with_param("X-App-Id"))
        }
        (_, Some(h)) => h,
    };
    // An API key's pinned application came with the key.
    if let Some(app) = pinned.filter(|a| a.id == app_id) {
        return Ok(app);
    }
    state
        .infra
        .db
        .get_application(org_id, &app_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Application {app_id} not found")))
}

/// The application named by `X-App-Id`, its alias `X-Application-Id` or, on realtime routes, `?appId=`.
fn requested_application(req: &RequestInfo) -> Result<Option<String>, ApiError> {
    let headers = &req.headers;
    let primary = header_str(headers, "x-app-id")?;
    let alias = header_str(headers, "x-application-id")?;
    let query = if req.path.starts_with("/api/realtime") {
        query_param(req, "appId")
    } else {
        None
    };
    if let (Some(a), Some(b)) = (primary, alias) {
        if a != b {
            return Err(ApiError::invalid_request(
                "X-App-Id and X-Application-Id disagree; send one of them",
            )
            .with_param("X-App-Id"));
        }
    }
    Ok(primary.or(alias).map(str::to_string).or(query))
}

fn is_app_scoped(path: &str) -> bool {
    APP_SCOPED
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// A signed-in user's organization and application context (docs/people.md): app-scoped routes name
/// the application (`X-App-Id`), other routes the organization (`X-Org-Id`); missing → 400, an
/// organization or application the user is not a member of → 403.
async fn session_context(
    state: &AppState,
    req: &RequestInfo,
    user_id: &str,
) -> Result<(String, Role, Option<ApplicationRow>), ApiError> {
    let db = &state.infra.db;
    let org_header = header_str(&req.headers, "x-org-id")?.map(str::to_string);
    let no_access =
        || ApiError::forbidden("You are not a member of the organization of this application");
    if is_app_scoped(&req.path) {
        let app_id = requested_application(req)?.ok_or_else(|| {
            ApiError::invalid_request(
                "Application context required. Provide the X-App-Id header with the session cookie.",
            )
            .with_param("X-App-Id")
        })?;
        let (app, role) = db
            .application_with_role(&app_id, user_id)
            .await?
            .ok_or_else(no_access)?;
        let role = role
            .and_then(|r| r.parse::<Role>().ok())
            .ok_or_else(no_access)?;
        if org_header.as_ref().is_some_and(|o| *o != app.org_id) {
            return Err(ApiError::forbidden(
                "X-Org-Id does not match the organization of the application",
            ));
        }
        return Ok((app.org_id.clone(), role, Some(app)));
    }
    let org_id = org_header.ok_or_else(|| {
        ApiError::invalid_request(
            "Organization context required. Provide the X-Org-Id header with the session cookie.",
        )
        .with_param("X-Org-Id")
    })?;
    let role = db
        .member_role(&org_id, user_id)
        .await?
        .and_then(|r| r.parse::<Role>().ok())
        .ok_or_else(|| ApiError::forbidden("You are not a member of this organization"))?;
    Ok((org_id, role, None))
}

fn impersonation_allowed(path: &str) -> bool {
    if [
        "/api/agents",
        "/api/runs",
        "/api/schedules",
        "/api/realtime",
        "/api/documents",
        "/api/uploads",
    ]
    .iter()
    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
    {
        return true;
    }
    // /api/packages/{scope}/{name}/connections/...
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.len() >= 5 && segs[0] == "api" && segs[1] == "packages" && segs[4] == "connections" {
        return true;
    }
    // An end-user connecting its own account: /api/integrations/{packageId}/auths/{authKey}/connect/oauth2
    // (or …/connect/session for a hosted link) and /api/integrations/{packageId}/connections.
    segs.len() >= 4
        && segs[0] == "api"
        && segs[1] == "integrations"
        && (segs[3] == "connections"
            || path.ends_with("/connect/oauth2")
            || path.ends_with("/connect/session"))
}

/// Middleware for every authenticated `/api` route.
pub async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let info = RequestInfo {
        headers: req.headers().clone(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
    };
    let path = info.path.clone();
    let (org_id, credential, application) = match bearer(&info) {
        Some(token) => {
            let (org_id, credential, pinned) = authenticate(&state, &token).await?;
            let application = if is_app_scoped(&path) {
                Some(resolve_application(&state, &info, &org_id, &credential, pinned).await?)
            } else {
                None
            };
            (org_id, credential, application)
        }
        None => {
            let cookie = session_cookie(&info.headers).ok_or_else(missing_credentials)?;
            let session = crate::people::accounts::resolve_session(&state, &cookie)
                .await?
                .ok_or_else(signed_out)?;
            check_origin(&state, req.method(), &info.headers)?;
            let (org_id, role, application) =
                session_context(&state, &info, &session.user_id).await?;
            let credential = Credential::Session {
                user_id: session.user_id,
                session_id: session.id,
                role,
            };
            (org_id, credential, application)
        }
    };

    let end_user = match header_str(&info.headers, "appstrate-user")? {
        None => None,
        Some(value) => {
            if !value.starts_with("eu_") {
                return Err(ApiError::bad_request(
                    "invalid_end_user_id",
                    "Appstrate-User must be an end-user id (eu_…)",
                ));
            }
            if !matches!(credential, Credential::ApiKey { .. }) || !impersonation_allowed(&path) {
                return Err(ApiError::bad_request(
                    "header_not_allowed",
                    "Appstrate-User is only accepted with an API key on agent, run, schedule, connection and realtime routes",
                ));
            }
            let app = application
                .as_ref()
                .ok_or_else(|| ApiError::internal("impersonation without an application"))?;
            let eu = state
                .infra
                .db
                .get_end_user(&app.id, value)
                .await?
                .ok_or_else(|| {
                    ApiError::forbidden("End-user does not belong to this application")
                })?;
            Some(eu)
        }
    };
    if req.headers().contains_key("idempotency-key") {
        let mutating = !matches!(
            req.method(),
            &Method::GET | &Method::HEAD | &Method::OPTIONS
        );
        let template = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        if mutating
            && !(req.method() == Method::POST && IDEMPOTENT_ROUTES.contains(&template.as_str()))
        {
            return Err(ApiError::bad_request(
                "idempotency_not_supported",
                "Idempotency-Key is not supported on this route",
            ));
        }
    }

    req.extensions_mut().insert(Auth {
        org_id,
        credential,
        application,
        end_user,
    });
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::impersonation_allowed;

    #[test]
    fn impersonation_routes() {
        assert!(impersonation_allowed("/api/runs/run_1"));
        assert!(impersonation_allowed("/api/agents"));
        assert!(impersonation_allowed("/api/packages/@a/b/connections/key"));
        assert!(!impersonation_allowed("/api/end-users"));
        assert!(!impersonation_allowed("/api/packages/@a/b"));
        assert!(!impersonation_allowed("/api/runsx"));
    }
}
