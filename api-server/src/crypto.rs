//! Credential encryption (§17): AES-256-GCM envelopes `v1:<kid>:<base64(IV ‖ TAG ‖ CIPHERTEXT)>`, and the
//! token helpers (random secrets, SHA-256 hashes) used for API keys and admin tokens.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::KeyMaterial;

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("encrypted value has no v1: prefix")]
    BadPrefix,
    #[error("encrypted value names unknown key id {0:?}")]
    UnknownKeyId(String),
    #[error("encrypted value is malformed")]
    Malformed,
    #[error("decryption failed (wrong key or tampered data)")]
    Decrypt,
}

/// The active key encrypts; the active and retired keys decrypt, chosen by the envelope's key id.
#[derive(Clone)]
pub struct Keyring {
    active_id: String,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active_id", &self.active_id)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn new(material: &KeyMaterial) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(
            material.active_id.clone(),
            Aes256Gcm::new(material.active.expose().into()),
        );
        for (kid, key) in &material.retired {
            keys.insert(kid.clone(), Aes256Gcm::new(key.expose().into()));
        }
        Self {
            active_id: material.active_id.clone(),
            keys,
        }
    }

    pub fn active_id(&self) -> &str {
        &self.active_id
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let cipher = &self.keys[&self.active_id];
        let mut iv = [0u8; IV_LEN];
        rand::thread_rng().fill_bytes(&mut iv);
        // aes-gcm appends the tag to the ciphertext; the envelope wants IV ‖ TAG ‖ CIPHERTEXT.
        let sealed = cipher
            .encrypt(Nonce::from_slice(&iv), plaintext)
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut out = Vec::with_capacity(IV_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(tag);
        out.extend_from_slice(ct);
        format!(
            "v1:{}:{}",
            self.active_id,
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    pub fn decrypt(&self, envelope: &str) -> Result<Vec<u8>, CryptoError> {
        let rest = envelope.strip_prefix("v1:").ok_or(CryptoError::BadPrefix)?;
        let (kid, payload) = rest.split_once(':').ok_or(CryptoError::Malformed)?;
        let cipher = self
            .keys
            .get(kid)
            .ok_or_else(|| CryptoError::UnknownKeyId(kid.to_string()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|_| CryptoError::Malformed)?;
        if raw.len() < IV_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (iv, rest) = raw.split_at(IV_LEN);
        let (tag, ct) = rest.split_at(TAG_LEN);
        let mut sealed = Vec::with_capacity(ct.len() + TAG_LEN);
        sealed.extend_from_slice(ct);
        sealed.extend_from_slice(tag);
        cipher
            .decrypt(Nonce::from_slice(iv), sealed.as_slice())
            .map_err(|_| CryptoError::Decrypt)
    }

    pub fn encrypt_json(&self, value: &serde_json::Value) -> String {
        self.encrypt(value.to_string().as_bytes())
    }

    pub fn decrypt_json(&self, envelope: &str) -> Result<serde_json::Value, CryptoError> {
        let bytes = self.decrypt(envelope)?;
        serde_json::from_slice(&bytes).map_err(|_| CryptoError::Malformed)
    }
}

/// Lowercase hex of `n` random bytes.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Lowercase hex SHA-256, the only form in which API keys and admin tokens are stored.
pub fn sha256_hex(data: &str) -> String {
    hex::encode(Sha256::digest(data.as_bytes()))
}

/// A new secret with `prefix` and 24 random bytes as 48 lowercase hex characters (`ask_…`, `adm_…`).
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn material(active: (&str, u8), retired: &[(&str, u8)]) -> KeyMaterial {
        KeyMaterial {
            active_id: active.0.into(),
            active: Secret::new([active.1; 32]),
            retired: retired
                .iter()
                .map(|(k, b)| (k.to_string(), Secret::new([*b; 32])))
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_envelope_shape() {
        let ring = Keyring::new(&material(("k1", 1), &[]));
        let env = ring.encrypt(b"{\"token\":\"secret\"}");
        assert!(env.starts_with("v1:k1:"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(env.rsplit(':').next().unwrap())
            .unwrap();
        assert_eq!(raw.len(), IV_LEN + TAG_LEN + 18);
        assert_eq!(ring.decrypt(&env).unwrap(), b"{\"token\":\"secret\"}");
        // A fresh IV every time.
        assert_ne!(ring.encrypt(b"x"), ring.encrypt(b"x"));
    }

    #[test]
    fn retired_keys_decrypt_and_active_key_encrypts() {
        let old = Keyring::new(&material(("old", 9), &[]));
        let env = old.encrypt(b"hello");
        let rotated = Keyring::new(&material(("new", 1), &[("old", 9)]));
        assert_eq!(rotated.decrypt(&env).unwrap(), b"hello");
        assert!(rotated.encrypt(b"hello").starts_with("v1:new:"));
    }

    #[test]
    fn failures() {
        let ring = Keyring::new(&material(("k1", 1), &[]));
        let env = ring.encrypt(b"hello");
        assert_eq!(
            ring.decrypt(&env.replacen("v1:k1:", "v1:k2:", 1)),
            Err(CryptoError::UnknownKeyId("k2".into()))
        );
        assert_eq!(ring.decrypt(&env[3..]), Err(CryptoError::BadPrefix));
        // Flip one bit of the tag.
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(env.rsplit(':').next().unwrap())
            .unwrap();
        raw[IV_LEN] ^= 1;
        let tampered = format!(
            "v1:k1:{}",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        assert_eq!(ring.decrypt(&tampered), Err(CryptoError::Decrypt));
        // Fewer than 28 decoded bytes.
        let short = format!(
            "v1:k1:{}",
            base64::engine::general_purpose::STANDARD.encode([0u8; 27])
        );
        assert_eq!(ring.decrypt(&short), Err(CryptoError::Malformed));
        // The right key id but another key.
        let other = Keyring::new(&material(("k1", 2), &[]));
        assert_eq!(other.decrypt(&env), Err(CryptoError::Decrypt));
    }

    #[test]
    fn tokens_have_the_documented_shape() {
        let t = new_token("ask_");
        assert_eq!(t.len(), 52);
        assert!(t[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(sha256_hex("abc").len(), 64);
    }
}
