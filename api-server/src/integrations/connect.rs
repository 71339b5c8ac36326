//! The OAuth2 connect flow: `start` answers the provider's authorization URL (state bound to the caller,
//! the application and the client; PKCE S256 where the provider supports it; scopes from the catalog, the
//! defaults otherwise; the manifest's `authorization_params`; the declared scope separator), and `finish`
//! handles `${APP_URL}/api/integrations/callback`: it checks the state (once, within ten minutes), redeems
//! the code with the declared client authentication, maps the identity through `identity_claims`, and
//! stores the tokens encrypted with their expiry and granted scopes.

use chrono::Duration as ChronoDuration;
use oauth2::{CsrfToken, PkceCodeChallenge};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::types::Json;

use super::clients::{creds, pick_client};
use super::provider::{self, ProviderError};
use super::spec::map_identity;
use super::{auth_def_for_app, callback_url, oauth_spec};
use crate::crypto::sha256_hex;
use crate::domain::{DomainError, ErrorKind, Fields, Principal};
use crate::infra::database::oauth::{ConnectStateRow, ConnectionOAuthRow};
use crate::infra::database::{now, ConnectionRow};
use crate::packages::PackageId;
use crate::state::AppState;

const STATE_TTL_SECONDS: i64 = 600;

/// `POST …/connect/oauth2` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectStarted {
    /// `oauth2_authorization`
    pub object: &'static str,
    /// Send the user's browser here.
    pub authorization_url: String,
    /// Where the provider sends the browser back (registered at the provider).
    pub callback_url: String,
    pub scopes: Vec<String>,
    /// The OAuth client used (`oac_…`).
    pub oauth_client_id: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// What the callback stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connected {
    /// `connection`
    pub object: &'static str,
    pub id: String,
    pub package_id: String,
    pub auth_key: String,
    pub end_user_id: Option<String>,
    pub status: &'static str,
    pub scopes: Vec<String>,
    #[schema(value_type = Object)]
    pub account: Value,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn provider_error(what: &str, e: ProviderError) -> DomainError {
    DomainError::new(
        ErrorKind::Upstream,
        "provider_error",
        format!("{what}: {e}"),
    )
}

/// Starts a connection: `{scopes?: [..], clientId?: "oac_…"}`.
pub async fn start(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
    body: &Value,
) -> Result<ConnectStarted, DomainError> {
    let app = auth.app()?;
    let mut f = Fields::new(body, "");
    let asked = f.string_array("scopes");
    let client_ref = f.string("clientId", false, 1, 100);
    f.finish()?;
    begin(
        state,
        Begin {
            org_id: &auth.org_id,
            application_id: &app.id,
            end_user_id: auth.end_user.as_ref().map(|e| e.id.as_str()),
            actor: auth.identity(),
            package_id: id.to_string(),
            auth_key,
            scopes: asked,
            client_ref,
        },
    )
    .await
}

/// Who starts a connection, for what.
pub(crate) struct Begin<'a> {
    pub org_id: &'a str,
    pub application_id: &'a str,
    pub end_user_id: Option<&'a str>,
    /// `apikey:<id>`, `user:<id>`, `connect-session:<end-user>`
    pub actor: String,
    pub package_id: String,
    pub auth_key: &'a str,
    pub scopes: Option<Vec<String>>,
    pub client_ref: Option<String>,
}

/// The authorization URL for `b`, its state stored.
pub(crate) async fn begin(state: &AppState, b: Begin<'_>) -> Result<ConnectStarted, DomainError> {
    let (package_id, auth_key, asked, client_ref) =
        (b.package_id, b.auth_key, b.scopes, b.client_ref);
    let def = auth_def_for_app(state, b.application_id, &package_id, auth_key).await?;
    let spec = oauth_spec(&def, &package_id, auth_key)?;
    let scopes = match asked {
        Some(list) => {
            if !spec.scope_catalog.is_empty() {
                let unknown: Vec<crate::domain::FieldError> = list
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        !spec.scope_catalog.contains(s) && !spec.default_scopes.contains(s)
                    })
                    .map(|(i, s)| {
                        crate::domain::FieldError::new(
                            format!("scopes[{i}]"),
                            "invalid_value",
                            format!(
                                "{s:?} is not in the scope catalog of {package_id} auth {auth_key}"
                            ),
                        )
                    })
                    .collect();
                if !unknown.is_empty() {
                    return Err(DomainError::validation(unknown));
                }
            }
            list
        }
        None => spec.default_scopes.clone(),
    };
    let client = pick_client(
        state,
        b.application_id,
        &package_id,
        auth_key,
        client_ref.as_deref(),
    )
    .await?;
    let creds = creds(state, &client)?;
    let endpoints = provider::endpoints(state, &spec)
        .await
        .map_err(|e| provider_error("The provider's endpoints could not be resolved", e))?;
    let redirect = callback_url(&state.config.app_url);
    let oauth = provider::oauth_client(&endpoints, spec.token_auth, &creds, &redirect)
        .map_err(|e| provider_error("The provider's endpoints are not usable", e))?;
    let mut req = oauth.authorize_url(CsrfToken::new_random);
    if !scopes.is_empty() {
        req = req.add_extra_param("scope", scopes.join(&spec.scope_separator));
    }
    for (k, v) in &spec.authorization_params {
        req = req.add_extra_param(k.clone(), v.clone());
    }
    let mut verifier = None;
    if endpoints.pkce {
        let (challenge, v) = PkceCodeChallenge::new_random_sha256();
        req = req.set_pkce_challenge(challenge);
        verifier = Some(v.secret().clone());
    }
    let (url, csrf) = req.url();
    let at = now();
    let expires_at = at + ChronoDuration::seconds(STATE_TTL_SECONDS);
    state
        .infra
        .db
        .insert_connect_state(&ConnectStateRow {
            state_hash: sha256_hex(csrf.secret()),
            org_id: b.org_id.to_string(),
            application_id: b.application_id.to_string(),
            end_user_id: b.end_user_id.map(str::to_string),
            actor: b.actor,
            package_id,
            auth_key: auth_key.to_string(),
            oauth_client_id: client.id.clone(),
            pkce_verifier_encrypted: verifier.map(|v| state.keyring.encrypt(v.as_bytes())),
            redirect_uri: redirect.clone(),
            scopes: Json(scopes.clone()),
            created_at: at,
            expires_at,
        })
        .await?;
    Ok(ConnectStarted {
        object: "oauth2_authorization",
        authorization_url: url.to_string(),
        callback_url: redirect,
        scopes,
        oauth_client_id: client.id,
        expires_at,
    })
}

/// The query of the callback.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

fn refused(code: &str, detail: impl Into<String>) -> DomainError {
    DomainError::bad_request(code, detail)
}

/// Finishes a connection from the provider's redirect.
pub async fn finish(state: &AppState, q: &CallbackQuery) -> Result<Connected, DomainError> {
    let invalid_state = || {
        refused(
            "invalid_state",
            "The connection request is unknown, expired or was already used (state mismatch); \
             start the connection again",
        )
    };
    let raw_state = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(invalid_state)?;
    let stored = state
        .infra
        .db
        .take_connect_state(&sha256_hex(raw_state))
        .await?
        .filter(|s| s.expires_at > now())
        .ok_or_else(invalid_state)?;
    let (package_id, auth_key) = (stored.package_id.clone(), stored.auth_key.clone());
    if let Some(error) = &q.error {
        let why = q
            .error_description
            .as_deref()
            .map(|d| format!("{error} ({d})"))
            .unwrap_or_else(|| error.clone());
        let hint = if error == "access_denied" {
            "Start the connection again and approve the access the integration asks for."
        } else {
            "Check the OAuth client registered for this integration (client id, redirect URI, scopes) \
             and start again."
        };
        return Err(refused(
            "provider_refused",
            format!("The provider refused to connect {package_id}: {why}. {hint}"),
        ));
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| refused("missing_code", "The provider sent no authorization code"))?;
    let client = state
        .infra
        .db
        .get_oauth_client(&stored.application_id, &stored.oauth_client_id)
        .await?
        .ok_or_else(|| {
            refused(
                "oauth_client_missing",
                "The OAuth client of this connection request was deleted; start again",
            )
        })?;
    let def = auth_def_for_app(state, &stored.application_id, &package_id, &auth_key).await?;
    let spec = oauth_spec(&def, &package_id, &auth_key)?;
    let client_creds = creds(state, &client)?;
    let endpoints = provider::endpoints(state, &spec)
        .await
        .map_err(|e| provider_error("The provider's endpoints could not be resolved", e))?;
    let oauth = provider::oauth_client(
        &endpoints,
        spec.token_auth,
        &client_creds,
        &stored.redirect_uri,
    )
    .map_err(|e| provider_error("The provider's endpoints are not usable", e))?;
    let verifier = match &stored.pkce_verifier_encrypted {
        Some(enc) => Some(
            String::from_utf8(state.keyring.decrypt(enc).map_err(DomainError::internal)?)
                .map_err(DomainError::internal)?,
        ),
        None => None,
    };
    let tokens = provider::exchange_code(state, &oauth, &endpoints.token, code, verifier)
        .await
        .map_err(|e| match e {
            ProviderError::OAuth { .. } => refused(
                "code_exchange_failed",
                format!(
                    "The provider refused the authorization code: {e}. If it names the redirect URI, \
                     register exactly {} at the provider and make sure APP_URL is this instance's \
                     public URL; otherwise start the connection again.",
                    stored.redirect_uri
                ),
            ),
            other => provider_error("The code could not be exchanged", other),
        })?;
    let account = match &endpoints.userinfo {
        Some(url) if !spec.identity_claims.is_empty() => {
            match provider::userinfo(state, url, &tokens.access_token).await {
                Ok(doc) => map_identity(&spec.identity_claims, &doc),
                Err(e) => {
                    tracing::warn!(package = %package_id, error = %e, "userinfo failed; connection kept without identity");
                    json!({})
                }
            }
        }
        _ => json!({}),
    };
    let granted = tokens
        .scopes
        .clone()
        .map(|s| split_scopes(&s.join(" "), &spec.scope_separator))
        .unwrap_or_else(|| stored.scopes.0.clone());
    let at = now();
    let expires_at = tokens
        .expires_in
        .and_then(|d| ChronoDuration::from_std(d).ok())
        .map(|d| at + d);
    let (credentials, fields) = credentials_of(&tokens, None);
    let connection = ConnectionRow {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: stored.org_id.clone(),
        application_id: stored.application_id.clone(),
        end_user_id: stored.end_user_id.clone(),
        package_id: package_id.clone(),
        auth_key: auth_key.clone(),
        credentials_encrypted: state.keyring.encrypt_json(&credentials),
        fields: Json(fields),
        created_at: at,
        updated_at: at,
    };
    let oauth_row = ConnectionOAuthRow {
        connection_id: connection.id.clone(),
        oauth_client_id: Some(client.id.clone()),
        status: "connected".into(),
        status_message: None,
        expires_at,
        scopes: Json(granted.clone()),
        account: Json(account.clone()),
        refreshing_until: None,
        refreshed_at: None,
        updated_at: at,
    };
    let saved = state
        .infra
        .db
        .save_oauth_connection(&connection, &oauth_row)
        .await?;
    tracing::info!(package = %package_id, auth_key = %auth_key, connection_id = %saved.id, actor = %stored.actor, "integration connected");
    Ok(Connected {
        object: "connection",
        id: saved.id,
        package_id,
        auth_key,
        end_user_id: saved.end_user_id,
        status: "connected",
        scopes: granted,
        account,
        expires_at,
    })
}

/// Splits a granted-scope string on the declared separator (and on spaces, which RFC 6749 uses).
pub(crate) fn split_scopes(s: &str, separator: &str) -> Vec<String> {
    s.split(separator)
        .flat_map(|p| p.split(' '))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The stored credentials of `tokens` (`access_token`, `refresh_token`, `token_type`); a provider that
/// does not rotate keeps `previous_refresh`.
pub(crate) fn credentials_of(
    tokens: &provider::Tokens,
    previous_refresh: Option<&str>,
) -> (Value, Vec<String>) {
    let mut creds = serde_json::Map::new();
    creds.insert("access_token".into(), json!(tokens.access_token));
    creds.insert("token_type".into(), json!(tokens.token_type));
    if let Some(r) = tokens.refresh_token.as_deref().or(previous_refresh) {
        creds.insert("refresh_token".into(), json!(r));
    }
    let mut fields: Vec<String> = creds.keys().cloned().collect();
    fields.sort();
    (Value::Object(creds), fields)
}
