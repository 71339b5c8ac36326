//! Uploads into runs: `POST /api/uploads` announces a file and gets a signed `PUT` URL; the bytes are
//! streamed to the object store; the upload id then fills a file field of a run's input (a property of
//! the input schema with `"format": "upload"`), and the file appears in the run's workspace under its name.

use bytes::Bytes;
use futures::Stream;
use serde_json::{json, Value};

use super::signing::SignedQuery;
use super::{invalid, secret, stage, valid_file_name, valid_media_type, FilesError, FilesResult};
use crate::infra::database::documents::UploadRow;
use crate::infra::database::runs::RunRow;
use crate::infra::database::{now, Timestamp};
use crate::infra::storage::ObjectReader;
use crate::state::AppState;

/// Who uploads: the caller's organization, application and impersonated end-user.
pub struct Uploader {
    pub org_id: String,
    pub application_id: String,
    pub end_user_id: Option<String>,
}

/// A created upload and where to send its bytes.
pub struct NewUpload {
    pub row: UploadRow,
    pub url: String,
}

pub fn upload_dto(u: &UploadRow) -> Value {
    json!({
        "id": u.id,
        "object": "upload",
        "name": u.name,
        "mediaType": u.media_type,
        "size": u.size,
        "status": u.status,
        "runId": u.run_id,
        "expiresAt": u.expires_at,
        "createdAt": u.created_at,
    })
}

/// `POST /api/uploads`.
pub async fn create_upload(
    state: &AppState,
    who: &Uploader,
    name: &str,
    media_type: &str,
    size: u64,
) -> FilesResult<NewUpload> {
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
            "must be a media type such as application/pdf",
        ));
    }
    if size == 0 || size > cfg.upload_max_bytes {
        return Err(invalid(
            "size",
            "out_of_range",
            format!(
                "must be from 1 to {} bytes (UPLOAD_MAX_BYTES)",
                cfg.upload_max_bytes
            ),
        ));
    }
    let at = now();
    let expires = at.timestamp() + cfg.upload_expiry_seconds as i64;
    let id = format!("upl_{}", uuid::Uuid::new_v4());
    let row = UploadRow {
        storage_key: format!("uploads/{}/{id}", who.application_id),
        id,
        org_id: who.org_id.clone(),
        application_id: who.application_id.clone(),
        end_user_id: who.end_user_id.clone(),
        name: name.to_string(),
        media_type: media_type.to_string(),
        size: size as i64,
        status: "pending".into(),
        run_id: None,
        expires_at: Timestamp::from_timestamp(expires, 0).unwrap_or(at),
        created_at: at,
        completed_at: None,
    };
    let row = state.infra.db.insert_upload(&row).await?;
    let q = super::signing::query(&secret(state), "PUT", &row.id, expires, Some(size));
    Ok(NewUpload {
        url: format!("{}/api/uploads/_content?{q}", state.config.app_url),
        row,
    })
}

/// `PUT /api/uploads/_content`: the bytes of an upload, at most its declared size (refused while
/// streaming past it). One PUT per upload: a replayed URL is refused once the bytes are stored.
pub async fn receive_upload<S, E>(
    state: &AppState,
    query: Option<&str>,
    content_length: Option<u64>,
    body: S,
) -> FilesResult<UploadRow>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let q = SignedQuery::parse(query).map_err(FilesError::Link)?;
    q.verify(&secret(state), "PUT", now().timestamp())
        .map_err(FilesError::Link)?;
    let max = q.max.unwrap_or(state.config.files.upload_max_bytes);
    if let Some(len) = content_length.filter(|l| *l > max) {
        return Err(FilesError::TooLarge(format!(
            "Content-Length {len} exceeds the {max} bytes declared for this upload"
        )));
    }
    let db = &state.infra.db;
    let upload = db
        .get_upload(&q.id)
        .await?
        .ok_or_else(|| FilesError::NotFound(format!("Upload {} not found", q.id)))?;
    if !db.claim_upload(&upload.id).await? {
        return Err(FilesError::Refused(
            "This upload URL was already used (its bytes are stored or being received)".into(),
        ));
    }
    let stored = async {
        let (path, size) = stage(state, body, max).await?;
        if let Err(e) = state
            .infra
            .storage
            .put_file(&upload.storage_key, &path)
            .await
        {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(FilesError::from(e));
        }
        Ok(size)
    }
    .await;
    match stored {
        Ok(size) => {
            db.finish_upload(&upload.id, Some((size as i64, now())))
                .await?;
            Ok(db.get_upload(&upload.id).await?.unwrap_or(upload))
        }
        Err(e) => {
            // The URL stays usable for another attempt until it expires.
            db.finish_upload(&upload.id, None).await?;
            Err(e)
        }
    }
}

/// The input properties that hold an upload id: `{"type": "string", "format": "upload"}`.
pub fn file_fields(manifest: &Value) -> Vec<String> {
    manifest
        .pointer("/input/schema/properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter(|(_, p)| p.get("format").and_then(Value::as_str) == Some("upload"))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks the upload ids in a run's file fields: each must be an upload of this application (and of the
/// same end-user), complete, unexpired and unused. Returns their ids.
pub async fn check_inputs(
    state: &AppState,
    manifest: &Value,
    input: &Value,
    application_id: &str,
    end_user_id: Option<&str>,
) -> FilesResult<Vec<String>> {
    let mut ids = Vec::new();
    for field in file_fields(manifest) {
        let Some(value) = input.get(&field).filter(|v| !v.is_null()) else {
            continue;
        };
        let path = format!("input.{field}");
        let Some(id) = value.as_str() else {
            return Err(invalid(
                &path,
                "invalid_type",
                "must be an upload id (upl_…)",
            ));
        };
        let upload = state
            .infra
            .db
            .get_upload(id)
            .await?
            .filter(|u| u.application_id == application_id)
            .filter(|u| u.end_user_id.as_deref() == end_user_id);
        let Some(u) = upload else {
            return Err(invalid(
                &path,
                "invalid_value",
                format!("upload {id} not found; create one with POST /api/uploads"),
            ));
        };
        let problem = if u.status != "ready" {
            Some("has not received its bytes yet: PUT them to its uploadUrl first".to_string())
        } else if u.expires_at <= now() {
            Some("has expired; upload the file again".to_string())
        } else {
            u.run_id
                .as_ref()
                .map(|run| format!("was already used by {run}; upload the file again"))
        };
        if let Some(p) = problem {
            return Err(invalid(&path, "invalid_value", format!("upload {id} {p}")));
        }
        ids.push(u.id);
    }
    Ok(ids)
}

/// Attaches checked uploads to their run. False when one was taken by another run meanwhile.
pub async fn attach(state: &AppState, ids: &[String], run_id: &str) -> FilesResult<bool> {
    for id in ids {
        if !state.infra.db.consume_upload(id, run_id).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The files of a run's input, for its runner (`GET /api/runs/{id}/context`); `path` is relative to
/// the run's base URL (`/api/runs/{id}`).
pub async fn run_files(state: &AppState, run: &RunRow) -> FilesResult<Vec<Value>> {
    Ok(state
        .infra
        .db
        .run_uploads(&run.id)
        .await?
        .iter()
        .map(|u| {
            json!({"id": u.id, "name": u.name, "mediaType": u.media_type, "size": u.size,
                "path": format!("/files/{}", u.id)})
        })
        .collect())
}

/// An input file's bytes, for its run.
pub async fn open_run_file(
    state: &AppState,
    run: &RunRow,
    upload_id: &str,
) -> FilesResult<(UploadRow, ObjectReader)> {
    let upload = state
        .infra
        .db
        .get_upload(upload_id)
        .await?
        .filter(|u| u.run_id.as_deref() == Some(run.id.as_str()))
        .ok_or_else(|| {
            FilesError::NotFound(format!("Upload {upload_id} is not an input of this run"))
        })?;
    let reader = state
        .infra
        .storage
        .get_stream(&upload.storage_key)
        .await?
        .ok_or_else(|| FilesError::NotFound(format!("The content of {upload_id} is gone")))?;
    Ok((upload, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fields_are_marked_by_format_upload() {
        let m = json!({"input": {"schema": {"type": "object", "properties": {
            "doc": {"type": "string", "format": "upload"},
            "topic": {"type": "string"},
            "when": {"type": "string", "format": "date"}}}}});
        assert_eq!(file_fields(&m), vec!["doc".to_string()]);
        assert!(file_fields(&json!({})).is_empty());
    }
}
