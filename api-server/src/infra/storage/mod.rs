//! The `ObjectStore` concern: package artifacts and other blobs. Filesystem at Tier 0; S3 when `S3_BUCKET`
//! is set.

mod fs;
mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use fs::FsObjectStore;
pub use s3::S3ObjectStore;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// An object's bytes as they are read, chunk by chunk (never the whole object in memory).
pub type ByteChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A streamed object: its size and its bytes.
pub struct ObjectReader {
    pub size: u64,
    pub chunks: ByteChunks,
}

/// Read chunk size of streamed objects.
const CHUNK: usize = 64 * 1024;

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// `fs` or `s3`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Stores the content of a local file, streamed (large objects never sit in memory). The file is
    /// consumed: moved into place, or removed once stored.
    async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<(), StorageError>;
    /// The object's bytes as a stream, or `None` when it does not exist.
    async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError>;
    /// Deletes every object whose key starts with `prefix` (which ends with `/`).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError>;
    /// A cheap liveness probe: a write for the filesystem, `HeadBucket` for S3.
    async fn check(&self) -> Result<(), StorageError>;
}

/// S3 storage promoted from a filesystem deployment (Tier 2 → 3 with the same `FS_STORAGE_PATH`):
/// objects written before `S3_BUCKET` was set stay readable. A key missing from S3 is read from the
/// filesystem and, when found there, copied into S3 so that replicas without that directory see it too.
/// Writes go to S3 only; deletes remove both copies so that a deleted object never reappears.
pub struct PromotedStore {
    primary: Arc<dyn ObjectStore>,
    legacy: FsObjectStore,
}

impl PromotedStore {
    pub fn new(primary: Arc<dyn ObjectStore>, legacy: FsObjectStore) -> Self {
        Self { primary, legacy }
    }
}

#[async_trait]
impl ObjectStore for PromotedStore {
    fn kind(&self) -> &'static str {
        self.primary.kind()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.primary.put(key, data).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        if let Some(data) = self.primary.get(key).await? {
            return Ok(Some(data));
        }
        let Some(data) = self.legacy.get(key).await? else {
            return Ok(None);
        };
        match self.primary.put(key, data.clone()).await {
            Ok(()) => tracing::debug!(key, "copied a filesystem object into object storage"),
            Err(e) => {
                tracing::warn!(key, error = %e, "could not copy a filesystem object into object storage")
            }
        }
        Ok(Some(data))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.primary.delete(key).await?;
        self.legacy.delete(key).await
    }

    async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<(), StorageError> {
        self.primary.put_file(key, path).await
    }

    async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        if let Some(r) = self.primary.get_stream(key).await? {
            return Ok(Some(r));
        }
        self.legacy.get_stream(key).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        self.primary.delete_prefix(prefix).await?;
        self.legacy.delete_prefix(prefix).await
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.primary.check().await
    }
}

/// The chunks of a local file, read as they are consumed.
pub fn file_chunks(file: tokio::fs::File) -> ByteChunks {
    Box::pin(futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), file)))
    }))
}

/// Reads a whole stream (small objects only, e.g. in tests).
pub async fn collect(mut chunks: ByteChunks) -> Result<Vec<u8>, std::io::Error> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(c) = chunks.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
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
    use super::*;

    #[tokio::test]
    async fn a_promoted_store_reads_old_objects_from_the_filesystem_and_forgets_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let old = FsObjectStore::new(&dir.path().join("old")).unwrap();
        old.put("packages/a/1.afps", Bytes::from_static(b"before"))
            .await
            .unwrap();
        // Stands in for S3: another filesystem store.
        let primary: Arc<dyn ObjectStore> =
            Arc::new(FsObjectStore::new(&dir.path().join("new")).unwrap());
        let store = PromotedStore::new(
            primary.clone(),
            FsObjectStore::new(&dir.path().join("old")).unwrap(),
        );
        assert_eq!(
            store.get("packages/a/1.afps").await.unwrap().unwrap(),
            "before"
        );
        // Copied on first read.
        assert_eq!(
            primary.get("packages/a/1.afps").await.unwrap().unwrap(),
            "before"
        );
        store
            .put("packages/b/1.afps", Bytes::from_static(b"after"))
            .await
            .unwrap();
        assert!(old.get("packages/b/1.afps").await.unwrap().is_none());
        store.delete("packages/a/1.afps").await.unwrap();
        assert!(store.get("packages/a/1.afps").await.unwrap().is_none());
        assert!(old.get("packages/a/1.afps").await.unwrap().is_none());
        assert!(store.get("missing").await.unwrap().is_none());
    }

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
