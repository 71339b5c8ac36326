//! Trace context: a call that carries `traceparent` (the runner sends the run's when the platform
//! exports traces) is handled in a span of that trace, so the sidecar's upstream call shows under the
//! run. Without the header, or without an OpenTelemetry layer in the process, nothing is added.

use std::collections::HashMap;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub(crate) async fn traced(req: Request, next: Next) -> Response {
    let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "sidecar",
        otel.name = %format!("sidecar {} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), parent);
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
    let res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    res
}
