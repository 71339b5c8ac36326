//! Short-lived URLs signed with `UPLOAD_SIGNING_SECRET`: a document download, a document's content sent by
//! its run, or an upload's bytes. The signature binds the HTTP method, the object (its id), the expiry and
//! any limit carried by the URL (an upload's size), so a URL cannot be replayed with another method, on
//! another object, after its expiry or with a larger limit. Comparison is constant-time.
//!
//! Only this secret signs URLs: rotating it invalidates every outstanding URL and nothing else (sessions
//! and everything else live elsewhere).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signed URL is refused (all answered 403 with a message saying which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// `expires` or `signature` is missing or malformed.
    Malformed,
    Expired,
    /// The signature does not match (tampered, another method or object, or another secret).
    Invalid,
}

impl LinkError {
    pub fn message(self) -> &'static str {
        match self {
            LinkError::Malformed => {
                "This URL is not a valid signed URL: `expires` and `signature` are required"
            }
            LinkError::Expired => "This signed URL has expired; ask for a new one",
            LinkError::Invalid => {
                "The URL's signature is invalid (altered, used with another method, or signed with a \
                 secret that has since been rotated)"
            }
        }
    }
}

fn mac(secret: &[u8], method: &str, object: &str, expires: i64, bound: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(
        format!(
            "appstrate-signed-url:v1\n{}\n{object}\n{expires}\n{bound}",
            method.to_ascii_uppercase()
        )
        .as_bytes(),
    );
    mac
}

/// The signature of (method, object, expiry, bound values), base64url without padding.
pub fn sign(secret: &[u8], method: &str, object: &str, expires: i64, bound: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        mac(secret, method, object, expires, bound)
            .finalize()
            .into_bytes(),
    )
}

/// The query string of a signed URL for `object` (`id=…&expires=…[&max=…]&signature=…`).
pub fn query(secret: &[u8], method: &str, object: &str, expires: i64, max: Option<u64>) -> String {
    let bound = max.map(|m| format!("max={m}")).unwrap_or_default();
    let sig = sign(secret, method, object, expires, &bound);
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("id", object);
    q.append_pair("expires", &expires.to_string());
    if let Some(m) = max {
        q.append_pair("max", &m.to_string());
    }
    q.append_pair("signature", &sig);
    q.finish()
}

/// The parts of a signed URL's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuery {
    pub id: String,
    pub expires: i64,
    pub max: Option<u64>,
    pub signature: String,
}

impl SignedQuery {
    pub fn parse(raw: Option<&str>) -> Result<SignedQuery, LinkError> {
        let mut id = None;
        let mut expires = None;
        let mut max = None;
        let mut signature = None;
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "id" => id = Some(v.into_owned()),
                "expires" => expires = Some(v.parse::<i64>().map_err(|_| LinkError::Malformed)?),
                "max" => max = Some(v.parse::<u64>().map_err(|_| LinkError::Malformed)?),
                "signature" => signature = Some(v.into_owned()),
                _ => {}
            }
        }
        match (id, expires, signature) {
            (Some(id), Some(expires), Some(signature)) if !id.is_empty() => Ok(SignedQuery {
                id,
                expires,
                max,
                signature,
            }),
            _ => Err(LinkError::Malformed),
        }
    }

    /// Checks the signature for `method` (constant-time), then the expiry.
    pub fn verify(&self, secret: &[u8], method: &str, now: i64) -> Result<(), LinkError> {
        let bound = self.max.map(|m| format!("max={m}")).unwrap_or_default();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| LinkError::Invalid)?;
        mac(secret, method, &self.id, self.expires, &bound)
            .verify_slice(&raw)
            .map_err(|_| LinkError::Invalid)?;
        if now >= self.expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-upload-signing-secret";

    fn parsed(q: &str) -> SignedQuery {
        SignedQuery::parse(Some(q)).unwrap()
    }

    #[test]
    fn method_object_expiry_and_limit_are_bound() {
        let q = query(KEY, "GET", "doc_1", 1_000, None);
        assert_eq!(parsed(&q).verify(KEY, "GET", 999), Ok(()));
        assert_eq!(
            parsed(&q).verify(KEY, "GET", 1_000),
            Err(LinkError::Expired)
        );
        assert_eq!(parsed(&q).verify(KEY, "PUT", 999), Err(LinkError::Invalid));
        assert_eq!(
            parsed(&q).verify(b"another-secret-of-16+", "GET", 999),
            Err(LinkError::Invalid)
        );
        let other = q.replace("doc_1", "doc_2");
        assert_eq!(
            parsed(&other).verify(KEY, "GET", 999),
            Err(LinkError::Invalid)
        );
        let later = q.replace("expires=1000", "expires=9000");
        assert_eq!(
            parsed(&later).verify(KEY, "GET", 999),
            Err(LinkError::Invalid)
        );

        let up = query(KEY, "PUT", "upl_1", 1_000, Some(10));
        assert_eq!(parsed(&up).verify(KEY, "PUT", 1), Ok(()));
        let bigger = up.replace("max=10", "max=1000000");
        assert_eq!(
            parsed(&bigger).verify(KEY, "PUT", 1),
            Err(LinkError::Invalid)
        );
        // An expired URL with a bad signature is reported as invalid, not as expired.
        assert_eq!(
            parsed(&later).verify(KEY, "GET", 99_999),
            Err(LinkError::Invalid)
        );
    }

    #[test]
    fn malformed_queries() {
        for q in [
            "",
            "id=doc_1",
            "id=doc_1&expires=x&signature=s",
            "expires=1&signature=s",
        ] {
            assert_eq!(
                SignedQuery::parse(Some(q)),
                Err(LinkError::Malformed),
                "{q}"
            );
        }
        let bad_b64 = parsed("id=d&expires=5&signature=%%%");
        assert_eq!(bad_b64.verify(KEY, "GET", 1), Err(LinkError::Invalid));
    }
}
