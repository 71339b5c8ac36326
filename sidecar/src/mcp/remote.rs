//! `/mcp/<name>` of a remote server: the agent's Streamable HTTP exchange forwarded to the server's URL
//! with the integration's credential header injected, under the rules of `/proxy` (the URL passed the
//! allowlist at configure time; every request is resolved and pinned through the SSRF guard; no
//! redirect is followed).

use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;
use url::Url;

use super::config::McpServer;
use crate::config::{Integration, Validated};
use crate::http_util::error;
use crate::server::{describe, ssrf_error, streamed_response, Purpose, Shared};
use crate::ssrf;

/// Largest request body forwarded (an MCP message).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Request headers of the Streamable HTTP transport that are forwarded; nothing else is (the run token
/// in particular stays here).
const FORWARDED: &[&str] = &[
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

pub(crate) async fn forward(
    st: &Shared,
    active: &Validated,
    server: &McpServer,
    url: &Url,
    integ: Option<&Integration>,
    req: Request,
) -> Response {
    let pinned = match ssrf::resolve_pinned(url, &active.policy, st.resolver.as_ref()).await {
        Ok(p) => p,
        Err(e) => return ssrf_error(&e),
    };
    let client = match st.client(Purpose::Proxy, &pinned) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "upstream_error", e),
    };
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    for name in FORWARDED {
        let name = HeaderName::from_static(name);
        for v in parts.headers.get_all(&name) {
            headers.append(name.clone(), v.clone());
        }
    }
    if let Some(i) = integ {
        let value = i
            .header_value
            .read()
            .expect("credential header lock")
            .clone();
        headers.insert(i.header_name.clone(), value);
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "MCP request body exceeds 4 MiB",
            )
        }
    };
    let started = Instant::now();
    let mut rb = client
        .request(parts.method.clone(), url.clone())
        .headers(headers);
    if !body.is_empty() {
        rb = rb.body(body);
    }
    match rb.send().await {
        Ok(resp) => {
            tracing::info!(run_id = %active.run_id, server = %server.name, method = %parts.method,
                status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "mcp remote call");
            streamed_response(resp)
        }
        Err(e) => {
            tracing::warn!(run_id = %active.run_id, server = %server.name, error = %describe(&e), "mcp remote call failed");
            error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!(
                    "MCP server {} did not answer: {}",
                    server.name,
                    describe(&e)
                ),
            )
        }
    }
}
