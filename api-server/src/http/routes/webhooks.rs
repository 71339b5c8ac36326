//! Webhook routes (§9.5): create (the secret is shown once), list, read, update, delete, rotate the
//! secret, and list delivery attempts.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::http::auth::Auth;
use crate::http::error::{ApiError, FieldError};
use crate::http::idempotency::idempotency;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::http::middleware::{rate_limit, Limit};
use crate::infra::database::webhooks::{DeliveryRow, WebhookRow};
use crate::infra::database::{now, DbError};
use crate::state::AppState;
use crate::webhooks::{
    check_url, new_secret, DEFAULT_ROTATION_GRACE_SECONDS, EVENTS, MAX_PER_APPLICATION,
    MAX_ROTATION_GRACE_SECONDS,
};

/// The authenticated webhook routes: writes 10 per minute, reads 300 per minute, per caller (§10).
pub fn router(state: &AppState) -> Router<AppState> {
    let rl = |limit: u32, window_secs: u64| {
        from_fn_with_state((state.clone(), Limit { limit, window_secs }), rate_limit)
    };
    let idem = |scope: &'static str| from_fn_with_state((state.clone(), scope), idempotency);
    Router::new()
        .route(
            "/api/webhooks",
            get(list_webhooks).route_layer(rl(300, 60)).merge(
                post(create_webhook)
                    .route_layer(idem("webhooks:write"))
                    .route_layer(rl(10, 60)),
            ),
        )
        .route(
            "/api/webhooks/{id}",
            get(get_webhook).route_layer(rl(300, 60)).merge(
                axum::routing::put(update_webhook)
                    .delete(delete_webhook)
                    .route_layer(rl(10, 60)),
            ),
        )
        .route(
            "/api/webhooks/{id}/rotate-secret",
            post(rotate_secret).route_layer(rl(10, 60)),
        )
        .route(
            "/api/webhooks/{id}/deliveries",
            get(list_deliveries).route_layer(rl(300, 60)),
        )
}

/// The public form of a webhook; never the secret (only create and rotate add it, once).
pub fn webhook_dto(w: &WebhookRow) -> Value {
    json!({
        "id": w.id,
        "object": "webhook",
        "applicationId": w.application_id,
        "url": w.url,
        "events": w.events.0,
        "packageId": w.package_id,
        "payloadMode": w.payload_mode,
        "enabled": w.enabled,
        "previousSecretExpiresAt": w.previous_secret_expires_at.filter(|t| *t > now()),
        "createdAt": w.created_at,
        "updatedAt": w.updated_at,
    })
}

fn delivery_dto(d: &DeliveryRow) -> Value {
    json!({
        "id": d.id,
        "eventId": d.event_id,
        "eventType": d.event_type,
        "attempt": d.attempt,
        "status": d.status,
        "statusCode": d.status_code,
        "latencyMs": d.latency_ms,
        "error": d.error,
        "createdAt": d.created_at,
    })
}

#[derive(Default)]
struct WebhookBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    package_id: Option<Option<String>>,
    payload_mode: Option<String>,
    enabled: Option<bool>,
}

fn parse_body(state: &AppState, body: &Value, create: bool) -> Result<WebhookBody, ApiError> {
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
                .map_err(|m| ApiError::bad_request("invalid_url", m).with_param("url"))?
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
async fn check_package(state: &AppState, auth: &Auth, package_id: &str) -> Result<(), ApiError> {
    crate::packages::resolve_agent(state, auth, package_id, None)
        .await
        .map(|_| ())
        .map_err(|_| {
            ApiError::validation(vec![FieldError::new(
                "packageId",
                "not_found",
                format!("no agent {package_id} is visible in this application"),
            )])
        })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Webhook {id} not found"))
}

/// A write that found no row: the webhook was deleted meanwhile.
fn gone(id: &str) -> impl Fn(DbError) -> ApiError + '_ {
    move |e| match e {
        DbError::NotFound => not_found(id),
        other => other.into(),
    }
}

async fn visible_webhook(state: &AppState, auth: &Auth, id: &str) -> Result<WebhookRow, ApiError> {
    let app = auth.app()?;
    state
        .infra
        .db
        .get_webhook(&app.id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// `POST /api/webhooks`
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks",
    responses((status = 201, description = "Webhook created; `secret` appears only here"), (status = 400), (status = 429)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:write")?;
    let app = auth.app()?.clone();
    let b = parse_body(&state, &body, true)?;
    let package_id = b.package_id.flatten();
    if let Some(p) = &package_id {
        check_package(&state, &auth, p).await?;
    }
    let secret = new_secret();
    let at = now();
    let row = WebhookRow {
        id: format!("wh_{}", uuid::Uuid::new_v4()),
        org_id: auth.org_id.clone(),
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
            ApiError::bad_request(
                "webhook_limit_reached",
                format!(
                    "an application has at most {MAX_PER_APPLICATION} webhooks; delete one first"
                ),
            )
        })?;
    let mut dto = webhook_dto(&row);
    dto["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

/// `GET /api/webhooks`
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    params(("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "Webhooks of the application, without secrets")))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:read")?;
    let app = auth.app()?;
    let query = ListQuery::parse(q.as_deref())?;
    let page = state.infra.db.list_webhooks(&app.id, &query.page).await?;
    Ok(paged_response(
        &state.config.app_url,
        "/api/webhooks",
        &query,
        page,
        |w| &w.id,
        |w| webhook_dto(&w),
    ))
}

/// `GET /api/webhooks/{id}`
#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, description = "The webhook"), (status = 404)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:read")?;
    let w = visible_webhook(&state, &auth, &id).await?;
    Ok(Json(webhook_dto(&w)).into_response())
}

/// `PUT /api/webhooks/{id}`: every field optional.
#[utoipa::path(put, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, description = "The updated webhook"), (status = 400), (status = 404)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:write")?;
    let mut w = visible_webhook(&state, &auth, &id).await?;
    let b = parse_body(&state, &body, false)?;
    if let Some(u) = b.url {
        w.url = u;
    }
    if let Some(e) = b.events {
        w.events = sqlx::types::Json(json!(e));
    }
    if let Some(p) = b.package_id {
        if let Some(p) = &p {
            check_package(&state, &auth, p).await?;
        }
        w.package_id = p;
    }
    if let Some(m) = b.payload_mode {
        w.payload_mode = m;
    }
    if let Some(e) = b.enabled {
        w.enabled = e;
    }
    w.updated_at = now();
    let row = state.infra.db.update_webhook(&w).await.map_err(gone(&id))?;
    Ok(Json(webhook_dto(&row)).into_response())
}

/// `DELETE /api/webhooks/{id}`: pending retries are dropped with it.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:write")?;
    let w = visible_webhook(&state, &auth, &id).await?;
    state
        .infra
        .db
        .delete_webhook(&w.application_id, &w.id)
        .await
        .map_err(gone(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/webhooks/{id}/rotate-secret` `{previousSecretExpiresInSeconds?}`: a new secret (shown once);
/// the previous one keeps signing, next to the new one, for the window (default 24 h, 0 ends it now).
#[utoipa::path(post, path = "/api/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, description = "The webhook with its new `secret`"), (status = 400), (status = 404)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:write")?;
    let mut f = Fields::new(&body, "");
    let grace = match f.raw("previousSecretExpiresInSeconds") {
        None => Some(DEFAULT_ROTATION_GRACE_SECONDS),
        Some(v) => {
            match v.as_i64() {
                Some(n) if (0..=MAX_ROTATION_GRACE_SECONDS).contains(&n) => Some(n),
                _ => {
                    f.error(
                    "previousSecretExpiresInSeconds",
                    "out_of_range",
                    format!("must be a whole number of seconds from 0 to {MAX_ROTATION_GRACE_SECONDS}"),
                );
                    None
                }
            }
        }
    };
    f.finish()?;
    let grace = grace.unwrap_or(DEFAULT_ROTATION_GRACE_SECONDS);
    let mut w = visible_webhook(&state, &auth, &id).await?;
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
    let row = state.infra.db.update_webhook(&w).await.map_err(gone(&id))?;
    let mut dto = webhook_dto(&row);
    dto["secret"] = json!(secret);
    Ok(Json(dto).into_response())
}

/// `GET /api/webhooks/{id}/deliveries`: one row per attempt, newest first.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "Delivery attempts"), (status = 404)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:read")?;
    let w = visible_webhook(&state, &auth, &id).await?;
    let query = ListQuery::parse(q.as_deref())?;
    let page = state.infra.db.list_deliveries(&w.id, &query.page).await?;
    Ok(paged_response(
        &state.config.app_url,
        &format!("/api/webhooks/{id}/deliveries"),
        &query,
        page,
        |d| &d.id,
        |d| delivery_dto(&d),
    ))
}
