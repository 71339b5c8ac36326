//! `Idempotency-Key` (§8) for the routes that support it, and the periodic sweep of expired records.
//!
//! A record belongs to the caller's full identity (organization, application, credential, impersonated
//! end-user) and to the request (method, path and query, body). A repeat goes through authentication and
//! the application context (the layers around this one) and through the route's scope check here, before
//! anything stored is looked at. Stored answers are encrypted with the connection keyring: a new webhook's
//! one-time `secret` is in one.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::auth::Auth;
use super::error::ApiError;
use super::json::read_body;
use crate::infra::database::{now, IdempotencyScope, IdempotencyState};
use crate::state::AppState;

/// How often expired records are deleted (besides when their key is reused).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The middleware; its state carries the scope the route requires (the handler checks it too).
pub async fn idempotency(
    State((state, scope)): State<(AppState, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    match idempotency_inner(state, scope, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The SHA-256 of what makes two requests the same: method, path with query, and body.
fn request_hash(parts: &axum::http::request::Parts, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b" ");
    h.update(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("")
            .as_bytes(),
    );
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

async fn idempotency_inner(
    state: AppState,
    required_scope: &'static str,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(raw) = req.headers().get("idempotency-key") else {
        return Ok(next.run(req).await);
    };
    let auth = req
        .extensions()
        .get::<Auth>()
        .cloned()
        .ok_or_else(|| ApiError::internal("idempotency without authentication"))?;
    // A repeat is authorized exactly like a first request: a caller that may not make it gets no replay.
    auth.require_scope(required_scope)?;
    let key = raw
        .to_str()
        .ok()
        .filter(|k| valid_idempotency_key(k))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 printable ASCII characters",
            )
            .with_param("Idempotency-Key")
        })?
        .to_string();
    let scope = IdempotencyScope {
        org_id: auth.org_id.clone(),
        application_id: auth.app()?.id.clone(),
        credential: auth.identity(),
        end_user_id: auth
            .end_user
            .as_ref()
            .map(|e| e.id.clone())
            .unwrap_or_default(),
        key,
    };
    let (parts, body) = req.into_parts();
    let bytes = read_body(Request::from_parts(parts.clone(), body)).await?;
    let hash = request_hash(&parts, &bytes);
    let db = &state.infra.db;
    match db.idempotency_begin(&scope, &hash).await? {
        IdempotencyState::Acquired => {}
        IdempotencyState::InProgress { body_hash } => {
            return Err(if body_hash != hash {
                conflict()
            } else {
                ApiError::conflict(
                    "idempotency_in_progress",
                    "A request with this Idempotency-Key is still being processed",
                )
            });
        }
        IdempotencyState::Completed {
            body_hash,
            status,
            body,
        } => {
            if body_hash != hash {
                return Err(conflict());
            }
            let body = state.keyring.decrypt(&body).map_err(|e| {
                tracing::warn!(error = %e, "a stored idempotent answer cannot be decrypted");
                ApiError::conflict(
                    "idempotency_replay_unavailable",
                    "The answer stored for this Idempotency-Key can no longer be decrypted (its \
                     encryption key was retired); send the request with a new Idempotency-Key",
                )
            })?;
            let mut res = Response::new(Body::from(body));
            *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(res);
        }
    }
    let res = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !res.status().is_success() {
        db.idempotency_release(&scope).await?;
        return Ok(res);
    }
    let (parts, body) = res.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            db.idempotency_release(&scope).await?;
            return Err(ApiError::internal(e));
        }
    };
    db.idempotency_complete(&scope, parts.status.as_u16(), &state.keyring.encrypt(&body))
        .await?;
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn conflict() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_conflict",
        "This Idempotency-Key was used with a different request",
    )
}

/// Deletes every expired record; returns how many.
pub async fn sweep_expired(state: &AppState) -> u64 {
    match state.infra.db.idempotency_sweep(now()).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(deleted = n, "expired idempotency records deleted");
            }
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not delete expired idempotency records");
            0
        }
    }
}

/// Runs [`sweep_expired`] every [`SWEEP_INTERVAL`] (with jitter, so replicas spread out) until shutdown.
pub fn start_sweeper(state: &AppState) {
    let s = state.clone();
    tokio::spawn(async move {
        loop {
            let jitter = rand::thread_rng().gen_range(0.85..1.15);
            tokio::time::sleep(SWEEP_INTERVAL.mul_f64(jitter)).await;
            if s.is_shutting_down() {
                break;
            }
            sweep_expired(&s).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::valid_idempotency_key;

    #[test]
    fn idempotency_keys() {
        assert!(valid_idempotency_key("abc-123"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key(&"x".repeat(256)));
    }
}
