//! The integrations an application can use, for a [`Principal`]: each with its auths, and per auth the
//! OAuth clients registered (oauth2), the credential fields to paste (other types) and the connections
//! with their lifecycle status. The dashboard's connections page is drawn from this.

use serde::Serialize;
use serde_json::Value;

use super::{clients, status};
use crate::domain::{DomainError, Principal};
use crate::infra::database::{PackageFilter, Page};
use crate::packages::PackageId;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize)]
pub struct CredentialField {
    pub name: String,
    pub description: Option<String>,
    pub required: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthOverview {
    pub key: String,
    /// `oauth2`, `api_key`, `basic`…
    pub kind: String,
    /// The fields a person pastes (non-oauth2 auths).
    pub fields: Vec<CredentialField>,
    /// oauth2: the clients registered for this application (never their secrets).
    pub clients: Vec<clients::OAuthClientView>,
    /// The redirect URI to register at the provider, and the manifest's hint with it filled in.
    pub callback_url: String,
    pub callback_url_hint: Option<String>,
    pub scopes: Vec<String>,
    pub connections: Vec<status::ConnectionStatusView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrationOverview {
    pub id: String,
    /// `@scope` and `name`, for URLs.
    pub scope: String,
    pub name: String,
    pub display_name: String,
    pub description: Option<String>,
    pub auths: Vec<AuthOverview>,
}

fn fields_of(def: &Value) -> Vec<CredentialField> {
    let schema = def.pointer("/credentials/schema");
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, p)| CredentialField {
                    name: name.clone(),
                    description: p
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    required: required.contains(&name.as_str()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The application's integrations (up to 100) with their auths, clients and connections.
pub async fn list(
    state: &AppState,
    p: &Principal,
) -> Result<Vec<IntegrationOverview>, DomainError> {
    p.require_scope("packages:read")?;
    let app = p.app()?;
    let rows = state
        .infra
        .db
        .list_visible_packages(
            &app.id,
            &PackageFilter {
                kind: Some("integration".into()),
            },
            &Page {
                limit: 100,
                starting_after: None,
            },
        )
        .await?
        .items;
    let callback_url = super::callback_url(&state.config.app_url);
    let mut out = Vec::new();
    for row in rows {
        let Some(id) = PackageId::parse(&row.package.package_id) else {
            continue;
        };
        let connections = status::list(state, p, &id).await.unwrap_or_default();
        let mut auths = Vec::new();
        if let Some(map) = row.manifest.0.get("auths").and_then(Value::as_object) {
            for (key, def) in map {
                let kind = def
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let oauth = kind == "oauth2";
                let clients = if oauth {
                    clients::list_clients(state, p, &id, key)
                        .await
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let hint = def
                    .get("callback_url_hint")
                    .and_then(Value::as_str)
                    .map(|h| h.replace("{{callback_url}}", &callback_url));
                let scopes = def
                    .get("default_scopes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                auths.push(AuthOverview {
                    key: key.clone(),
                    fields: if oauth { Vec::new() } else { fields_of(def) },
                    kind,
                    clients,
                    callback_url: callback_url.clone(),
                    callback_url_hint: hint,
                    scopes,
                    connections: connections
                        .iter()
                        .filter(|c| &c.auth_key == key)
                        .cloned()
                        .collect(),
                });
            }
        }
        out.push(IntegrationOverview {
            display_name: row
                .package
                .display_name
                .clone()
                .unwrap_or_else(|| row.package.package_id.clone()),
            description: row.package.description.clone(),
            scope: format!("@{}", id.scope),
            name: id.name.clone(),
            id: row.package.package_id,
            auths,
        });
    }
    Ok(out)
}
