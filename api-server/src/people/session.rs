//! Browser sessions: a random token in an HttpOnly cookie, signed with `BETTER_AUTH_SECRET`; the server
//! keeps the token's SHA-256 in a `sessions` row (revocable, listed per user, sliding expiry).
//!
//! The cookie value is `<token>.<base64url(HMAC-SHA-256(secret, token))>`. A cookie whose signature does
//! not verify under the current secret is ignored, so rotating the secret signs everyone out and touches
//! nothing else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Duration;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::infra::database::Timestamp;

pub const COOKIE_NAME: &str = "appstrate_session";

/// How long a session lives without use, and how often its expiry slides forward when used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub ttl_seconds: u64,
}

impl SessionPolicy {
    pub fn expires_at(&self, from: Timestamp) -> Timestamp {
        from + Duration::seconds(self.ttl_seconds as i64)
    }

    /// A used session is renewed (its expiry moved to `now + ttl`) once a tenth of its lifetime has
    /// passed since its last renewal, so that an active user stays signed in without a write per request.
    pub fn due_for_renewal(&self, renewed_at: Timestamp, now: Timestamp) -> bool {
        let step = (self.ttl_seconds / 10).max(1) as i64;
        now - renewed_at >= Duration::seconds(step)
    }
}

/// Signs and checks cookie values with the session secret.
#[derive(Clone)]
pub struct CookieSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

impl CookieSigner {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, token: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"appstrate-session:");
        mac.update(token.as_bytes());
        mac
    }

    pub fn sign(&self, token: &str) -> String {
        let tag = self.mac(token).finalize().into_bytes();
        format!("{token}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The token of a correctly signed value (constant-time comparison).
    pub fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (token, tag) = value.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(token).verify_slice(&tag).ok()?;
        Some(token)
    }
}

/// A new session token (32 random bytes, hex).
pub fn new_token() -> String {
    crate::crypto::random_hex(32)
}

/// The `Set-Cookie` value carrying `signed`: HttpOnly, SameSite=Lax, Path=/, `Secure` when `secure`.
pub fn set_cookie(signed: &str, max_age_seconds: u64, secure: bool) -> String {
    cookie::Cookie::build((COOKIE_NAME, signed.to_string()))
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .path("/")
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_seconds as i64))
        .build()
        .to_string()
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

/// The session cookie's value among the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>) -> Option<String> {
    named_cookie(headers, COOKIE_NAME)
}

/// A cookie's value among the request's `Cookie` headers.
pub fn named_cookie<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<String> {
    headers
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let s = CookieSigner::new("secret-one");
        let v = s.sign("abc");
        assert_eq!(s.verify(&v), Some("abc"));
        assert_eq!(CookieSigner::new("secret-two").verify(&v), None);
        assert_eq!(s.verify("abc.AAAA"), None);
        assert_eq!(s.verify("abc"), None);
        let tampered = v.replacen("abc", "abd", 1);
        assert_eq!(s.verify(&tampered), None);
    }

    #[test]
    fn cookie_flags() {
        let c = set_cookie("v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Secure"));
        assert!(!set_cookie("v", 60, false).contains("Secure"));
        assert_eq!(
            cookie_value(["a=1; appstrate_session=xyz; b=2"].into_iter()),
            Some("xyz".into())
        );
    }

    #[test]
    fn renewal() {
        let p = SessionPolicy { ttl_seconds: 1000 };
        let t = chrono::Utc::now();
        assert!(!p.due_for_renewal(t, t + Duration::seconds(99)));
        assert!(p.due_for_renewal(t, t + Duration::seconds(100)));
    }
}
