//! The W3C trace context the platform hands down in `TRACEPARENT` when it exports traces: sent as
//! `traceparent` on the runner's calls to the platform (event sink, workspace) and to the sidecar's
//! model route, so that they join the run's trace. It holds ids only, never a secret; a value that is
//! not a well-formed version-00 `traceparent` is ignored.

use std::sync::LazyLock;

use reqwest::header::{HeaderMap, HeaderValue};

static HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    let mut headers = HeaderMap::new();
    if let Some(v) = std::env::var("TRACEPARENT")
        .ok()
        .filter(|v| well_formed(v))
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert("traceparent", v);
    }
    headers
});

/// The `traceparent` header to add to a call, or no header.
pub fn headers() -> HeaderMap {
    HEADERS.clone()
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero.
fn well_formed(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn only_version_00_traceparents_pass() {
        assert!(well_formed(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }
}
