//! The `ObjectStore` concern: package artifacts and other blobs. Filesystem at Tier 0; S3 when `S3_BUCKET`
//! is set.

mod fs;

use async_trait::async_trait;
use bytes::Bytes;

pub use fs::FsObjectStore;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// `fs` or `s3`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// A cheap liveness probe: a write for the filesystem, `HeadBucket` for S3.
    async fn check(&self) -> Result<(), StorageError>;
}

/// Object keys are relative, `/`-separated, and never climb out of the store.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = |why| Err(StorageError::InvalidKey(key.to_string(), why));
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1-1024 bytes");
    }
    if key.contains('\0') {
        return bad("contains NUL");
    }
    if key.starts_with('/') || key.contains('\\') {
        return bad("must be a relative path with / separators");
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("contains an empty, . or .. segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn keys() {
        assert!(validate_key("packages/_system/@appstrate/github/1.0.0.afps").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "a\\b",
            "a\0b",
            "./a",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
