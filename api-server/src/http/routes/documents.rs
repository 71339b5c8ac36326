//! Documents and uploads (docs/documents.md). Authenticated routes list, read and delete documents and
//! create uploads; the `_content` routes are authenticated by their signed URL alone (no API key), so a
//! browser or a webhook consumer can fetch a document, and a client can send an upload's bytes.

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::documents::uploads::{self, Uploader};
use crate::documents::{self, FilesError};
use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::infra::database::documents::{DocumentFilter, DocumentRow};
use crate::state::AppState;

/// Routes behind API-key, admin-token or session authentication.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/documents", get(list_documents))
        .route(
            "/api/documents/{id}",
            get(get_document).delete(delete_document),
        )
        .route("/api/documents/{id}/content", get(document_content))
        .route("/api/runs/{id}/documents", get(list_run_documents))
        .route("/api/uploads", axum::routing::post(create_upload))
}

/// Routes authenticated by a signed URL.
pub fn signed_router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/documents/_content",
            get(download_signed).put(publish_content),
        )
        .route("/api/uploads/_content", axum::routing::put(upload_content))
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        crate::domain::DomainError::from(e).into()
    }
}

/// A document of the caller's application (and of its impersonated end-user), else 404.
async fn visible_document(
    state: &AppState,
    auth: &Auth,
    id: &str,
) -> Result<DocumentRow, ApiError> {
    let app = auth.app()?;
    state
        .infra
        .db
        .get_document(id)
        .await?
        .filter(|d| d.application_id == app.id && d.status == "ready")
        .filter(|d| match &auth.end_user {
            Some(eu) => d.end_user_id.as_deref() == Some(eu.id.as_str()),
            None => true,
        })
        .ok_or_else(|| ApiError::not_found(format!("Document {id} not found")))
}

#[utoipa::path(get, path = "/api/documents", tag = "documents",
    operation_id = "listDocuments", summary = "List the documents published by runs",
    params(("runId" = Option<String>, Query), ("endUserId" = Option<String>, Query), ("mediaType" = Option<String>, Query), ("name" = Option<String>, Query),
        ("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "List of documents, newest first, each with a fresh signed `downloadUrl`", body = Object)))]
pub async fn list_documents(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let app = auth.app()?;
    let query = ListQuery::parse(q.as_deref())?;
    let p = |k: &str| query.params.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = DocumentFilter {
        run_id: p("runId"),
        end_user_id: auth
            .end_user
            .as_ref()
            .map(|e| e.id.clone())
            .or(p("endUserId")),
        media_type: p("mediaType"),
        name: p("name"),
    };
    let page = state
        .infra
        .db
        .list_documents(&app.id, &filter, &query.page)
        .await?;
    Ok(paged_response(
        &state.config.app_url,
        "/api/documents",
        &query,
        page,
        |d| &d.id,
        |d| documents::document_dto(&state, &d),
    ))
}

#[utoipa::path(get, path = "/api/runs/{id}/documents", tag = "documents",
    operation_id = "listRunDocuments", summary = "List the documents a run published",
    params(("id" = String, Path)),
    responses((status = 200, description = "`{object:\"list\", data:[document], hasMore:false}`", body = Object), (status = 404, description = "run not found")))]
pub async fn list_run_documents(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let run = super::runs::visible_run(&state, &auth, &id).await?;
    let docs = state.infra.db.run_documents(&run.id).await?;
    let data: Vec<Value> = docs
        .iter()
        .map(|d| documents::document_dto(&state, d))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "hasMore": false})).into_response())
}

#[utoipa::path(get, path = "/api/documents/{id}", tag = "documents",
    operation_id = "getDocument", summary = "Get a document with a fresh signed download URL",
    params(("id" = String, Path)),
    responses((status = 200, description = "The document", body = Object), (status = 404, description = "not found")))]
pub async fn get_document(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let doc = visible_document(&state, &auth, &id).await?;
    Ok(Json(documents::document_dto(&state, &doc)).into_response())
}

#[utoipa::path(delete, path = "/api/documents/{id}", tag = "documents",
    operation_id = "deleteDocument", summary = "Delete a document and its content",
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "not found")))]
pub async fn delete_document(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:cancel")?;
    let doc = visible_document(&state, &auth, &id).await?;
    documents::delete_document(&state, &doc).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/documents/{id}/content", tag = "documents",
    operation_id = "getDocumentContent", summary = "Download a document with an API key",
    params(("id" = String, Path)),
    responses((status = 200, description = "The document's bytes with its media type", content_type = "application/octet-stream", body = Vec<u8>), (status = 404, description = "not found")))]
pub async fn document_content(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let doc = visible_document(&state, &auth, &id).await?;
    let reader = documents::open(&state, &doc).await?;
    Ok(content_response(&doc, reader))
}

#[utoipa::path(get, path = "/api/documents/_content", tag = "documents",
    operation_id = "downloadSignedDocument", summary = "Download a document through its signed URL (no API key)",
    security(()),
    params(("id" = String, Query), ("expires" = i64, Query, description = "Unix seconds"), ("signature" = String, Query)),
    responses((status = 200, description = "The document's bytes with its media type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "invalid_signature or signature_expired"), (status = 404, description = "not found")))]
pub async fn download_signed(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (doc, reader) = documents::open_signed(&state, q.as_deref()).await?;
    Ok(content_response(&doc, reader))
}

/// A document's bytes, streamed, as an attachment that a browser never renders in this origin.
fn content_response(doc: &DocumentRow, reader: crate::infra::storage::ObjectReader) -> Response {
    // Quotes and backslashes cannot end the quoted name early.
    let safe: String = doc
        .name
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || !c.is_ascii() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let encoded: String = url::form_urlencoded::byte_serialize(doc.name.as_bytes()).collect();
    let mut res = Response::new(Body::from_stream(reader.chunks));
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k, v: String| {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    };
    set(h, CONTENT_TYPE, doc.media_type.clone());
    set(h, CONTENT_LENGTH, reader.size.to_string());
    set(
        h,
        CONTENT_DISPOSITION,
        format!("attachment; filename=\"{safe}\"; filename*=UTF-8''{encoded}"),
    );
    set(h, CACHE_CONTROL, "private, no-store".into());
    // The media type comes from the agent: never let a browser run it in the platform's origin.
    set(
        h,
        "content-security-policy".parse().expect("header"),
        "sandbox; default-src 'none'".into(),
    );
    set(
        h,
        "x-content-type-options".parse().expect("header"),
        "nosniff".into(),
    );
    res
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[utoipa::path(put, path = "/api/documents/_content", tag = "runner",
    operation_id = "putDocumentContent", summary = "Send the content of a document a run announced (runner only, signed URL)",
    security(()),
    params(("id" = String, Query), ("expires" = i64, Query), ("max" = u64, Query), ("signature" = String, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Stored", body = Object), (status = 403, description = "invalid_signature, signature_expired or url_already_used"), (status = 413, description = "payload_too_large")))]
pub async fn publish_content(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let body = req.into_body().into_data_stream();
    let doc = documents::receive_document(&state, q.as_deref(), body).await?;
    Ok(Json(documents::document_summary(&doc)).into_response())
}

#[utoipa::path(post, path = "/api/uploads", tag = "uploads",
    operation_id = "createUpload", summary = "Announce a file and get a signed URL to PUT its bytes to",
    request_body(content = Object, description = "`{name, mediaType, size}`"),
    responses((status = 201, description = "The upload, with `uploadUrl` (PUT, signed, expires with the upload)", body = Object), (status = 400, description = "validation_failed")))]
pub async fn create_upload(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:run")?;
    let app = auth.app()?;
    let mut f = Fields::new(&body, "");
    let name = f.string("name", true, 1, 255);
    let media_type = f.string("mediaType", true, 1, 255);
    let size = match f.raw("size") {
        Some(v) => match v.as_u64() {
            Some(n) => Some(n),
            None => {
                f.error("size", "invalid_type", "must be a positive integer (bytes)");
                None
            }
        },
        None => {
            f.error("size", "required", "is required: the file's size in bytes");
            None
        }
    };
    f.finish()?;
    let (Some(name), Some(media_type), Some(size)) = (name, media_type, size) else {
        return Err(ApiError::invalid_request(
            "name, mediaType and size are required",
        ));
    };
    let who = Uploader {
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        end_user_id: auth.end_user.as_ref().map(|e| e.id.clone()),
    };
    let created = uploads::create_upload(&state, &who, &name, &media_type, size).await?;
    let mut dto = uploads::upload_dto(&created.row);
    dto["uploadUrl"] = json!(created.url);
    dto["method"] = json!("PUT");
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

#[utoipa::path(put, path = "/api/uploads/_content", tag = "uploads",
    operation_id = "putUploadContent", summary = "Send an upload's bytes to its signed URL (no API key)",
    security(()),
    params(("id" = String, Query), ("expires" = i64, Query), ("max" = u64, Query), ("signature" = String, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Stored: the upload (status ready)", body = Object),
        (status = 403, description = "invalid_signature, signature_expired or url_already_used"),
        (status = 413, description = "payload_too_large: more bytes than declared (refused while streaming)")))]
pub async fn upload_content(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let length = content_length(req.headers());
    let body = req.into_body().into_data_stream();
    let upload = uploads::receive_upload(&state, q.as_deref(), length, body).await?;
    let mut res = Json(uploads::upload_dto(&upload)).into_response();
    res.headers_mut()
        .insert(CACHE_CONTROL, "no-store".parse().expect("header"));
    Ok(res)
}
