//! `authorized_uris` glob patterns (SPEC §14.2): `*` matches one DNS label or one path segment
//! (or, inside a label or segment, any run of characters), `**` matches anything: any number of path
//! segments, or one or more DNS labels. The query string is not part of the match.

use std::fmt;

use url::Url;

use crate::ssrf;

/// A compiled `authorized_uris` entry such as `https://*.githubusercontent.com/**`.
#[derive(Clone, PartialEq, Eq)]
pub struct UriPattern {
    raw: String,
    scheme: String,
    host: Vec<String>,
    /// `None` means any port (`:*`).
    port: Option<u16>,
    path: Vec<String>,
}

impl fmt::Debug for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UriPattern({})", self.raw)
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl UriPattern {
    /// Compiles a pattern. It must be `http(s)://host[:port][/path]`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let (scheme, rest) = trimmed
            .split_once("://")
            .ok_or_else(|| format!("`{raw}` is not an absolute URL pattern"))?;
        let scheme = scheme.to_ascii_lowercase();
        let port_default = default_port(&scheme)
            .ok_or_else(|| format!("`{raw}`: scheme must be http or https"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("`{raw}`: user info is not allowed"));
        }
        let (host, port) = split_host_port(authority);
        if host.is_empty() {
            return Err(format!("`{raw}` has no host"));
        }
        let port = match port {
            None => Some(port_default),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{raw}` has an invalid port"))?,
            ),
        };
        let host_norm = ssrf::normalize_host(host);
        let host = if host_norm.contains(':') {
            vec![host_norm]
        } else {
            host_norm.split('.').map(str::to_string).collect()
        };
        if host.iter().any(String::is_empty) {
            return Err(format!("`{raw}` has an empty host label"));
        }
        let path = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .map(str::to_string)
            .collect();
        Ok(Self {
            raw: raw.to_string(),
            scheme,
            host,
            port,
            path,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether a (normalised) URL matches: scheme, host, port and path.
    pub fn matches(&self, url: &Url) -> bool {
        if url.scheme() != self.scheme {
            return false;
        }
        let Some(port) = url.port_or_known_default() else {
            return false;
        };
        let Some(host) = ssrf::url_host(url) else {
            return false;
        };
        if !self.matches_host_port(&host, port) {
            return false;
        }
        let path = url.path();
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let pattern: Vec<&str> = self.path.iter().map(String::as_str).collect();
        match_segments(&pattern, &segments, 0)
    }

    /// Whether a host (normalised, no brackets) and port match the pattern's authority.
    pub fn matches_host_port(&self, host: &str, port: u16) -> bool {
        if let Some(p) = self.port {
            if p != port {
                return false;
            }
        }
        let host = ssrf::normalize_host(host);
        let labels: Vec<&str> = if host.contains(':') {
            vec![host.as_str()]
        } else {
            host.split('.').collect()
        };
        let pattern: Vec<&str> = self.host.iter().map(String::as_str).collect();
        match_segments(&pattern, &labels, 1)
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let host = &authority[..end + 2];
            let after = &rest[end + 1..];
            return (host, after.strip_prefix(':'));
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    }
}

/// Matches pattern parts against parts; `**` absorbs at least `min_globstar` parts.
fn match_segments(pattern: &[&str], parts: &[&str], min_globstar: usize) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (min_globstar..=parts.len())
            .any(|skip| match_segments(rest, &parts[skip..], min_globstar)),
        Some((first, rest)) => match parts.split_first() {
            Some((part, others)) => {
                match_one(first, part) && match_segments(rest, others, min_globstar)
            }
            None => false,
        },
    }
}

/// One label or segment: a bare `*` matches any non-empty part; inside a part `*` matches any run.
fn match_one(pattern: &str, part: &str) -> bool {
    if pattern == "*" {
        return !part.is_empty();
    }
    if !pattern.contains('*') {
        return pattern == part;
    }
    wildcard(pattern.as_bytes(), part.as_bytes())
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether any pattern matches the URL.
pub fn any_matches(patterns: &[UriPattern], url: &Url) -> bool {
    patterns.iter().any(|p| p.matches(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, u: &str) -> bool {
        UriPattern::parse(p)
            .unwrap()
            .matches(&Url::parse(u).unwrap())
    }

    #[test]
    fn double_star_matches_anything_below() {
        assert!(m("https://api.github.com/**", "https://api.github.com/"));
        assert!(m("https://api.github.com/**", "https://api.github.com"));
        assert!(m(
            "https://api.github.com/**",
            "https://api.github.com/repos/a/b/issues?state=open"
        ));
        assert!(m("https://API.github.com/**", "https://api.GITHUB.com/x"));
        assert!(m("https://slack.com/api/**", "https://slack.com/api"));
        assert!(m(
            "https://slack.com/api/**",
            "https://slack.com/api/chat.postMessage"
        ));
        assert!(!m("https://slack.com/api/**", "https://slack.com/apix"));
        assert!(!m("https://slack.com/api/**", "https://slack.com/other"));
        assert!(!m(
            "https://slack.com/api/**",
            "https://slack.com/api/../admin"
        ));
        assert!(!m("https://api.github.com/**", "http://api.github.com/x"));
        assert!(!m(
            "https://api.github.com/**",
            "https://api.github.com:8443/x"
        ));
        assert!(m(
            "https://api.github.com/**",
            "https://api.github.com:443/x"
        ));
        assert!(!m(
            "https://api.github.com/**",
            "https://evil.com/api.github.com/x"
        ));
        assert!(!m(
            "https://api.github.com/**",
            "https://api.github.com.evil.com/x"
        ));
        assert!(!m(
            "https://api.github.com/**",
            "https://api.github.com@evil.com/"
        ));
    }

    #[test]
    fn single_star_is_one_label_or_segment() {
        let p = "https://*.githubusercontent.com/**";
        assert!(m(p, "https://raw.githubusercontent.com/a/b"));
        assert!(!m(p, "https://a.b.githubusercontent.com/a"));
        assert!(!m(p, "https://githubusercontent.com/a"));
        let p = "https://api.example.com/v1/*/items";
        assert!(m(p, "https://api.example.com/v1/42/items"));
        assert!(!m(p, "https://api.example.com/v1/42/43/items"));
        assert!(!m(p, "https://api.example.com/v1//items"));
        assert!(m(
            "https://api.example.com/v*/x",
            "https://api.example.com/v2/x"
        ));
        assert!(m("https://**.example.com/", "https://a.b.example.com/"));
        assert!(!m("https://**.example.com/", "https://example.com/"));
    }

    #[test]
    fn ports_and_ips() {
        assert!(m("http://127.0.0.1:*/**", "http://127.0.0.1:5555/x"));
        assert!(m("http://127.0.0.1:5555/**", "http://127.0.0.1:5555/x"));
        assert!(!m("http://127.0.0.1:5555/**", "http://127.0.0.1:5556/x"));
        assert!(m("http://[::1]:80/**", "http://[::1]/x"));
        let p = UriPattern::parse("https://*.twilio.com/**").unwrap();
        assert!(p.matches_host_port("api.twilio.com", 443));
        assert!(!p.matches_host_port("api.twilio.com", 80));
    }

    #[test]
    fn bad_patterns() {
        assert!(UriPattern::parse("api.github.com/**").is_err());
        assert!(UriPattern::parse("ftp://x/**").is_err());
        assert!(UriPattern::parse("https:///x").is_err());
        assert!(UriPattern::parse("https://x:99999/").is_err());
    }
}
