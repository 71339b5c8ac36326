//! Filesystem object storage under `FS_STORAGE_PATH`. Writes go to a temporary file and are renamed into
//! place, so a reader never sees half an object; symlinks that would escape the root are refused.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{file_chunks, validate_key, ObjectReader, ObjectStore, StorageError};

pub struct FsObjectStore {
    root: PathBuf,
}

impl FsObjectStore {
    /// Creates the root directory if needed.
    pub fn new(root: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    /// The path of `key`, checked to stay under the root even through symlinks.
    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        let path = self.root.join(key);
        // Resolve the deepest existing ancestor and make sure it is still inside the root.
        let mut probe = path.as_path();
        loop {
            if probe.exists() {
                let real = probe.canonicalize()?;
                if !real.starts_with(&self.root) {
                    return Err(StorageError::InvalidKey(
                        key.to_string(),
                        "resolves outside the storage root",
                    ));
                }
                break;
            }
            match probe.parent() {
                Some(p) => probe = p,
                None => break,
            }
        }
        Ok(path)
    }
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    fn kind(&self) -> &'static str {
        "fs"
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, &data).await?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // A key prefix ("a/b" of "a/b/c") is not an object, as on S3.
            Err(_) if path.is_dir() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) if path.is_dir() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_file(&self, key: &str, source: &Path) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // A rename when the source is on the same file system, else a copy into place.
        if tokio::fs::rename(source, &path).await.is_ok() {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        if let Err(e) = tokio::fs::copy(source, &tmp).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        let _ = tokio::fs::remove_file(source).await;
        Ok(())
    }

    async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        let path = self.path_of(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata().await?;
        if meta.is_dir() {
            return Ok(None);
        }
        Ok(Some(ObjectReader {
            size: meta.len(),
            chunks: file_chunks(file),
        }))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let path = self.path_of(prefix.trim_end_matches('/'))?;
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        // A name of its own per check: concurrent checks must not remove each other's probe.
        let probe = self
            .root
            .join(format!(".health-probe-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(&dir.path().join("storage")).unwrap();
        store
            .put("a/b/c.bin", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(store.get("a/b/c.bin").await.unwrap().unwrap(), "hello");
        assert!(store.get("a/b/missing").await.unwrap().is_none());
        store.delete("a/b/c.bin").await.unwrap();
        assert!(store.get("a/b/c.bin").await.unwrap().is_none());
        assert!(store.put("../evil", Bytes::new()).await.is_err());
        // A symlink inside the root that points outside is refused.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("storage/link")).unwrap();
        assert!(matches!(
            store.put("link/x", Bytes::from_static(b"x")).await,
            Err(StorageError::InvalidKey(..))
        ));
        store.check().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_health_checks_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FsObjectStore::new(dir.path()).unwrap());
        let checks = (0..64).map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.check().await })
        });
        for r in futures::future::join_all(checks).await {
            r.unwrap().unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no probe left behind"
        );
    }
}
