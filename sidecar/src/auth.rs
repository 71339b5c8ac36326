//! The per-run token that every `/llm`, `/proxy` and forward-proxy request must present (SPEC §14,
//! docs/sidecar.md). The API server draws it for each run, gives it to the sidecar in `runToken` and to
//! the runner as `MODEL_API_KEY`, so that no other local process (process mode, or anything reaching a
//! published port) can spend the run's model key or integration credentials.
//!
//! Accepted forms:
//! * `Proxy-Authorization: Bearer <token>` on every route (hop-by-hop, so never forwarded upstream);
//! * `Proxy-Authorization: Basic base64(<any user>:<token>)` on the forward proxy, which is what HTTP
//!   clients send for `HTTP_PROXY=http://run:<token>@sidecar:8081`;
//! * on `/llm`, the model SDK's own key header: `Authorization: Bearer <token>` or `x-api-key: <token>`
//!   (both are removed before the real key is injected).
//!
//! Comparisons are constant-time; the token is never logged.

use base64::Engine;
use http::header::{self, HeaderMap};

use crate::http_util::ct_eq;

/// Which listener a request arrived on: it decides the accepted header forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Llm,
    /// `/mcp/<name>`: the MCP client sends the token as `Authorization: Bearer`, like a model SDK.
    Mcp,
    Proxy,
    Forward,
}

/// The token of a `Bearer` credential, or the password of a `Basic` one (when allowed).
fn credential(value: &str, basic: bool) -> Option<Vec<u8>> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// Whether the request carries the run's token in one of the forms its route accepts.
pub(crate) fn authorized(headers: &HeaderMap, route: Route, token: &[u8]) -> bool {
    if token.is_empty() {
        return false;
    }
    let mut presented: Vec<Vec<u8>> = headers
        .get_all(header::PROXY_AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| credential(v, route == Route::Forward))
        .collect();
    if matches!(route, Route::Llm | Route::Mcp) {
        presented.extend(
            headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| credential(v, false)),
        );
        presented.extend(
            headers
                .get_all("x-api-key")
                .iter()
                .map(|v| v.as_bytes().to_vec()),
        );
    }
    // Every candidate is compared, so the time does not say which header held the right one.
    presented.iter().fold(false, |ok, p| ct_eq(p, token) | ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TOKEN: &[u8] = b"sct_0123456789abcdef0123456789abcdef";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn accepted_forms_per_route() {
        let t = std::str::from_utf8(TOKEN).unwrap();
        let bearer = format!("Bearer {t}");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("run:{t}"))
        );
        for route in [Route::Llm, Route::Proxy, Route::Forward] {
            assert!(authorized(
                &headers(&[("proxy-authorization", &bearer)]),
                route,
                TOKEN
            ));
            assert!(!authorized(&headers(&[]), route, TOKEN));
            assert!(!authorized(
                &headers(&[("proxy-authorization", "Bearer sct_wrong")]),
                route,
                TOKEN
            ));
            assert!(!authorized(
                &headers(&[("proxy-authorization", &bearer)]),
                route,
                b""
            ));
        }
        assert!(authorized(
            &headers(&[("proxy-authorization", &basic)]),
            Route::Forward,
            TOKEN
        ));
        assert!(!authorized(
            &headers(&[("proxy-authorization", &basic)]),
            Route::Proxy,
            TOKEN
        ));
        for h in [("authorization", bearer.as_str()), ("x-api-key", t)] {
            assert!(authorized(&headers(&[h]), Route::Llm, TOKEN));
            assert!(!authorized(&headers(&[h]), Route::Proxy, TOKEN));
            assert!(!authorized(&headers(&[h]), Route::Forward, TOKEN));
        }
        // A wrong header next to the right one still passes; a prefix of the token does not.
        assert!(authorized(
            &headers(&[("authorization", "Bearer nope"), ("x-api-key", t)]),
            Route::Llm,
            TOKEN
        ));
        assert!(!authorized(
            &headers(&[("x-api-key", &t[..t.len() - 1])]),
            Route::Llm,
            TOKEN
        ));
    }
}
