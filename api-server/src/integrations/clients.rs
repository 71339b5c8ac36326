//! OAuth clients per application: the provider's client id and secret for one integration auth (secret
//! encrypted with the connection keyring, never returned), one of them the default, each shown with the
//! exact callback URL to register at the provider.

use serde::Serialize;
use serde_json::Value;

use super::{auth_def_for_app, callback_url, oauth_spec, spec::TokenAuth};
use crate::domain::{DomainError, Fields, Principal};
use crate::infra::database::oauth::OAuthClientRow;
use crate::infra::database::{now, DbError};
use crate::packages::PackageId;
use crate::state::AppState;

/// A client as the API shows it (never the secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientView {
    /// `oauth_client`
    pub object: &'static str,
    /// `oac_…`
    pub id: String,
    pub package_id: String,
    pub auth_key: String,
    pub label: String,
    /// The provider's client id (public).
    pub client_id: String,
    /// Whether a secret is stored (its value is never returned).
    pub has_secret: bool,
    pub is_default: bool,
    /// The redirect URI to register at the provider, exactly.
    pub callback_url: String,
    /// The manifest's `callback_url_hint` with `{{callback_url}}` filled in.
    pub callback_url_hint: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn view(state: &AppState, r: OAuthClientRow, hint: Option<&str>) -> OAuthClientView {
    let callback = callback_url(&state.config.app_url);
    OAuthClientView {
        object: "oauth_client",
        id: r.id,
        package_id: r.package_id,
        auth_key: r.auth_key,
        label: r.label,
        client_id: r.client_id,
        has_secret: r.client_secret_encrypted.is_some(),
        is_default: r.is_default,
        callback_url_hint: hint.map(|h| h.replace("{{callback_url}}", &callback)),
        callback_url: callback,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// The parsed spec of an oauth2 auth of an integration the caller's application sees.
async fn spec_for(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
) -> Result<super::OAuthSpec, DomainError> {
    let app = auth.app()?;
    let def = auth_def_for_app(state, &app.id, &id.to_string(), auth_key).await?;
    oauth_spec(&def, &id.to_string(), auth_key)
}

/// `POST /api/integrations/{packageId}/auths/{authKey}/oauth-clients`:
/// `{clientId, clientSecret?, label?, isDefault?}`. The first client of an auth is its default.
pub async fn create_client(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
    body: &Value,
) -> Result<OAuthClientView, DomainError> {
    let app = auth.app()?;
    let spec = spec_for(state, auth, id, auth_key).await?;
    let mut f = Fields::new(body, "");
    let client_id = f.string("clientId", true, 1, 512);
    let secret = f.string("clientSecret", false, 1, 4096);
    let label = f.string("label", false, 1, 100);
    let is_default = f.bool("isDefault");
    if spec.token_auth != TokenAuth::None && secret.is_none() && body.get("clientSecret").is_none()
    {
        f.error(
            "clientSecret",
            "required",
            "is required: the provider authenticates this client with a secret \
             (token_endpoint_auth_method)",
        );
    }
    f.finish()?;
    let package_id = id.to_string();
    let existing = state
        .infra
        .db
        .list_oauth_clients(&app.id, &package_id, auth_key)
        .await?;
    let at = now();
    let row = OAuthClientRow {
        id: format!("oac_{}", uuid::Uuid::new_v4().simple()),
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        package_id,
        auth_key: auth_key.to_string(),
        label: label.unwrap_or_else(|| format!("Client {}", existing.len() + 1)),
        client_id: client_id.unwrap_or_default(),
        client_secret_encrypted: secret.map(|s| state.keyring.encrypt(s.as_bytes())),
        is_default: is_default.unwrap_or(existing.is_empty()) || existing.is_empty(),
        created_at: at,
        updated_at: at,
    };
    let saved = state.infra.db.insert_oauth_client(&row).await?;
    Ok(view(state, saved, spec.callback_url_hint.as_deref()))
}

/// `GET /api/integrations/{packageId}/auths/{authKey}/clients`.
pub async fn list_clients(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
) -> Result<Vec<OAuthClientView>, DomainError> {
    let app = auth.app()?;
    let spec = spec_for(state, auth, id, auth_key).await?;
    let rows = state
        .infra
        .db
        .list_oauth_clients(&app.id, &id.to_string(), auth_key)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| view(state, r, spec.callback_url_hint.as_deref()))
        .collect())
}

fn client_not_found(id: &str) -> DomainError {
    DomainError::not_found(format!("OAuth client {id} not found"))
}

/// The application's client `client_ref` of integration `id`.
async fn own_client(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    client_ref: &str,
) -> Result<OAuthClientRow, DomainError> {
    let app = auth.app()?;
    state
        .infra
        .db
        .get_oauth_client(&app.id, client_ref)
        .await?
        .filter(|c| c.package_id == id.to_string())
        .ok_or_else(|| client_not_found(client_ref))
}

/// `PUT /api/integrations/{packageId}/oauth-clients/{clientId}`: `{label?, clientId?, clientSecret?}`
/// (`clientSecret: null` removes the secret).
pub async fn update_client(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    client_ref: &str,
    body: &Value,
) -> Result<OAuthClientView, DomainError> {
    let mut row = own_client(state, auth, id, client_ref).await?;
    let mut f = Fields::new(body, "");
    let label = f.string("label", false, 1, 100);
    let client_id = f.string("clientId", false, 1, 512);
    let secret = f.nullable_string("clientSecret", 4096);
    f.finish()?;
    if let Some(l) = label {
        row.label = l;
    }
    if let Some(c) = client_id {
        row.client_id = c;
    }
    match secret {
        Some(Some(s)) if !s.is_empty() => {
            row.client_secret_encrypted = Some(state.keyring.encrypt(s.as_bytes()))
        }
        Some(_) => row.client_secret_encrypted = None,
        None => {}
    }
    row.updated_at = now();
    let saved = state.infra.db.update_oauth_client(&row).await?;
    let hint = spec_for(state, auth, id, &saved.auth_key)
        .await
        .ok()
        .and_then(|s| s.callback_url_hint);
    Ok(view(state, saved, hint.as_deref()))
}

/// `DELETE /api/integrations/{packageId}/oauth-clients/{clientId}`. Connections made with it can no
/// longer refresh and will need a reconnect.
pub async fn delete_client(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    client_ref: &str,
) -> Result<(), DomainError> {
    let row = own_client(state, auth, id, client_ref).await?;
    state
        .infra
        .db
        .delete_oauth_client(&row.application_id, &row.id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => client_not_found(client_ref),
            other => other.into(),
        })
}

/// `PUT /api/integrations/{packageId}/auths/{authKey}/default-client`: `{clientId}` (an `oac_…` id).
pub async fn set_default_client(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
    body: &Value,
) -> Result<OAuthClientView, DomainError> {
    let mut f = Fields::new(body, "");
    let client_ref = f.string("clientId", true, 1, 100);
    f.finish()?;
    let client_ref = client_ref.unwrap_or_default();
    let row = own_client(state, auth, id, &client_ref).await?.clone();
    if row.auth_key != auth_key {
        return Err(client_not_found(&client_ref));
    }
    state
        .infra
        .db
        .set_default_oauth_client(&row.application_id, &row.id)
        .await?;
    let spec = spec_for(state, auth, id, auth_key).await?;
    Ok(view(
        state,
        OAuthClientRow {
            is_default: true,
            ..row
        },
        spec.callback_url_hint.as_deref(),
    ))
}

/// The client a connect uses: the one named, else the auth's default. 412 `oauth_client_missing` when the
/// application registered none.
pub(crate) async fn pick_client(
    state: &AppState,
    application_id: &str,
    package_id: &str,
    auth_key: &str,
    named: Option<&str>,
) -> Result<OAuthClientRow, DomainError> {
    let clients = state
        .infra
        .db
        .list_oauth_clients(application_id, package_id, auth_key)
        .await?;
    let picked = match named {
        Some(n) => clients.into_iter().find(|c| c.id == n),
        None => {
            let default = clients.iter().position(|c| c.is_default).unwrap_or(0);
            clients.into_iter().nth(default)
        }
    };
    picked.ok_or_else(|| {
        DomainError::new(
            crate::domain::ErrorKind::PreconditionFailed,
            "oauth_client_missing",
            format!(
                "No OAuth client is registered for {package_id} auth {auth_key}: create the client at \
                 the provider with the redirect URI {}, then register it with \
                 POST /api/integrations/{package_id}/auths/{auth_key}/oauth-clients",
                callback_url(&state.config.app_url)
            ),
        )
        .with_param(if named.is_some() { "clientId" } else { "authKey" })
    })
}

/// The client's credentials with the secret decrypted.
pub(crate) fn creds(
    state: &AppState,
    row: &OAuthClientRow,
) -> Result<super::provider::ClientCreds, DomainError> {
    let secret = match &row.client_secret_encrypted {
        Some(enc) => Some(
            String::from_utf8(state.keyring.decrypt(enc).map_err(DomainError::internal)?)
                .map_err(DomainError::internal)?,
        ),
        None => None,
    };
    Ok(super::provider::ClientCreds {
        client_id: row.client_id.clone(),
        client_secret: secret,
    })
}
