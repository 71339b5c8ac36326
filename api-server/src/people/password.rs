//! Password hashing: argon2id (RFC 9106) through the `argon2` crate, in PHC string form. The default
//! parameters are OWASP's first recommendation (19 MiB of memory, 2 passes, 1 lane); they are
//! configurable (`AUTH_ARGON2_*`) and stored in each hash, so changing them keeps old hashes valid.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Argon2Params {
    pub fn validate(&self) -> Result<(), String> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn hasher(&self) -> Argon2<'static> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .unwrap_or_default();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// `m=19456,t=2,p=1`, as reported by the bench and the docs.
    pub fn describe(&self) -> String {
        format!(
            "argon2id m={},t={},p={}",
            self.memory_kib, self.iterations, self.parallelism
        )
    }
}

/// The PHC string of `password` under `params` (CPU-bound: call from a blocking thread).
pub fn hash_password(params: &Argon2Params, password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    params
        .hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `phc`. With `phc` absent (unknown user, provider-only account) a hash of
/// the same cost is still verified, so that the answer takes as long as for a real account.
pub fn verify_password(params: &Argon2Params, phc: Option<&str>, password: &str) -> bool {
    match phc.and_then(|p| PasswordHash::new(p).ok()) {
        Some(parsed) => params
            .hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        None => {
            let dummy = dummy_hash(params);
            if let Ok(parsed) = PasswordHash::new(&dummy) {
                let _ = params
                    .hasher()
                    .verify_password(password.as_bytes(), &parsed);
            }
            false
        }
    }
}

/// A hash under the current parameters, computed once per parameter set.
fn dummy_hash(params: &Argon2Params) -> String {
    use std::sync::Mutex;
    static CACHE: Mutex<Option<(Argon2Params, String)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, h)) = cache.as_ref() {
        if p == params {
            return h.clone();
        }
    }
    let h = hash_password(params, "appstrate-no-such-user").unwrap_or_default();
    *cache = Some((*params, h.clone()));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_verifies() {
        let p = Argon2Params {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let h = hash_password(&p, "correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(verify_password(&p, Some(&h), "correct horse"));
        assert!(!verify_password(&p, Some(&h), "wrong"));
        assert!(!verify_password(&p, None, "correct horse"));
        // A hash made under other parameters still verifies (they are in the PHC string).
        let stronger = Argon2Params::default();
        assert!(verify_password(&stronger, Some(&h), "correct horse"));
    }
}
