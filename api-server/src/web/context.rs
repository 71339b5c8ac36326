//! Who is looking at a page: the session cookie resolved into the user, their organizations, the chosen
//! organization and application (kept in the `appstrate_context` cookie, re-checked against the user's
//! memberships on every request) and the [`Principal`] the domain calls are made with.
//!
//! CSRF: every form a signed-in page renders carries `_csrf`, an HMAC of the session id under
//! `BETTER_AUTH_SECRET`; a state-changing request must carry it and, when the browser sends one, an
//! `Origin` equal to `APP_URL`'s. `SameSite=Lax` on the session cookie is a third layer.

use axum::http::header::{COOKIE, ORIGIN};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::domain::{Credential, Principal};
use crate::infra::database::people::{SessionRow, UserRow};
use crate::infra::database::{ApplicationRow, Page};
use crate::people::{session, Role};
use crate::state::AppState;

/// The cookie that remembers the chosen organization and application (`<orgId>/<appId>`; not secret).
pub const CONTEXT_COOKIE: &str = "appstrate_context";

#[derive(Debug, Clone, Serialize)]
pub struct OrgChoice {
    pub id: String,
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppChoice {
    pub id: String,
    pub name: String,
}

/// What every signed-in page template gets as `ctx`.
#[derive(Debug, Clone, Serialize)]
pub struct Ctx {
    pub csrf: String,
    /// The path of the page (where the context switcher comes back to).
    pub path: String,
    pub user_email: String,
    pub user_name: String,
    pub orgs: Vec<OrgChoice>,
    pub apps: Vec<AppChoice>,
    pub org_id: String,
    pub app_id: String,
    pub role: String,
    /// What the role allows (the permission table), for showing only what can be used.
    pub permissions: Vec<&'static str>,
}

/// A signed-in page request.
pub struct Viewer {
    pub user: UserRow,
    pub session: SessionRow,
    pub principal: Principal,
    pub ctx: Ctx,
}

impl Viewer {
    /// Whether the viewer's role allows `permission` (the one permission table).
    pub fn can(&self, permission: &str) -> bool {
        self.principal.require_scope(permission).is_ok()
    }

    pub fn app(&self) -> &ApplicationRow {
        self.principal
            .application
            .as_ref()
            .expect("a viewer always has an application")
    }
}

/// Why a page cannot be shown to this request as a signed-in page.
pub enum NoViewer {
    /// No live session: sign in.
    SignedOut,
    /// Signed in, but a member of no organization.
    NoOrganization(UserRow),
    Failed(String),
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    session::named_cookie(
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        name,
    )
}

/// The live session of the request, with its user.
pub async fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<(UserRow, SessionRow)> {
    let raw = session::cookie_value(
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )?;
    let session = crate::people::accounts::resolve_session(state, &raw)
        .await
        .ok()??;
    let user = state.infra.db.get_user(&session.user_id).await.ok()??;
    Some((user, session))
}

fn csrf_mac(state: &AppState, session_id: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(state.config.better_auth_secret.expose().as_bytes())
            .expect("HMAC takes any key length");
    mac.update(b"appstrate-dashboard-csrf:");
    mac.update(session_id.as_bytes());
    mac
}

/// The CSRF token of a session.
pub fn csrf_token(state: &AppState, session_id: &str) -> String {
    hex::encode(csrf_mac(state, session_id).finalize().into_bytes())
}

/// Checks a form post: the `Origin`, when sent, is `APP_URL`'s, and `_csrf` (when a session exists) is
/// the session's token (compared in constant time). `Err` carries the message for the error page.
pub fn check_form(
    state: &AppState,
    headers: &HeaderMap,
    session_id: Option<&str>,
    sent_token: Option<&str>,
) -> Result<(), String> {
    if let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        let expected = crate::people::sso::origin_of(&state.config.app_url).unwrap_or_default();
        if crate::people::sso::origin_of(origin).as_deref() != Some(expected.as_str()) {
            return Err(format!(
                "This form was sent from {origin}, not from {expected} (APP_URL): refused."
            ));
        }
    }
    if let Some(id) = session_id {
        // Checked by the MAC itself, in constant time, as the session cookie's signature is.
        let ok = sent_token
            .and_then(|t| hex::decode(t).ok())
            .is_some_and(|tag| csrf_mac(state, id).verify_slice(&tag).is_ok());
        if !ok {
            return Err(
                "This form has expired or did not come from this dashboard: reload the page and \
                 try again."
                    .into(),
            );
        }
    }
    Ok(())
}

/// Resolves a signed-in page request (see the module documentation).
pub async fn viewer(state: &AppState, headers: &HeaderMap, path: &str) -> Result<Viewer, NoViewer> {
    let Some((user, session)) = signed_in(state, headers).await else {
        return Err(NoViewer::SignedOut);
    };
    let db = &state.infra.db;
    let memberships = crate::people::orgs::list_for_user(state, &user.id)
        .await
        .map_err(|e| NoViewer::Failed(e.to_string()))?;
    if memberships.is_empty() {
        return Err(NoViewer::NoOrganization(user));
    }
    let wanted = cookie(headers, CONTEXT_COOKIE).unwrap_or_default();
    let (wanted_org, wanted_app) = wanted.split_once('/').unwrap_or((wanted.as_str(), ""));
    let chosen = memberships
        .iter()
        .find(|m| m.org.id == wanted_org)
        .unwrap_or(&memberships[0])
        .clone();
    let role: Role = chosen
        .role
        .parse()
        .map_err(|_| NoViewer::Failed(format!("unknown role {}", chosen.role)))?;
    let apps = db
        .list_applications(
            &chosen.org.id,
            None,
            &Page {
                limit: 100,
                starting_after: None,
            },
        )
        .await
        .map_err(|e| NoViewer::Failed(e.to_string()))?
        .items;
    let app = apps
        .iter()
        .find(|a| a.id == wanted_app)
        .or_else(|| apps.iter().find(|a| a.is_default))
        .or_else(|| apps.first())
        .cloned()
        .ok_or_else(|| NoViewer::Failed("the organization has no application".into()))?;
    let ctx = Ctx {
        csrf: csrf_token(state, &session.id),
        path: path.to_string(),
        user_email: user.email.clone(),
        user_name: user.name.clone(),
        orgs: memberships
            .iter()
            .map(|m| OrgChoice {
                id: m.org.id.clone(),
                name: m.org.name.clone(),
                role: m.role.clone(),
            })
            .collect(),
        apps: apps
            .iter()
            .map(|a| AppChoice {
                id: a.id.clone(),
                name: a.name.clone(),
            })
            .collect(),
        org_id: chosen.org.id.clone(),
        app_id: app.id.clone(),
        role: role.to_string(),
        permissions: role.permissions(),
    };
    let principal = Principal {
        org_id: chosen.org.id.clone(),
        credential: Credential::Session {
            user_id: user.id.clone(),
            session_id: session.id.clone(),
            role,
        },
        application: Some(app),
        end_user: None,
    };
    Ok(Viewer {
        user,
        session,
        principal,
        ctx,
    })
}

/// The `Set-Cookie` that remembers the chosen organization and application.
pub fn context_cookie(org_id: &str, app_id: &str, secure: bool) -> String {
    format!(
        "{CONTEXT_COOKIE}={org_id}/{app_id}; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly{}",
        if secure { "; Secure" } else { "" }
    )
}
