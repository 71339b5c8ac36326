//! Small HTTP helpers shared by the API listener and the forward proxy.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

/// A sidecar error body: `{"error":"<code>","message":…}`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": code, "message": message.to_string()});
    (status, axum::Json(body)).into_response()
}

/// The same error with a status given as `u16` (SSRF errors carry their own).
pub(crate) fn error_u16(status: u16, code: &str, message: impl std::fmt::Display) -> Response {
    error(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        code,
        message,
    )
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named by `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Whether the request's `Host` (without port) is `sidecar`, `localhost` or `127.0.0.1`.
pub(crate) fn host_allowed(req_headers: &HeaderMap, uri: &http::Uri) -> bool {
    let raw = match req_headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h.to_string(),
        None => match uri.host() {
            Some(h) => h.to_string(),
            None => return false,
        },
    };
    let host = host_without_port(raw.trim());
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    matches!(host.as_str(), "sidecar" | "localhost" | "127.0.0.1")
}

fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => h,
    }
}

/// Constant-time comparison of two byte strings (only the length may leak).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// An empty response with a status.
pub(crate) fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        host_allowed(&h, &"/proxy".parse().unwrap())
    }

    #[test]
    fn host_check() {
        for ok in [
            "sidecar",
            "sidecar:8080",
            "localhost:1",
            "127.0.0.1:4567",
            "LOCALHOST",
        ] {
            assert!(check(ok), "{ok}");
        }
        for bad in [
            "evil.com",
            "127.0.0.2",
            "[::1]:80",
            "sidecar.evil.com",
            "10.0.0.1:8080",
        ] {
            assert!(!check(bad), "{bad}");
        }
        assert!(!host_allowed(&HeaderMap::new(), &"/proxy".parse().unwrap()));
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "a/b".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
