//! Cross-cutting request handling: request ids, problem rendering, access log and metrics (outermost),
//! the route-template recorder and per-route rate limits.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::auth::Auth;
use super::error::{render_problem, ApiError};
use super::json::payload_too_large;
use crate::infra::ratelimit::RateDecision;
use crate::metrics::{RequestLabels, RouteLabels, RouteOnly};
use crate::state::AppState;

/// The request id, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The matched route template, carried on the response for the access log and metrics.
#[derive(Debug, Clone)]
struct RouteTemplate(String);

/// Records the matched route template (inner layer: routing has happened).
pub async fn record_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut res = next.run(req).await;
    if let Some(t) = template {
        res.extensions_mut().insert(RouteTemplate(t));
    }
    res
}

/// During graceful shutdown (§5.3 step 1) a mutating request gets 503 `shutting_down`; GETs are still
/// served. Attached to the API routes only: the runner's event sink (`/events`, `/events/heartbeat`,
/// `/events/finalize`) keeps working until the last run is finalized or the grace period ends, so a run
/// that finishes during the grace keeps its outcome.
pub async fn shutdown_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.is_shutting_down()
        && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
    {
        return ApiError::unavailable(
            "shutting_down",
            "The server is shutting down; retry shortly",
        )
        .with_header(RETRY_AFTER, "5")
        .into_response();
    }
    next.run(req).await
}

/// Outermost layer: request id, problem rendering, access log and metrics.
pub async fn outer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = format!("req_{}", uuid::Uuid::new_v4());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        http.request.method = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    // One trace per request, or a span of the caller's trace when it sends `traceparent` (the runner's
    // sink calls carry the run's).
    let traced = crate::telemetry::exporting();
    if traced {
        span.record("otel.kind", "server");
        span.record("http.request.method", method.as_str());
        crate::telemetry::adopt_parent(
            &span,
            req.headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
    }

    let mut res = next.run(req).instrument(span.clone()).await;

    finish_problem(&mut res, &request_id, &method, &path);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("request-id", v);
    }

    let route = res
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_string());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    // Bounded label values: a client chooses the method and the path, not the number of series.
    let method_label = crate::metrics::method_label(&method);
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method: method_label.to_string(),
            route: route.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method_label.to_string(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    if traced {
        crate::telemetry::rename(&span, format!("{method} {route}"));
        span.record("http.route", route.as_str());
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
    }
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            route = %route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    res
}

/// Renders the `ApiError` carried by a response, or turns a bare framework error (404, 405, 413…) into a
/// problem, so every error body has the same shape.
/// Marks an error answer whose body is a documented JSON of its own (`/health`'s 503 `unhealthy`), which
/// must not be rewritten into a problem document.
#[derive(Clone, Copy, Debug)]
pub struct OwnErrorBody;

fn finish_problem(res: &mut Response, request_id: &str, method: &Method, path: &str) {
    if res.extensions().get::<OwnErrorBody>().is_some() {
        return;
    }
    let err = match res.extensions_mut().remove::<ApiError>() {
        Some(e) => e,
        None => {
            let status = res.status();
            // `/health` answers 503 with its own JSON report (SPEC §22.3), not a problem document.
            if status.as_u16() < 400 || path == "/health" {
                return;
            }
            // A problem document already, or a page of the dashboard that says what went wrong itself.
            let own_body = res
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("problem+json") || ct.starts_with("text/html"));
            if own_body {
                return;
            }
            match status {
                StatusCode::NOT_FOUND => {
                    ApiError::not_found(format!("API endpoint not found: {method} {path}"))
                }
                StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
                    status,
                    "method_not_allowed",
                    format!("{method} is not allowed on {path}"),
                ),
                StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
                _ => ApiError::new(
                    status,
                    "error",
                    status.canonical_reason().unwrap_or("Error").to_string(),
                ),
            }
        }
    };
    let body = render_problem(&err, request_id).to_string();
    let allow = res.headers().get(ALLOW).cloned();
    let mut new = Response::new(Body::from(body));
    *new.status_mut() = err.status;
    // Keep every header the original answer set (Retry-After, RateLimit, WWW-Authenticate, Allow…).
    for (k, v) in res.headers() {
        if k != CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            new.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Some(a) = allow {
        new.headers_mut().insert(ALLOW, a);
    }
    new.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(t) = res.extensions().get::<RouteTemplate>().cloned() {
        new.extensions_mut().insert(t);
    }
    *res = new;
}

pub use crate::net::client_ip;

/// A per-route fixed-window limit (§10.2).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub limit: u32,
    pub window_secs: u64,
}

/// Rate-limit middleware; attach with `route_layer` so the route template is known.
pub async fn rate_limit(
    State((state, limit)): State<(AppState, Limit)>,
    req: Request,
    next: Next,
) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let identity = match req.extensions().get::<Auth>() {
        Some(a) => a.identity(),
        None => format!("ip:{}", client_ip(&state, &req)),
    };
    let key = format!("{}:{}:{}", req.method(), template, identity);
    let window = Duration::from_secs(limit.window_secs);
    let decision = match state
        .infra
        .rate_limiter
        .hit(&key, limit.limit, window)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            // Fail open: an unavailable limiter must not take the API down.
            tracing::warn!(error = %e, "rate limiter unavailable; request let through");
            state.metrics.rate_limiter_errors.inc();
            return next.run(req).await;
        }
    };
    if !decision.allowed {
        state
            .metrics
            .rate_limited
            .get_or_create(&RouteOnly { route: template })
            .inc();
        let err = too_many_requests(&decision);
        return err.into_response();
    }
    let mut res = next.run(req).await;
    // A handler that applied a limit of its own (e.g. per email on sign-in) reports that one.
    if res.headers().contains_key("ratelimit") {
        return res;
    }
    if let Ok(v) = HeaderValue::from_str(&decision.header()) {
        res.headers_mut().insert("ratelimit", v);
    }
    if let Ok(v) = HeaderValue::from_str(&decision.policy()) {
        res.headers_mut().insert("ratelimit-policy", v);
    }
    res
}

/// The 429 answer of a refused hit, with `Retry-After`, `RateLimit` and `RateLimit-Policy` (§10.1).
pub fn too_many_requests(decision: &RateDecision) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too many requests. Please try again shortly.",
    )
    .with_header(RETRY_AFTER, &decision.reset_secs.to_string())
    .with_header(
        "ratelimit".parse().expect("static header"),
        &decision.header(),
    )
    .with_header(
        "ratelimit-policy".parse().expect("static header"),
        &decision.policy(),
    );
    err.retry_after = Some(decision.reset_secs);
    err
}

/// One hit on a limit keyed by something other than the caller (e.g. the email a sign-in names):
/// `Err(429)` when over the limit; a limiter error lets the request through, as [`rate_limit`] does.
pub async fn hit_limit(
    state: &AppState,
    route: &str,
    key: &str,
    limit: Limit,
) -> Result<(), ApiError> {
    let window = Duration::from_secs(limit.window_secs);
    match state
        .infra
        .rate_limiter
        .hit(&format!("{route}:{key}"), limit.limit, window)
        .await
    {
        Ok(d) if !d.allowed => {
            state
                .metrics
                .rate_limited
                .get_or_create(&RouteOnly {
                    route: route.to_string(),
                })
                .inc();
            Err(too_many_requests(&d))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; request let through");
            state.metrics.rate_limiter_errors.inc();
            Ok(())
        }
    }
}
