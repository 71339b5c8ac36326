//! The forward proxy (SPEC §14.3): absolute-form HTTP and `CONNECT host:port`, limited to the run's
//! egress allowlist, without credential injection. Tunnels connect to the pinned address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::allowlist::UriPattern;
use crate::auth::{self, Route};
use crate::config::Validated;
use crate::http_util::{empty, error};
use crate::server::{
    describe, forward_request_headers, request_body, ssrf_error, streamed_response, Purpose, Shared,
};
use crate::ssrf::{self, Policy};

/// Serves one forward-proxy connection (HTTP/1.1 with upgrades for `CONNECT`).
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = crate::http_util::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Which SSRF policy applies to an allowed destination, or `None` when egress is denied.
pub(crate) fn egress_policy(active: &Validated, host: &str, port: u16) -> Option<Policy> {
    let host = ssrf::normalize_host(host);
    let same = |u: &url::Url| {
        ssrf::url_host(u).as_deref() == Some(host.as_str())
            && u.port_or_known_default() == Some(port)
    };
    if same(&active.platform) {
        // The platform origin is exempt from the private-range block.
        let mut policy = active.policy.clone();
        policy.exempt(&host);
        return Some(policy);
    }
    if same(&active.llm_base) {
        return Some(active.policy.clone());
    }
    let authorized = active
        .integrations
        .iter()
        .flat_map(|i| i.patterns.iter())
        .any(|p: &UriPattern| p.matches_host_port(&host, port));
    authorized.then(|| active.policy.clone())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response {
    let Some(active) = shared.active() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "sidecar is not configured",
        );
    };
    if !auth::authorized(
        req.headers(),
        Route::Forward,
        active.run_token.expose().as_bytes(),
    ) {
        tracing::warn!(run_id = %active.run_id, "forward proxy refused: missing or wrong run token");
        let mut r = error(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy_auth_required",
            "the forward proxy needs the run token (Proxy-Authorization: Basic or Bearer)",
        );
        r.headers_mut().insert(
            http::header::PROXY_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"appstrate-sidecar\""),
        );
        return r;
    }
    if req.method() == Method::CONNECT {
        connect(shared, active, req).await
    } else {
        forward_http(shared, active, req).await
    }
}

fn denied(host: &str, port: u16) -> Response {
    error(
        StatusCode::FORBIDDEN,
        "egress_denied",
        format!("egress to {host}:{port} is not allowed for this run"),
    )
}

async fn connect(shared: Arc<Shared>, active: Arc<Validated>, req: Request<Incoming>) -> Response {
    let Some(authority) = req.uri().authority().cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "CONNECT needs host:port",
        );
    };
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(443);
    let Some(policy) = egress_policy(&active, &host, port) else {
        tracing::info!(run_id = %active.run_id, host = %host, port, "egress denied (CONNECT)");
        return denied(&ssrf::normalize_host(&host), port);
    };
    let pinned =
        match ssrf::resolve_host_pinned(&host, port, &policy, shared.resolver.as_ref()).await {
            Ok(p) => p,
            Err(e) => return ssrf_error(&e),
        };
    let upstream = match tokio::time::timeout(
        shared.timeouts.connect,
        TcpStream::connect(pinned.addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "connect_failed",
                format!("cannot connect to {}:{port}: {e}", pinned.host),
            )
        }
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "connect_timeout",
                format!("connecting to {}:{port} timed out", pinned.host),
            )
        }
    };
    let _ = upstream.set_nodelay(true);
    tracing::info!(run_id = %active.run_id, host = %pinned.host, port, "tunnel opened");
    let idle = shared.timeouts.idle;
    let stop = shared.shutdown.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let client = TokioIo::new(upgraded);
                tunnel(client, upstream, idle, stop).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    empty(StatusCode::OK)
}

/// Copies bytes both ways until both sides are closed, nothing moved for `idle`, or shutdown.
async fn tunnel<A>(client: A, upstream: TcpStream, idle: Duration, mut stop: watch::Receiver<bool>)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = upstream.into_split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let (mut c_open, mut u_open) = (true, true);
    let mut deadline = tokio::time::Instant::now() + idle;
    while c_open || u_open {
        tokio::select! {
            r = cr.read(&mut cbuf), if c_open => match r {
                Ok(0) | Err(_) => { c_open = false; let _ = uw.shutdown().await; }
                Ok(n) => {
                    if uw.write_all(&cbuf[..n]).await.is_err() { break; }
                    deadline = tokio::time::Instant::now() + idle;
                }
            },
            r = ur.read(&mut ubuf), if u_open => match r {
                Ok(0) | Err(_) => { u_open = false; let _ = cw.shutdown().await; }
                Ok(n) => {
                    if cw.write_all(&ubuf[..n]).await.is_err() { break; }
                    deadline = tokio::time::Instant::now() + idle;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!("tunnel idle timeout");
                break;
            }
            _ = crate::http_util::stopped(&mut stop) => break,
        }
    }
}

async fn forward_http(
    shared: Arc<Shared>,
    active: Arc<Validated>,
    req: Request<Incoming>,
) -> Response {
    let uri = req.uri().clone();
    if uri.scheme().is_none() || uri.authority().is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "forward proxy requests must use absolute-form URIs",
        );
    }
    let url = match ssrf::parse_url(&uri.to_string()) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request", e),
    };
    let host = ssrf::url_host(&url).unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let Some(policy) = egress_policy(&active, &host, port) else {
        tracing::info!(run_id = %active.run_id, host = %host, port, "egress denied (HTTP)");
        return denied(&host, port);
    };
    let pinned = match ssrf::resolve_pinned(&url, &policy, shared.resolver.as_ref()).await {
        Ok(p) => p,
        Err(e) => return ssrf_error(&e),
    };
    let client = match shared.client(Purpose::Forward, &pinned) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "upstream_error", describe(&e)),
    };
    let (parts, body) = req.into_parts();
    let mut rb = client
        .request(parts.method.clone(), url)
        .headers(forward_request_headers(&parts.headers));
    if let Some(b) = request_body(Body::new(body)) {
        rb = rb.body(b);
    }
    match rb.send().await {
        Ok(resp) => {
            tracing::info!(run_id = %active.run_id, method = %parts.method, host = %pinned.host, status = resp.status().as_u16(), "forwarded request");
            streamed_response(resp)
        }
        Err(e) => {
            let (status, code) = if e.is_timeout() {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "upstream_error")
            };
            error(status, code, describe(&e))
        }
    }
}
