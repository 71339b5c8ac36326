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
use crate::http::error::ApiError;
use crate::http::idempotency::idempotency;
use crate::http::json::JsonBody;
use crate::http::list::{paged_response, ListQuery};
use crate::http::middleware::{rate_limit, Limit};
use crate::infra::database::now;
use crate::infra::database::webhooks::{DeliveryRow, WebhookRow};
use crate::state::AppState;
use crate::webhooks::manage;

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

/// `POST /api/webhooks`
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks",
    operation_id = "createWebhook", summary = "Create a webhook (the secret is shown once)",
    request_body = crate::http::openapi::WebhookRequest,
    responses((status = 201, description = "Webhook created; `secret` appears only here", body = crate::http::openapi::Webhook), (status = 400), (status = 429)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (row, secret) = manage::create(&state, &auth, &body).await?;
    let mut dto = webhook_dto(&row);
    dto["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

/// `GET /api/webhooks`
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    operation_id = "listWebhooks", summary = "List webhooks",
    params(("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "Webhooks of the application, without secrets", body = crate::http::openapi::WebhookList)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(q.as_deref())?;
    let page = manage::list(&state, &auth, &query.page).await?;
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
    operation_id = "getWebhook", summary = "Get a webhook",
    params(("id" = String, Path)),
    responses((status = 200, description = "The webhook", body = crate::http::openapi::Webhook), (status = 404)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let w = manage::get(&state, &auth, &id).await?;
    Ok(Json(webhook_dto(&w)).into_response())
}

/// `PUT /api/webhooks/{id}`: every field optional.
#[utoipa::path(put, path = "/api/webhooks/{id}", tag = "webhooks",
    operation_id = "updateWebhook", summary = "Update a webhook",
    params(("id" = String, Path)),
    request_body = crate::http::openapi::WebhookRequest,
    responses((status = 200, description = "The updated webhook", body = crate::http::openapi::Webhook), (status = 400), (status = 404)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let row = manage::update(&state, &auth, &id, &body).await?;
    Ok(Json(webhook_dto(&row)).into_response())
}

/// `DELETE /api/webhooks/{id}`: pending retries are dropped with it.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks",
    operation_id = "deleteWebhook", summary = "Delete a webhook",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    manage::delete(&state, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/webhooks/{id}/rotate-secret` `{previousSecretExpiresInSeconds?}`: a new secret (shown once);
/// the previous one keeps signing, next to the new one, for the window (default 24 h, 0 ends it now).
#[utoipa::path(post, path = "/api/webhooks/{id}/rotate-secret", tag = "webhooks",
    operation_id = "rotateWebhookSecret", summary = "Rotate the signing secret of a webhook",
    params(("id" = String, Path)),
    request_body = crate::http::openapi::RotateSecretRequest,
    responses((status = 200, description = "The webhook with its new `secret`", body = crate::http::openapi::Webhook), (status = 400), (status = 404)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("webhooks:write")?;
    let grace = manage::rotation_grace(&body)?;
    let (row, secret) = manage::rotate_secret(&state, &auth, &id, grace).await?;
    let mut dto = webhook_dto(&row);
    dto["secret"] = json!(secret);
    Ok(Json(dto).into_response())
}

/// `GET /api/webhooks/{id}/deliveries`: one row per attempt, newest first.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    operation_id = "listWebhookDeliveries", summary = "List the delivery attempts of a webhook",
    params(("id" = String, Path), ("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "Delivery attempts", body = crate::http::openapi::WebhookDeliveryList), (status = 404)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(q.as_deref())?;
    let page = manage::deliveries(&state, &auth, &id, &query.page).await?;
    Ok(paged_response(
        &state.config.app_url,
        &format!("/api/webhooks/{id}/deliveries"),
        &query,
        page,
        |d| &d.id,
        |d| delivery_dto(&d),
    ))
}
