//! Documentation-only types of the integrations routes (docs/connections.md): request bodies and list
//! answers.

#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

/// `POST /api/integrations/{packageId}/auths/{authKey}/oauth-clients`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOAuthClientRequest {
    /// The client id the provider issued
    client_id: String,
    /// The client secret: stored encrypted, never returned. Required unless the auth's
    /// `token_endpoint_auth_method` is `none`
    client_secret: Option<String>,
    label: Option<String>,
    /// Make it the auth's default (the first client always is)
    is_default: Option<bool>,
}

/// `PUT /api/integrations/{packageId}/oauth-clients/{clientId}` (every field optional)
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateOAuthClientRequest {
    label: Option<String>,
    client_id: Option<String>,
    /// A new secret; `null` removes it
    client_secret: Option<String>,
}

/// `PUT /api/integrations/{packageId}/auths/{authKey}/default-client`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultOAuthClientRequest {
    /// The `oac_…` id of one of the auth's clients
    client_id: String,
}

/// `POST /api/integrations/{packageId}/auths/{authKey}/connect/oauth2` (an empty body is `{}`)
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectOAuth2Request {
    /// Scopes from the auth's `scope_catalog`; the auth's `default_scopes` when absent
    scopes: Option<Vec<String>>,
    /// The `oac_…` client to use; the auth's default when absent
    client_id: Option<String>,
}

/// The OAuth clients of an integration auth (never their secrets)
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct OAuthClientList {
    object: String,
    data: Vec<crate::integrations::clients::OAuthClientView>,
    hasMore: bool,
}

/// The connections of an integration with their status
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct ConnectionStatusList {
    object: String,
    data: Vec<crate::integrations::status::ConnectionStatusView>,
    hasMore: bool,
}

/// `POST /api/integrations/{packageId}/auths/{authKey}/connect/session` (with `Appstrate-User`)
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectSessionRequest {
    /// Scopes from the auth's `scope_catalog`; the defaults when absent
    scopes: Option<Vec<String>>,
    /// Seconds the link is valid, 60 to 3600 (default 900)
    expires_in: Option<i64>,
}
