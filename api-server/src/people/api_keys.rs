//! API keys of an application for a [`Principal`] (admin tokens and signed-in owners and admins): list,
//! create (the secret is returned once) and revoke. A key a signed-in user creates is capped by that
//! user's role (`orgs::effective_key_scopes`). The JSON API and the dashboard both call these.

use chrono::DateTime;
use serde_json::Value;

use crate::crypto::{new_token, sha256_hex};
use crate::domain::{DomainError, Fields, Principal, SCOPES};
use crate::infra::database::{now, ApiKeyRow, DbError, NewApiKey, Page, Paged};
use crate::state::AppState;

/// One page of the application's active keys.
pub async fn list(
    state: &AppState,
    p: &Principal,
    page: &Page,
) -> Result<Paged<ApiKeyRow>, DomainError> {
    p.require_permission("api-keys:write")?;
    let app = p.app()?;
    Ok(state
        .infra
        .db
        .list_api_keys(&p.org_id, &app.id, page)
        .await?)
}

/// Creates a key from `body` (`name`, `scopes` — all twelve when empty — and `expiresAt`); answers the
/// row and the secret, which is not readable afterwards.
pub async fn create(
    state: &AppState,
    p: &Principal,
    body: &Value,
) -> Result<(ApiKeyRow, String), DomainError> {
    p.require_permission("api-keys:write")?;
    let mut f = Fields::new(body, "");
    let name = f.string("name", true, 1, 100);
    let scopes = f.string_array("scopes");
    if let Some(list) = &scopes {
        for (i, s) in list.iter().enumerate() {
            if !SCOPES.contains(&s.as_str()) {
                f.error(
                    &format!("scopes[{i}]"),
                    "invalid_value",
                    format!("unknown scope {s:?}; see GET /api/api-keys/available-scopes"),
                );
            }
        }
    }
    let expires_at = match f.raw("expiresAt") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.to_utc() > now() => Some(t.to_utc()),
            Ok(_) => {
                f.error("expiresAt", "out_of_range", "must be in the future");
                None
            }
            Err(_) => {
                f.error(
                    "expiresAt",
                    "invalid_format",
                    "must be an RFC 3339 timestamp",
                );
                None
            }
        },
        Some(_) => {
            f.error("expiresAt", "invalid_type", "must be a string");
            None
        }
    };
    f.finish()?;
    let mut scopes = scopes.unwrap_or_default();
    if scopes.is_empty() {
        scopes = SCOPES.iter().map(|s| s.to_string()).collect();
    }
    scopes.dedup();
    let app = p.app()?;
    let secret = new_token("ask_");
    let key = NewApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: p.org_id.clone(),
        application_id: app.id.clone(),
        name: name.unwrap_or_default(),
        key_hash: sha256_hex(&secret),
        key_prefix: secret[..8].to_string(),
        scopes,
        expires_at,
    };
    let db = &state.infra.db;
    let row = match p.user_id() {
        // A user's key is capped by the user's role (docs/people.md).
        Some(user_id) => db.insert_user_api_key(&key, user_id).await?,
        None => db.insert_api_key(&key).await?,
    };
    Ok((row, secret))
}

pub async fn revoke(state: &AppState, p: &Principal, id: &str) -> Result<(), DomainError> {
    p.require_permission("api-keys:write")?;
    let app = p.app()?;
    state
        .infra
        .db
        .revoke_api_key(&p.org_id, &app.id, id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => {
                DomainError::not_found(format!("API key {id} not found or already revoked"))
            }
            other => other.into(),
        })
}
