//! Hosted connect sessions: an application creates a short-lived link for one of its end-users, who opens
//! it in a browser and connects its own account without any API key. The link is a signed token (HMAC-SHA256
//! keyed by `BETTER_AUTH_SECRET`) naming the application, the end-user, the integration auth and the scopes,
//! valid until its expiry; opening it starts the OAuth2 flow for that end-user.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Duration as ChronoDuration;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use super::connect::{begin, Begin, ConnectStarted};
use super::{auth_def_for_app, oauth_spec};
use crate::domain::{DomainError, ErrorKind, Fields, Principal};
use crate::infra::database::now;
use crate::packages::PackageId;
use crate::state::AppState;

const DEFAULT_TTL_SECONDS: i64 = 900;

/// `POST …/connect/session` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectSession {
    /// `connect_session`
    pub object: &'static str,
    /// Give this link to the end-user: it opens the provider's consent screen.
    pub url: String,
    pub end_user_id: String,
    pub package_id: String,
    pub auth_key: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    o: String,
    a: String,
    e: String,
    p: String,
    k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<Vec<String>>,
    x: i64,
}

fn mac(state: &AppState) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(state.config.better_auth_secret.expose().as_bytes())
        .expect("HMAC takes any key");
    m.update(b"appstrate-connect-session\0");
    m
}

fn sign(state: &AppState, claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("serialisable"));
    let mut m = mac(state);
    m.update(payload.as_bytes());
    format!(
        "cs_{payload}.{}",
        URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    )
}

fn verify(state: &AppState, token: &str) -> Option<Claims> {
    let (payload, sig) = token.strip_prefix("cs_")?.split_once('.')?;
    let mut m = mac(state);
    m.update(payload.as_bytes());
    m.verify_slice(&URL_SAFE_NO_PAD.decode(sig).ok()?).ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// `POST /api/integrations/{packageId}/auths/{authKey}/connect/session` with `Appstrate-User`:
/// `{scopes?, expiresIn? (60–3600 s, default 900)}`.
pub async fn create(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
    body: &Value,
) -> Result<ConnectSession, DomainError> {
    let app = auth.app()?;
    let eu = auth.end_user.as_ref().ok_or_else(|| {
        DomainError::bad_request(
            "end_user_required",
            "A connect session is for one end-user: name it with the Appstrate-User header",
        )
        .with_param("Appstrate-User")
    })?;
    let mut f = Fields::new(body, "");
    let scopes = f.string_array("scopes");
    let ttl = match f.raw("expiresIn") {
        None => Some(DEFAULT_TTL_SECONDS),
        Some(v) => match v.as_i64() {
            Some(n) if (60..=3600).contains(&n) => Some(n),
            _ => {
                f.error(
                    "expiresIn",
                    "out_of_range",
                    "must be an integer from 60 to 3600 (seconds)",
                );
                None
            }
        },
    };
    f.finish()?;
    let package_id = id.to_string();
    // The auth must be connectable now, not when the end-user opens the link.
    let def = auth_def_for_app(state, &app.id, &package_id, auth_key).await?;
    let spec = oauth_spec(&def, &package_id, auth_key)?;
    if let Some(list) = &scopes {
        if let Some((i, s)) = list.iter().enumerate().find(|(_, s)| {
            !spec.scope_catalog.is_empty()
                && !spec.scope_catalog.contains(s)
                && !spec.default_scopes.contains(s)
        }) {
            return Err(DomainError::validation(vec![
                crate::domain::FieldError::new(
                    format!("scopes[{i}]"),
                    "invalid_value",
                    format!("{s:?} is not in the scope catalog of {package_id} auth {auth_key}"),
                ),
            ]));
        }
    }
    let expires_at = now() + ChronoDuration::seconds(ttl.unwrap_or(DEFAULT_TTL_SECONDS));
    let token = sign(
        state,
        &Claims {
            o: auth.org_id.clone(),
            a: app.id.clone(),
            e: eu.id.clone(),
            p: package_id.clone(),
            k: auth_key.to_string(),
            s: scopes,
            x: expires_at.timestamp(),
        },
    );
    Ok(ConnectSession {
        object: "connect_session",
        url: format!(
            "{}/api/integrations/connect/start?session={token}",
            state.config.app_url.trim_end_matches('/')
        ),
        end_user_id: eu.id.clone(),
        package_id,
        auth_key: auth_key.to_string(),
        expires_at,
    })
}

/// `GET /api/integrations/connect/start?session=…`: the provider's authorization URL for the session's
/// end-user.
pub async fn open(state: &AppState, token: &str) -> Result<ConnectStarted, DomainError> {
    let claims = verify(state, token).ok_or_else(|| {
        DomainError::bad_request(
            "invalid_session",
            "This connect link is not valid; ask the application for a new one",
        )
    })?;
    if claims.x <= now().timestamp() {
        return Err(DomainError::new(
            ErrorKind::Gone,
            "session_expired",
            "This connect link has expired; ask the application for a new one",
        ));
    }
    // The end-user may have been deleted since.
    state
        .infra
        .db
        .get_end_user(&claims.a, &claims.e)
        .await?
        .ok_or_else(|| {
            DomainError::not_found("The end-user of this connect link no longer exists")
        })?;
    begin(
        state,
        Begin {
            org_id: &claims.o,
            application_id: &claims.a,
            end_user_id: Some(&claims.e),
            actor: format!("connect-session:{}", claims.e),
            package_id: claims.p.clone(),
            auth_key: &claims.k,
            scopes: claims.s.clone(),
            client_ref: None,
        },
    )
    .await
}
