//! Documents out of runs and uploads into runs (docs/documents.md). Bytes live in the active object store
//! (filesystem or S3); they travel through short-lived URLs signed with `UPLOAD_SIGNING_SECRET`
//! ([`signing`]) and are streamed, never held whole in memory. The domain speaks no HTTP.

pub mod config;
pub mod signing;
pub mod uploads;

use std::path::PathBuf;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::infra::database::documents::DocumentRow;
use crate::infra::database::runs::RunRow;
use crate::infra::database::{now, DbError, Timestamp};
use crate::infra::storage::{ObjectReader, StorageError};
use crate::state::AppState;
use signing::{LinkError, SignedQuery};

use crate::domain::{DomainError, ErrorKind, FieldError};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{field}: {message}")]
    Invalid {
        field: String,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// A signed URL that is refused (403).
    #[error("{}", .0.message())]
    Link(LinkError),
    /// A used, replayed or otherwise unusable URL (403).
    #[error("{0}")]
    Refused(String),
    /// More bytes than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// A limit on the number of things (409).
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Storage(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<StorageError> for FilesError {
    fn from(e: StorageError) -> Self {
        FilesError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for FilesError {
    fn from(e: std::io::Error) -> Self {
        FilesError::Storage(format!("staging file: {e}"))
    }
}

pub type FilesResult<T> = Result<T, FilesError>;

pub(crate) fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> FilesError {
    FilesError::Invalid {
        field: field.to_string(),
        code,
        message: message.into(),
    }
}

/// The object prefix of everything a run stored; deleted with the run.
pub fn run_prefix(run_id: &str) -> String {
    format!("runs/{run_id}/")
}

fn document_key(run_id: &str, doc_id: &str) -> String {
    format!("runs/{run_id}/documents/{doc_id}")
}

/// A file name as shown and as placed in a workspace: 1–255 bytes, no path separator, no NUL, not `.`
/// or `..`, no control characters.
pub fn valid_file_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// A media type such as `text/markdown` or `application/pdf` (parameters allowed).
pub fn valid_media_type(mt: &str) -> bool {
    let essence = mt.split(';').next().unwrap_or("").trim();
    let mut parts = essence.splitn(2, '/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        })
    };
    mt.len() <= 255 && ok(parts.next()) && ok(parts.next())
}

fn secret(state: &AppState) -> Vec<u8> {
    state
        .config
        .upload_signing_secret
        .expose()
        .as_bytes()
        .to_vec()
}

/// The signed download URL of a document and its expiry (`APP_URL` based, usable without an API key).
pub fn download_url(state: &AppState, doc: &DocumentRow) -> (String, Timestamp) {
    let at = now();
    let expires = at.timestamp() + state.config.files.signed_url_ttl_seconds as i64;
    let q = signing::query(&secret(state), "GET", &doc.id, expires, None);
    (
        format!("{}/api/documents/_content?{q}", state.config.app_url),
        Timestamp::from_timestamp(expires, 0).unwrap_or(at),
    )
}

/// The document DTO; `downloadUrl` is freshly signed.
pub fn document_dto(state: &AppState, d: &DocumentRow) -> Value {
    let (url, expires) = download_url(state, d);
    json!({
        "id": d.id,
        "object": "document",
        "runId": d.run_id,
        "applicationId": d.application_id,
        "endUserId": d.end_user_id,
        "name": d.name,
        "mediaType": d.media_type,
        "size": d.size,
        "createdAt": d.created_at,
        "downloadUrl": url,
        "downloadUrlExpiresAt": expires,
    })
}

/// The short form listed in a run's DTO.
pub fn document_summary(d: &DocumentRow) -> Value {
    json!({"id": d.id, "name": d.name, "mediaType": d.media_type, "size": d.size})
}

/// A document announced by its run (`publish_document`): the pending row and the relative URL (path and
/// signed query) to `PUT` its bytes to, on the same origin the runner uses for its sink.
pub async fn begin_publish(
    state: &AppState,
    run: &RunRow,
    name: &str,
    media_type: &str,
    size: u64,
) -> FilesResult<(DocumentRow, String)> {
    let cfg = &state.config.files;
    if !valid_file_name(name) {
        return Err(invalid(
            "name",
            "invalid_format",
            "must be a file name of 1-255 bytes without / \\ or control characters",
        ));
    }
    if !valid_media_type(media_type) {
        return Err(invalid(
            "mediaType",
            "invalid_format",
            "must be a media type such as text/markdown",
        ));
    }
    if size > cfg.document_max_bytes {
        return Err(FilesError::TooLarge(format!(
            "The document is {size} bytes; at most {} are accepted (DOCUMENT_MAX_BYTES)",
            cfg.document_max_bytes
        )));
    }
    let id = format!("doc_{}", uuid::Uuid::new_v4());
    let row = DocumentRow {
        storage_key: document_key(&run.id, &id),
        id,
        run_id: run.id.clone(),
        org_id: run.org_id.clone(),
        application_id: run.application_id.clone(),
        end_user_id: run.end_user_id.clone(),
        name: name.to_string(),
        media_type: media_type.to_string(),
        size: size as i64,
        status: "pending".into(),
        created_at: now(),
        completed_at: None,
    };
    let Some(row) = state
        .infra
        .db
        .insert_document_capped(&row, cfg.documents_per_run)
        .await?
    else {
        return Err(FilesError::Limit(format!(
            "This run already published {} documents (DOCUMENTS_MAX_PER_RUN)",
            cfg.documents_per_run
        )));
    };
    let expires = now().timestamp() + cfg.signed_url_ttl_seconds as i64;
    let q = signing::query(&secret(state), "PUT", &row.id, expires, Some(size));
    Ok((row, format!("/api/documents/_content?{q}")))
}

/// Where request bodies are staged before they go to the object store (next to the data).
fn staging_dir(state: &AppState) -> PathBuf {
    state.config.data_dir.join("tmp").join("uploads")
}

/// Streams `body` into a staging file, refusing it (and stopping to read) as soon as it passes `max`
/// bytes. Returns the file and its size; the caller moves it into the object store.
pub async fn stage<S, E>(state: &AppState, mut body: S, max: u64) -> FilesResult<(PathBuf, u64)>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let dir = staging_dir(state);
    tokio::fs::create_dir_all(&dir).await?;
    let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
    let mut file = tokio::fs::File::create(&path).await?;
    let mut size = 0u64;
    let outcome: FilesResult<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| invalid("body", "invalid_value", format!("reading the body: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(FilesError::TooLarge(format!(
                    "The body passed {max} bytes, the size this URL allows; nothing was stored"
                )));
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    Ok((path, size))
}

/// `PUT /api/documents/_content`: the content of a document its run announced, within the signed size.
pub async fn receive_document<S, E>(
    state: &AppState,
    query: Option<&str>,
    body: S,
) -> FilesResult<DocumentRow>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let q = SignedQuery::parse(query).map_err(FilesError::Link)?;
    q.verify(&secret(state), "PUT", now().timestamp())
        .map_err(FilesError::Link)?;
    let db = &state.infra.db;
    let doc = db
        .get_document(&q.id)
        .await?
        .ok_or_else(|| FilesError::NotFound(format!("Document {} not found", q.id)))?;
    if doc.status != "pending" {
        return Err(FilesError::Refused(
            "This URL was already used: the document's content is stored".into(),
        ));
    }
    let max = q.max.unwrap_or(state.config.files.document_max_bytes);
    let (path, size) = stage(state, body, max).await?;
    if let Err(e) = state.infra.storage.put_file(&doc.storage_key, &path).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    if !db.complete_document(&doc.id, size as i64, now()).await? {
        return Err(FilesError::Refused(
            "This URL was already used: the document's content is stored".into(),
        ));
    }
    Ok(db.get_document(&doc.id).await?.unwrap_or(doc))
}

/// `GET /api/documents/_content`: a document's bytes for a valid signed URL.
pub async fn open_signed(
    state: &AppState,
    query: Option<&str>,
) -> FilesResult<(DocumentRow, ObjectReader)> {
    let q = SignedQuery::parse(query).map_err(FilesError::Link)?;
    q.verify(&secret(state), "GET", now().timestamp())
        .map_err(FilesError::Link)?;
    let doc = state
        .infra
        .db
        .get_document(&q.id)
        .await?
        .filter(|d| d.status == "ready")
        .ok_or_else(|| FilesError::NotFound(format!("Document {} not found", q.id)))?;
    let reader = open(state, &doc).await?;
    Ok((doc, reader))
}

/// A ready document's bytes.
pub async fn open(state: &AppState, doc: &DocumentRow) -> FilesResult<ObjectReader> {
    state
        .infra
        .storage
        .get_stream(&doc.storage_key)
        .await?
        .ok_or_else(|| FilesError::NotFound(format!("The content of {} is gone", doc.id)))
}

/// Deletes a document's row and bytes.
pub async fn delete_document(state: &AppState, doc: &DocumentRow) -> FilesResult<()> {
    state.infra.storage.delete(&doc.storage_key).await?;
    state.infra.db.delete_document(&doc.id).await?;
    Ok(())
}

/// The runs of an application that published documents (read before the application is deleted, since
/// its rows go with it).
pub async fn runs_with_documents(
    state: &AppState,
    application_id: &str,
) -> FilesResult<Vec<String>> {
    use crate::infra::database::documents::DocumentFilter;
    use crate::infra::database::Page;
    let mut runs = std::collections::BTreeSet::new();
    let mut page = Page {
        limit: 100,
        starting_after: None,
    };
    loop {
        let p = state
            .infra
            .db
            .list_documents(application_id, &DocumentFilter::default(), &page)
            .await?;
        runs.extend(p.items.iter().map(|d| d.run_id.clone()));
        match (p.has_more, p.items.last()) {
            (true, Some(last)) => page.starting_after = Some(last.id.clone()),
            _ => return Ok(runs.into_iter().collect()),
        }
    }
}

/// After an application is deleted: the bytes of its runs' documents and of its uploads.
pub async fn forget_application(state: &AppState, application_id: &str, runs: &[String]) {
    let storage = &state.infra.storage;
    let prefixes = runs
        .iter()
        .map(|r| run_prefix(r))
        .chain([format!("uploads/{application_id}/")]);
    for prefix in prefixes {
        if let Err(e) = storage.delete_prefix(&prefix).await {
            tracing::warn!(%prefix, error = %e, "could not delete a deleted application's objects");
        }
    }
}

/// What one retention pass of documents and uploads deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilesSweep {
    pub documents: u64,
    pub uploads: u64,
}

/// Deletes documents older than `DOCUMENT_RETENTION_DAYS` and uploads past their expiry (row and bytes),
/// in batches of `batch`.
pub async fn sweep(state: &AppState, batch: i64) -> FilesResult<FilesSweep> {
    let mut out = FilesSweep::default();
    let db = &state.infra.db;
    let days = state.config.files.document_retention_days;
    if days > 0 {
        let cutoff = now() - chrono::Duration::days(days as i64);
        loop {
            let docs = db.documents_before(cutoff, batch).await?;
            for d in &docs {
                delete_document(state, d).await?;
                out.documents += 1;
            }
            if (docs.len() as i64) < batch {
                break;
            }
        }
    }
    remove_stale_staging(&staging_dir(state)).await;
    loop {
        let expired = db.expired_uploads(now(), batch).await?;
        for u in &expired {
            state.infra.storage.delete(&u.storage_key).await?;
            db.delete_upload(&u.id).await?;
            out.uploads += 1;
        }
        if (expired.len() as i64) < batch {
            break;
        }
    }
    Ok(out)
}

/// Staging files older than a day were left by a server that stopped mid-transfer.
async fn remove_stale_staging(dir: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let day = std::time::Duration::from_secs(86_400);
    while let Ok(Some(e)) = entries.next_entry().await {
        let stale = e
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if stale {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

/// How the faces see a failure of the file concern.
impl From<FilesError> for DomainError {
    fn from(e: FilesError) -> Self {
        let detail = e.to_string();
        match e {
            FilesError::Invalid {
                field,
                code,
                message,
            } => DomainError::validation(vec![FieldError::new(field, code, message)]),
            FilesError::NotFound(_) => DomainError::not_found(detail),
            FilesError::Link(l) => DomainError::forbidden(detail).with_code(match l {
                LinkError::Expired => "signature_expired",
                _ => "invalid_signature",
            }),
            FilesError::Refused(_) => DomainError::forbidden(detail).with_code("url_already_used"),
            FilesError::TooLarge(_) => {
                DomainError::new(ErrorKind::TooLarge, "payload_too_large", detail)
            }
            FilesError::Limit(_) => DomainError::conflict("limit_reached", detail),
            FilesError::Storage(m) => DomainError::internal(m),
            FilesError::Db(db) => db.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_staging_files_are_removed_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let fresh = dir.path().join("fresh");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&fresh, b"y").unwrap();
        let two_days = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_days)
            .unwrap();
        remove_stale_staging(dir.path()).await;
        assert!(!old.exists() && fresh.exists());
        remove_stale_staging(&dir.path().join("missing")).await;
    }

    #[test]
    fn names_and_media_types() {
        assert!(valid_file_name("report (final).md"));
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", &"x".repeat(256)] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
        assert!(valid_media_type("text/markdown"));
        assert!(valid_media_type("text/plain; charset=utf-8"));
        assert!(valid_media_type(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        ));
        for bad in ["", "text", "text/", "/plain", "te xt/plain"] {
            assert!(!valid_media_type(bad), "{bad:?}");
        }
    }
}
