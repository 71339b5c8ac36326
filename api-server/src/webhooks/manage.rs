//! Managing webhooks for a [`Principal`]: create (the secret is returned once), list, read, update,
//! delete, rotate the secret, and the delivery attempts. The JSON API and the dashboard both call these;
//! bodies have the JSON API's shape, so a field error names the same field on both faces.

use serde_json::{json, Value};

use super::{
    check_url, new_secret, DEFAULT_ROTATION_GRACE_SECONDS, EVENTS, MAX_PER_APPLICATION,
    MAX_ROTATION_GRACE_SECONDS,
};
use crate::domain::{DomainError, FieldError, Fields, Principal};
use crate::infra::database::webhooks::{DeliveryRow, WebhookRow};
use crate::infra::database::{now, DbError, Page, Paged};
use crate::state::AppState;

#[derive(Default)]
struct WebhookBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    package_id: Option<Option<String>>,
    payload_mode: Option<String>,
    enabled: Option<bool>,
}

fn parse_body(state: &AppState, body: &Value, create: bool) -> Result<WebhookBody, DomainError> {
    let mut f = Fields::new(body, "");
    let url = f.string("url", create, 1, 2048);
    let events = match f.raw("events") {
        None if create => {
            f.error("events", "required", "is required");
            None
        }
        None => None,
        Some(_) => f.string_array("events"),
    };
    if let Some(list) = &events {
        if list.is_empty() {
            f.error(
                "events",
                "out_of_range",
                format!("must name at least one of {}", EVENTS.join(", ")),
            );
        }
        for (i, e) in list.iter().enumerate() {
            if !EVENTS.contains(&e.as_str()) {
                f.error(
                    &format!("events[{i}]"),
                    "invalid_value",
                    format!("unknown event {e:?}; expected one of {}", EVENTS.join(", ")),
                );
            }
        }
    }
    let package_id = f.nullable_string("packageId", 200);
    if let Some(Some(p)) = &package_id {
        let ok = p.starts_with('@')
            && p.split_once('/')
                .is_some_and(|(s, n)| s.len() > 1 && !n.is_empty());
        if !ok {
            f.error(
                "packageId",
                "invalid_value",
                "must be a package id like @scope/name",
            );
        }
    }
    let payload_mode = f.string("payloadMode", false, 1, 20);
    if let Some(m) = &payload_mode {
        if m != "full" && m != "summary" {
            f.error(
                "payloadMode",
                "invalid_value",
                "must be \"full\" or \"summary\"",
            );
        }
    }
    let enabled = f.bool("enabled");
    f.finish()?;
    let url = match url {
        Some(u) => Some(
            check_url(&u, &state.config)
                .map_err(|m| DomainError::bad_request("invalid_url", m).with_param("url"))?
                .to_string(),
        ),
        None => None,
    };
    Ok(WebhookBody {
        url,
        events: events.map(|mut e| {
            e.dedup();
            e
        }),
        package_id,
        payload_mode,
        enabled,
    })
}

/// A `packageId` must name an agent this application can see.
async fn check_package(
    state: &AppState,
    p: &Principal,
    package_id: &str,
) -> Result<(), DomainError> {
    crate::packages::resolve_agent(state, p, package_id, None)
        .await
        .map(|_| ())
        .map_err(|_| {
            DomainError::validation(vec![FieldError::new(
                "packageId",
                "not_found",
                format!("no agent {package_id} is visible in this application"),
            )])
        })
}

fn not_found(id: &str) -> DomainError {
    DomainError::not_found(format!("Webhook {id} not found"))
}

/// A write that found no row: the webhook was deleted meanwhile.
fn gone(id: &str) -> impl Fn(DbError) -> DomainError + '_ {
    move |e| match e {
        DbError::NotFound => not_found(id),
        other => other.into(),
    }
}

async fn visible(state: &AppState, p: &Principal, id: &str) -> Result<WebhookRow, DomainError> {
    let app = p.app()?;
    state
        .infra
        .db
        .get_webhook(&app.id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Creates a webhook from `body` (`url`, `events`, `packageId`, `payloadMode`, `enabled`); answers it
/// with its signing secret, which is not readable afterwards.
pub async fn create(
    state: &AppState,
    p: &Principal,
    body: &Value,
) -> Result<(WebhookRow, String), DomainError> {
    p.require_scope("webhooks:write")?;
    let app = p.app()?.clone();
    let b = parse_body(state, body, true)?;
    let package_id = b.package_id.flatten();
    if let Some(pkg) = &package_id {
        check_package(state, p, pkg).await?;
    }
    let secret = new_secret();
    let at = now();
    let row = WebhookRow {
        id: format!("wh_{}", uuid::Uuid::new_v4()),
        org_id: p.org_id.clone(),
        application_id: app.id.clone(),
        url: b.url.unwrap_or_default(),
        events: sqlx::types::Json(json!(b.events.unwrap_or_default())),
        package_id,
        payload_mode: b.payload_mode.unwrap_or_else(|| "full".into()),
        enabled: b.enabled.unwrap_or(true),
        secret_enc: state.keyring.encrypt(secret.as_bytes()),
        previous_secret_enc: None,
        previous_secret_expires_at: None,
        created_at: at,
        updated_at: at,
    };
    // The count and the insert are one step, so concurrent creates cannot pass the cap together.
    let row = state
        .infra
        .db
        .insert_webhook_capped(&row, MAX_PER_APPLICATION)
        .await?
        .ok_or_else(|| {
            DomainError::bad_request(
                "webhook_limit_reached",
                format!(
                    "an application has at most {MAX_PER_APPLICATION} webhooks; delete one first"
                ),
            )
        })?;
    Ok((row, secret))
}

/// One page of the application's webhooks.
pub async fn list(
    state: &AppState,
    p: &Principal,
    page: &Page,
) -> Result<Paged<WebhookRow>, DomainError> {
    p.require_scope("webhooks:read")?;
    let app = p.app()?;
    Ok(state.infra.db.list_webhooks(&app.id, page).await?)
}

pub async fn get(state: &AppState, p: &Principal, id: &str) -> Result<WebhookRow, DomainError> {
    p.require_scope("webhooks:read")?;
    visible(state, p, id).await
}

/// Updates the fields present in `body`.
pub async fn update(
    state: &AppState,
    p: &Principal,
    id: &str,
    body: &Value,
) -> Result<WebhookRow, DomainError> {
    p.require_scope("webhooks:write")?;
    let mut w = visible(state, p, id).await?;
    let b = parse_body(state, body, false)?;
    if let Some(u) = b.url {
        w.url = u;
    }
    if let Some(e) = b.events {
        w.events = sqlx::types::Json(json!(e));
    }
    if let Some(pkg) = b.package_id {
        if let Some(pkg) = &pkg {
            check_package(state, p, pkg).await?;
        }
        w.package_id = pkg;
    }
    if let Some(m) = b.payload_mode {
        w.payload_mode = m;
    }
    if let Some(e) = b.enabled {
        w.enabled = e;
    }
    w.updated_at = now();
    state.infra.db.update_webhook(&w).await.map_err(gone(id))
}

/// Deletes the webhook; pending retries are dropped with it.
pub async fn delete(state: &AppState, p: &Principal, id: &str) -> Result<(), DomainError> {
    p.require_scope("webhooks:write")?;
    let w = visible(state, p, id).await?;
    state
        .infra
        .db
        .delete_webhook(&w.application_id, &w.id)
        .await
        .map_err(gone(id))
}

/// The grace window of a rotation from `body` (`previousSecretExpiresInSeconds`, default 24 h).
pub fn rotation_grace(body: &Value) -> Result<i64, DomainError> {
    let mut f = Fields::new(body, "");
    let grace = match f.raw("previousSecretExpiresInSeconds") {
        None => Some(DEFAULT_ROTATION_GRACE_SECONDS),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=MAX_ROTATION_GRACE_SECONDS).contains(&n) => Some(n),
            _ => {
                f.error(
                    "previousSecretExpiresInSeconds",
                    "out_of_range",
                    format!(
                        "must be a whole number of seconds from 0 to {MAX_ROTATION_GRACE_SECONDS}"
                    ),
                );
                None
            }
        },
    };
    f.finish()?;
    Ok(grace.unwrap_or(DEFAULT_ROTATION_GRACE_SECONDS))
}

/// A new secret (returned once); the previous one keeps signing, next to the new one, for `grace`
/// seconds (0 ends it now).
pub async fn rotate_secret(
    state: &AppState,
    p: &Principal,
    id: &str,
    grace: i64,
) -> Result<(WebhookRow, String), DomainError> {
    p.require_scope("webhooks:write")?;
    let mut w = visible(state, p, id).await?;
    let secret = new_secret();
    let at = now();
    if grace > 0 {
        w.previous_secret_enc = Some(w.secret_enc.clone());
        w.previous_secret_expires_at = Some(at + chrono::Duration::seconds(grace));
    } else {
        w.previous_secret_enc = None;
        w.previous_secret_expires_at = None;
    }
    w.secret_enc = state.keyring.encrypt(secret.as_bytes());
    w.updated_at = at;
    let row = state.infra.db.update_webhook(&w).await.map_err(gone(id))?;
    Ok((row, secret))
}

/// One page of the webhook's delivery attempts, newest first.
pub async fn deliveries(
    state: &AppState,
    p: &Principal,
    id: &str,
    page: &Page,
) -> Result<Paged<DeliveryRow>, DomainError> {
    p.require_scope("webhooks:read")?;
    let w = visible(state, p, id).await?;
    Ok(state.infra.db.list_deliveries(&w.id, page).await?)
}
