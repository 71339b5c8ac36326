//! Token refresh: before a token expires (at run start) and on demand (the run's sidecar saw a 401 from
//! the provider). Refreshes of one connection are single-flight across instances: the refresher takes a
//! lease on the `connection_oauth` row by compare-and-swap (the same on PostgreSQL and SQLite), the others
//! wait for it to be released and read what it wrote. New tokens (a rotated refresh token included) and
//! the lease release are written in one transaction. A refresh the provider refuses (`invalid_grant`:
//! revoked or expired) marks the connection `needs_reconnect` with the provider's words.

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::clients::creds;
use super::connect::{credentials_of, split_scopes};
use super::provider::{self, ProviderError};
use super::{auth_def_for_app, callback_url, oauth_spec};
use crate::domain::{DomainError, ErrorKind};
use crate::infra::database::oauth::{ConnectionOAuthRow, TokenUpdate};
use crate::infra::database::{now, ConnectionRow};
use crate::state::AppState;

/// A token expiring within this margin is refreshed before a run starts.
pub const REFRESH_MARGIN_SECONDS: i64 = 300;
/// How long a refresher holds the lease at most (a crashed refresher blocks no longer).
const LEASE_SECONDS: i64 = 30;
/// A forced refresh within this time after another one reuses its result.
const RECENT_SECONDS: i64 = 10;

/// Why fresh credentials could not be had.
#[derive(Debug)]
pub enum RefreshError {
    /// The user must connect again; the provider's words (or ours).
    NeedsReconnect(String),
    /// The provider could not be reached, or another instance kept the lease; the stored token stays.
    Unavailable(String),
    Internal(DomainError),
}

impl From<DomainError> for RefreshError {
    fn from(e: DomainError) -> Self {
        RefreshError::Internal(e)
    }
}

impl From<crate::infra::database::DbError> for RefreshError {
    fn from(e: crate::infra::database::DbError) -> Self {
        RefreshError::Internal(e.into())
    }
}

async fn reread(state: &AppState, id: &str) -> Result<ConnectionRow, RefreshError> {
    state
        .infra
        .db
        .get_connection_by_id(id)
        .await?
        .ok_or_else(|| RefreshError::NeedsReconnect("The connection was deleted".into()))
}

fn reconnect_message(o: &ConnectionOAuthRow) -> String {
    o.status_message
        .clone()
        .unwrap_or_else(|| format!("the connection is {}", o.status))
}

/// The connection with credentials good for a while: as is for pasted credentials or a token far from
/// expiry, else refreshed (once across instances). `force` refreshes even a token that looks valid (the
/// provider answered 401), unless another refresh happened just now.
pub async fn ensure_fresh(
    state: &AppState,
    conn: ConnectionRow,
    force: bool,
) -> Result<ConnectionRow, RefreshError> {
    let db = &state.infra.db;
    let Some(o) = db.get_connection_oauth(&conn.id).await? else {
        return Ok(conn);
    };
    if o.status != "connected" {
        return Err(RefreshError::NeedsReconnect(reconnect_message(&o)));
    }
    if o.oauth_client_id.is_none() {
        return Err(RefreshError::NeedsReconnect(
            "the OAuth client of this connection was deleted; register a client and reconnect"
                .into(),
        ));
    }
    let at = now();
    let due = o
        .expires_at
        .is_some_and(|exp| exp <= at + ChronoDuration::seconds(REFRESH_MARGIN_SECONDS));
    if !force && !due {
        return Ok(conn);
    }
    if force
        && o.refreshed_at
            .is_some_and(|r| r > at - ChronoDuration::seconds(RECENT_SECONDS))
    {
        return reread(state, &conn.id).await;
    }
    let give_up = std::time::Instant::now() + Duration::from_secs(LEASE_SECONDS as u64 + 5);
    loop {
        let at = now();
        if db
            .try_lease_refresh(&conn.id, at, at + ChronoDuration::seconds(LEASE_SECONDS))
            .await?
        {
            // Someone may have finished a refresh between our read and the lease.
            let current = db.get_connection_oauth(&conn.id).await?;
            if let Some(c) = &current {
                if c.refreshed_at != o.refreshed_at {
                    db.set_connection_status(
                        &conn.id,
                        &c.status,
                        c.status_message.as_deref(),
                        now(),
                    )
                    .await?;
                    if c.status != "connected" {
                        return Err(RefreshError::NeedsReconnect(reconnect_message(c)));
                    }
                    return reread(state, &conn.id).await;
                }
            }
            return refresh_now(state, &conn, &o).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(cur) = db.get_connection_oauth(&conn.id).await? else {
            return Err(RefreshError::NeedsReconnect(
                "the connection was replaced or deleted".into(),
            ));
        };
        let leased = cur.refreshing_until.is_some_and(|u| u > now());
        if !leased {
            if cur.status != "connected" {
                return Err(RefreshError::NeedsReconnect(reconnect_message(&cur)));
            }
            if cur.refreshed_at != o.refreshed_at {
                // The other refresher's tokens.
                return reread(state, &conn.id).await;
            }
        }
        if std::time::Instant::now() > give_up {
            return Err(RefreshError::Unavailable(
                "another instance is still refreshing this connection".into(),
            ));
        }
    }
}

/// The refresh itself, lease held.
async fn refresh_now(
    state: &AppState,
    conn: &ConnectionRow,
    o: &ConnectionOAuthRow,
) -> Result<ConnectionRow, RefreshError> {
    let db = &state.infra.db;
    let needs_reconnect = |message: String| async move {
        db.set_connection_status(&conn.id, "needs_reconnect", Some(&message), now())
            .await?;
        tracing::info!(connection_id = %conn.id, package = %conn.package_id, "connection needs a reconnect");
        Err::<ConnectionRow, RefreshError>(RefreshError::NeedsReconnect(message))
    };
    let creds_json = state
        .keyring
        .decrypt_json(&conn.credentials_encrypted)
        .map_err(DomainError::internal)?;
    let Some(refresh_token) = creds_json
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return needs_reconnect(
            "the provider issued no refresh token, so the expired token cannot be renewed; \
             reconnect (providers such as Google issue one only with access_type=offline)"
                .into(),
        )
        .await;
    };
    let client_ref = o.oauth_client_id.clone().unwrap_or_default();
    let Some(client) = db
        .get_oauth_client(&conn.application_id, &client_ref)
        .await?
    else {
        return needs_reconnect(
            "the OAuth client of this connection was deleted; register a client and reconnect"
                .into(),
        )
        .await;
    };
    let outcome = async {
        let def = auth_def_for_app(
            state,
            &conn.application_id,
            &conn.package_id,
            &conn.auth_key,
        )
        .await?;
        let spec = oauth_spec(&def, &conn.package_id, &conn.auth_key)?;
        Ok::<_, DomainError>((spec, creds(state, &client)?))
    }
    .await;
    let (spec, client_creds) = match outcome {
        Ok(x) => x,
        Err(e) => {
            db.set_connection_status(&conn.id, "connected", None, now())
                .await?;
            return Err(RefreshError::Internal(e));
        }
    };
    let result = async {
        let ep = provider::endpoints(state, &spec).await?;
        let client = provider::oauth_client(
            &ep,
            spec.token_auth,
            &client_creds,
            &callback_url(&state.config.app_url),
        )?;
        provider::refresh(state, &client, &ep.token, &refresh_token).await
    }
    .await;
    match result {
        Ok(tokens) => {
            let at = now();
            let (credentials, fields) = credentials_of(&tokens, Some(&refresh_token));
            let scopes = tokens
                .scopes
                .as_ref()
                .map(|s| split_scopes(&s.join(" "), &spec.scope_separator))
                .unwrap_or_else(|| o.scopes.0.clone());
            let update = TokenUpdate {
                credentials_encrypted: state.keyring.encrypt_json(&credentials),
                fields,
                expires_at: tokens
                    .expires_in
                    .and_then(|d| ChronoDuration::from_std(d).ok())
                    .map(|d| at + d),
                scopes,
            };
            db.finish_refresh(&conn.id, &update, at).await?;
            tracing::info!(connection_id = %conn.id, package = %conn.package_id, "connection refreshed");
            reread(state, &conn.id).await
        }
        Err(e @ ProviderError::OAuth { .. }) => {
            needs_reconnect(format!("the provider refused the refresh: {e}")).await
        }
        Err(e) => {
            db.set_connection_status(&conn.id, "connected", None, now())
                .await?;
            Err(RefreshError::Unavailable(e.to_string()))
        }
    }
}

/// What a run asks of a connection: fresh credentials, or a clear refusal naming the integration.
/// A provider that cannot be reached leaves a token that has not expired yet in use.
pub async fn for_run(
    state: &AppState,
    conn: ConnectionRow,
) -> Result<ConnectionRow, (DomainError, bool)> {
    let (id, key) = (conn.package_id.clone(), conn.auth_key.clone());
    let fallback = conn.clone();
    match ensure_fresh(state, conn, false).await {
        Ok(c) => Ok(c),
        Err(RefreshError::NeedsReconnect(m)) => Err((
            DomainError::new(
                ErrorKind::PreconditionFailed,
                "connection_needs_reconnect",
                format!(
                    "Integration {id} auth {key} needs to be reconnected: {m}. Reconnect with \
                     POST /api/integrations/{id}/auths/{key}/connect/oauth2"
                ),
            ),
            true,
        )),
        Err(RefreshError::Unavailable(m)) => {
            let still_valid = state
                .infra
                .db
                .get_connection_oauth(&fallback.id)
                .await
                .ok()
                .flatten()
                .and_then(|o| o.expires_at)
                .is_none_or(|exp| exp > now());
            if still_valid {
                tracing::warn!(connection_id = %fallback.id, reason = %m, "refresh failed; the current token is used");
                Ok(fallback)
            } else {
                Err((
                    DomainError::unavailable(
                        "provider_unavailable",
                        format!("The token of integration {id} auth {key} expired and could not be refreshed: {m}"),
                    ),
                    false,
                ))
            }
        }
        Err(RefreshError::Internal(e)) => Err((e, false)),
    }
}

/// The token the platform gives a run's sidecar to ask for a fresh credential of one connection:
/// HMAC-SHA256 over the run and the connection, keyed by `BETTER_AUTH_SECRET`.
pub fn sidecar_token(state: &AppState, run_id: &str, connection_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(state.config.better_auth_secret.expose().as_bytes())
            .expect("HMAC takes any key");
    mac.update(b"appstrate-oauth-refresh\0");
    mac.update(run_id.as_bytes());
    mac.update(b"\0");
    mac.update(connection_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn verify_sidecar_token(state: &AppState, run_id: &str, connection_id: &str, token: &str) -> bool {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(state.config.better_auth_secret.expose().as_bytes())
            .expect("HMAC takes any key");
    mac.update(b"appstrate-oauth-refresh\0");
    mac.update(run_id.as_bytes());
    mac.update(b"\0");
    mac.update(connection_id.as_bytes());
    hex::decode(token).is_ok_and(|t| mac.verify_slice(&t).is_ok())
}

/// `POST /internal/oauth-token/{connectionId}/refresh` from a run's sidecar: verifies its token (bound
/// to the run and the connection), requires the run to be in progress, refreshes (single-flight) and
/// answers the re-rendered credential header.
pub async fn refresh_for_sidecar(
    state: &AppState,
    run_id: &str,
    connection_id: &str,
    token: &str,
) -> Result<(String, String), DomainError> {
    if !verify_sidecar_token(state, run_id, connection_id, token) {
        return Err(DomainError::unauthorized(
            "Invalid refresh token for this run",
        ));
    }
    let db = &state.infra.db;
    let run = db
        .get_run(run_id)
        .await?
        .filter(|r| matches!(r.status.as_str(), "pending" | "running"))
        .ok_or_else(|| DomainError::not_found(format!("Run {run_id} is not in progress")))?;
    let conn = db
        .get_connection_by_id(connection_id)
        .await?
        .filter(|c| c.application_id == run.application_id)
        .ok_or_else(|| DomainError::not_found(format!("Connection {connection_id} not found")))?;
    let (id, key) = (conn.package_id.clone(), conn.auth_key.clone());
    let fresh = ensure_fresh(state, conn, true).await.map_err(|e| match e {
        RefreshError::NeedsReconnect(m) => DomainError::new(
            ErrorKind::PreconditionFailed,
            "connection_needs_reconnect",
            format!("Integration {id} auth {key} needs to be reconnected: {m}"),
        ),
        RefreshError::Unavailable(m) => DomainError::unavailable("provider_unavailable", m),
        RefreshError::Internal(e) => e,
    })?;
    let def = auth_def_for_app(state, &run.application_id, &id, &key).await?;
    let delivery = def
        .pointer("/delivery/http")
        .ok_or_else(|| DomainError::internal(format!("{id} auth {key} has no delivery.http")))?;
    let creds = state
        .keyring
        .decrypt_json(&fresh.credentials_encrypted)
        .map_err(DomainError::internal)?;
    let empty = Map::new();
    sidecar::delivery::render_header(delivery, creds.as_object().unwrap_or(&empty))
        .map_err(DomainError::internal)
}
