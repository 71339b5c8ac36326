//! The connection lifecycle as the API shows it — `connected`, `expiring`, `needs_reconnect`, `revoked` —
//! and revocation at the provider when a connection is removed.

use serde::Serialize;
use serde_json::Value;

use super::clients::creds;
use super::refresh::REFRESH_MARGIN_SECONDS;
use super::{auth_def_for_app, oauth_spec, provider};
use crate::domain::{DomainError, Principal};
use crate::infra::database::oauth::ConnectionListRow;
use crate::infra::database::{now, ConnectionRow, Timestamp};
use crate::packages::PackageId;
use crate::state::AppState;

/// A connection with its lifecycle status (never a credential value).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatusView {
    /// `connection`
    pub object: &'static str,
    pub id: String,
    pub package_id: String,
    pub auth_key: String,
    pub end_user_id: Option<String>,
    /// `oauth2` (connect flow) or `credentials` (pasted).
    pub source: &'static str,
    /// `connected`, `expiring`, `needs_reconnect` or `revoked`.
    pub status: String,
    /// Why it needs a reconnect (the provider's words).
    pub status_message: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub scopes: Vec<String>,
    /// The identity mapped by `identity_claims`.
    #[schema(value_type = Object)]
    pub account: Value,
    /// Credential field names (never values).
    pub fields: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The status a stored row shows at `at`.
pub fn status_of(
    stored: Option<&str>,
    expires_at: Option<Timestamp>,
    has_refresh: bool,
    at: Timestamp,
) -> &'static str {
    match stored {
        None => "connected",
        Some("needs_reconnect") => "needs_reconnect",
        Some("revoked") => "revoked",
        Some(_) => match expires_at {
            Some(exp) if exp <= at && !has_refresh => "needs_reconnect",
            Some(exp) if exp <= at + chrono::Duration::seconds(REFRESH_MARGIN_SECONDS) => {
                "expiring"
            }
            _ => "connected",
        },
    }
}

fn view(package_id: &str, r: ConnectionListRow) -> ConnectionStatusView {
    let has_refresh = r.fields.0.iter().any(|f| f == "refresh_token");
    ConnectionStatusView {
        object: "connection",
        source: if r.status.is_some() {
            "oauth2"
        } else {
            "credentials"
        },
        status: if r.status.is_some() && r.oauth_client_id.is_none() {
            // The application deleted the OAuth client: the grant can no longer be used or renewed.
            "revoked".to_string()
        } else {
            status_of(r.status.as_deref(), r.expires_at, has_refresh, now()).to_string()
        },
        status_message: r.status_message,
        id: r.id,
        package_id: package_id.to_string(),
        auth_key: r.auth_key,
        end_user_id: r.end_user_id,
        expires_at: r.expires_at,
        scopes: r.scopes.map(|s| s.0).unwrap_or_default(),
        account: r
            .account
            .map(|a| a.0)
            .unwrap_or(Value::Object(Default::default())),
        fields: r.fields.0,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// `GET /api/integrations/{packageId}/connections`: the application's connections of the integration
/// (an impersonated end-user sees only its own).
pub async fn list(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
) -> Result<Vec<ConnectionStatusView>, DomainError> {
    let app = auth.app()?;
    let package_id = id.to_string();
    state
        .infra
        .db
        .find_visible_package(&app.id, &package_id)
        .await?
        .filter(|p| p.kind == "integration")
        .ok_or_else(|| DomainError::not_found(format!("Integration {package_id} not found")))?;
    let rows = state
        .infra
        .db
        .list_package_connections(
            &app.id,
            &package_id,
            auth.end_user.as_ref().map(|e| e.id.as_str()),
        )
        .await?;
    Ok(rows.into_iter().map(|r| view(&package_id, r)).collect())
}

/// Revokes an OAuth connection's grant at the provider (its refresh token, else its access token) when
/// the provider offers a revocation endpoint. Best effort: a failure is logged, the disconnect goes on.
pub async fn revoke_at_provider(state: &AppState, conn: &ConnectionRow) {
    let Ok(Some(o)) = state.infra.db.get_connection_oauth(&conn.id).await else {
        return;
    };
    let outcome = async {
        let client_ref = o.oauth_client_id.as_deref().ok_or("no OAuth client")?;
        let client = state
            .infra
            .db
            .get_oauth_client(&conn.application_id, client_ref)
            .await
            .map_err(|_| "client lookup failed")?
            .ok_or("OAuth client deleted")?;
        let def = auth_def_for_app(
            state,
            &conn.application_id,
            &conn.package_id,
            &conn.auth_key,
        )
        .await
        .map_err(|_| "integration not found")?;
        let spec =
            oauth_spec(&def, &conn.package_id, &conn.auth_key).map_err(|_| "unsupported auth")?;
        let ep = provider::endpoints(state, &spec)
            .await
            .map_err(|_| "endpoints could not be resolved")?;
        let Some(url) = ep.revocation else {
            return Ok(false);
        };
        let client_creds = creds(state, &client).map_err(|_| "client secret unreadable")?;
        let tokens = state
            .keyring
            .decrypt_json(&conn.credentials_encrypted)
            .map_err(|_| "credentials unreadable")?;
        let (token, hint) = match tokens.get("refresh_token").and_then(Value::as_str) {
            Some(r) => (r.to_string(), "refresh_token"),
            None => (
                tokens
                    .get("access_token")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                "access_token",
            ),
        };
        provider::revoke(state, &url, spec.token_auth, &client_creds, &token, hint)
            .await
            .map_err(|_| "the provider refused the revocation")?;
        Ok::<bool, &'static str>(true)
    }
    .await;
    match outcome {
        Ok(true) => {
            tracing::info!(connection_id = %conn.id, package = %conn.package_id, "grant revoked at the provider")
        }
        Ok(false) => {}
        Err(why) => {
            tracing::warn!(connection_id = %conn.id, package = %conn.package_id, reason = why, "revocation at the provider failed; the connection is removed anyway")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let at = now();
        let later = |s: i64| Some(at + chrono::Duration::seconds(s));
        assert_eq!(status_of(None, None, false, at), "connected");
        assert_eq!(
            status_of(Some("connected"), later(3600), true, at),
            "connected"
        );
        assert_eq!(
            status_of(Some("connected"), later(60), true, at),
            "expiring"
        );
        assert_eq!(
            status_of(Some("connected"), later(-60), true, at),
            "expiring"
        );
        assert_eq!(
            status_of(Some("connected"), later(-60), false, at),
            "needs_reconnect"
        );
        assert_eq!(
            status_of(Some("needs_reconnect"), later(3600), true, at),
            "needs_reconnect"
        );
    }
}
