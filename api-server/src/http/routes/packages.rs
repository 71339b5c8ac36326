//! `/api/packages*` and `GET /api/agents` (§9.3): thin handlers over [`crate::packages`].

use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::json::{payload_too_large, read_body, JsonBody};
use crate::http::list::{list_response, ListQuery};
use crate::http::middleware::{rate_limit, Limit};
use crate::infra::database::{PackageFilter, PackageRow, PackageVersionRow};
use crate::packages::{self, ConnectionView, PackageId};
use crate::state::AppState;

/// The authenticated routes of this area (mounted under the auth layer).
pub fn router(state: &AppState) -> Router<AppState> {
    let rl = |limit: u32, window_secs: u64| {
        from_fn_with_state((state.clone(), Limit { limit, window_secs }), rate_limit)
    };
    Router::new()
        .route("/api/packages/import", post(import).route_layer(rl(10, 60)))
        .route(
            "/api/packages",
            get(list).merge(post(create).route_layer(rl(10, 60))),
        )
        .route(
            "/api/packages/{scope}/{name}",
            get(get_package).merge(delete(delete_package).route_layer(rl(10, 60))),
        )
        .route(
            "/api/packages/{scope}/{name}/versions",
            get(versions).merge(post(publish).route_layer(rl(10, 60))),
        )
        .route(
            "/api/packages/{scope}/{name}/connections/{auth_key}",
            get(get_connection).merge(
                put(put_connection)
                    .delete(delete_connection)
                    .route_layer(rl(30, 60)),
            ),
        )
        .route("/api/agents", get(list_agents))
}

/// A package (`object: "package"`).
#[derive(Debug, Serialize, ToSchema)]
pub struct PackageDto {
    /// `@scope/name`
    id: String,
    object: &'static str,
    /// `agent`, `skill` or `integration`
    #[serde(rename = "type")]
    kind: String,
    /// `local` or `system`
    source: String,
    #[serde(rename = "latestVersion")]
    latest_version: String,
    display_name: Option<String>,
    description: Option<String>,
    #[serde(rename = "createdAt")]
    created_at: chrono::DateTime<chrono::Utc>,
    #[serde(rename = "updatedAt")]
    updated_at: chrono::DateTime<chrono::Utc>,
    /// The manifest of the latest version (single-package reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    manifest: Option<Value>,
}

impl From<PackageRow> for PackageDto {
    fn from(p: PackageRow) -> Self {
        Self {
            id: p.package_id,
            object: "package",
            kind: p.kind,
            source: p.source,
            latest_version: p.latest_version,
            display_name: p.display_name,
            description: p.description,
            created_at: p.created_at,
            updated_at: p.updated_at,
            manifest: None,
        }
    }
}

/// One published version.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDto {
    version: String,
    /// `sha256-<base64>` of the archive
    integrity: String,
    /// Archive size in bytes
    size: i64,
    #[serde(rename = "createdAt")]
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<PackageVersionRow> for VersionDto {
    fn from(v: PackageVersionRow) -> Self {
        Self {
            version: v.version,
            integrity: v.integrity,
            size: v.size as i64,
            created_at: v.created_at,
        }
    }
}

fn package_id(scope: &str, name: &str) -> Result<PackageId, ApiError> {
    PackageId::from_parts(scope, name)
        .ok_or_else(|| ApiError::not_found(format!("Package {scope}/{name} not found")))
}

async fn visible(state: &AppState, auth: &Auth, id: &PackageId) -> Result<PackageRow, ApiError> {
    packages::visible_package(state, auth, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Package {id} not found")))
}

fn media_type(req: &Request) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(';').next())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The archive bytes: an `application/zip` body, or the multipart field `file`.
async fn archive_bytes(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    match media_type(&req).as_str() {
        "application/zip" | "application/x-zip-compressed" | "application/octet-stream" => {
            read_body(req).await
        }
        "multipart/form-data" => {
            let mut form = Multipart::from_request(req, state)
                .await
                .map_err(|e| ApiError::invalid_request(format!("Malformed multipart body: {e}")))?;
            loop {
                let field = form.next_field().await.map_err(multipart_error)?;
                let Some(field) = field else {
                    return Err(ApiError::invalid_request(
                        "The multipart body has no field named \"file\"",
                    )
                    .with_param("file"));
                };
                if field.name() == Some("file") {
                    return field.bytes().await.map_err(multipart_error);
                }
            }
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Expected Content-Type application/zip or multipart/form-data, got {}",
                if other.is_empty() { "none" } else { other }
            ),
        )),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        payload_too_large()
    } else {
        ApiError::invalid_request(format!("Malformed multipart body: {}", e.body_text()))
    }
}

#[utoipa::path(post, path = "/api/packages/import", tag = "packages",
    operation_id = "importPackage", summary = "Import an .afps archive",
    request_body(content((crate::http::openapi::ArchiveUpload = "multipart/form-data"), (crate::http::openapi::Archive = "application/zip")),
        description = "An .afps archive, or multipart/form-data with the archive in the field `file`"),
    responses((status = 201, description = "Imported: created:true", body = crate::http::openapi::ImportResult),
              (status = 200, description = "Identical bytes were already imported: created:false", body = crate::http::openapi::ImportResult),
              (status = 400, description = "invalid_package with errors"),
              (status = 403, description = "system_package"),
              (status = 409, description = "version_exists"),
              (status = 413, description = "payload_too_large")))]
pub async fn import(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    req: Request,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let bytes = archive_bytes(&state, req).await?;
    let out = packages::import_package(&state, &auth, &bytes).await?;
    Ok(import_response(out))
}

fn import_response(out: packages::ImportOutcome) -> Response {
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "package": PackageDto::from(out.package),
        "version": VersionDto::from(out.version),
        "created": out.created,
    });
    (status, Json(body)).into_response()
}

#[utoipa::path(post, path = "/api/packages", tag = "packages",
    operation_id = "createPackage", summary = "Create a package from a manifest and files",
    request_body(content = crate::http::openapi::CreatePackageRequest,
        description = "{manifest:{…}, files?:{\"<path>\": \"<UTF-8 content>\"}}: the archive is built server-side \
                       (manifest.json from `manifest`) and validated like an import"),
    responses((status = 201, description = "Created: created:true", body = crate::http::openapi::ImportResult),
              (status = 200, description = "The same manifest and files were already stored: created:false", body = crate::http::openapi::ImportResult),
              (status = 400, description = "validation_failed (body shape, unknown fields) or invalid_package with errors"),
              (status = 403, description = "system_package"),
              (status = 409, description = "version_exists"),
              (status = 413, description = "payload_too_large")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    auth.app()?;
    let archive = packages::archive_from_json(&body)?;
    let out = packages::import_parsed(&state, &auth, &archive.package, &archive.bytes).await?;
    Ok(import_response(out))
}

#[utoipa::path(post, path = "/api/packages/{scope}/{name}/versions", tag = "packages",
    operation_id = "publishPackageVersion", summary = "Publish a new version of a package",
    params(("scope" = String, Path), ("name" = String, Path)),
    request_body(content((crate::http::openapi::CreatePackageRequest = "application/json"), (crate::http::openapi::ArchiveUpload = "multipart/form-data"), (crate::http::openapi::Archive = "application/zip")),
        description = "The same JSON body as POST /api/packages, or an .afps archive (application/zip, or \
                       multipart/form-data with the field `file`); the manifest must name this package"),
    responses((status = 201, description = "Published: created:true", body = crate::http::openapi::ImportResult),
              (status = 200, description = "Identical bytes of an existing version: created:false", body = crate::http::openapi::ImportResult),
              (status = 400, description = "invalid_package (manifest.name must be this package) or validation_failed"),
              (status = 403, description = "system_package"),
              (status = 404, description = "The application has no such package"),
              (status = 409, description = "version_not_forward (not above the highest version) or version_exists"),
              (status = 413, description = "payload_too_large")))]
pub async fn publish(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = package_id(&scope, &name)?;
    let target = packages::mutable_package(&state, &auth, &id).await?;
    let mt = media_type(&req);
    let archive = if mt == "application/json" || mt.ends_with("+json") {
        let JsonBody(body) = JsonBody::from_request(req, &state).await?;
        packages::archive_from_json(&body)?
    } else {
        packages::archive_from_zip(archive_bytes(&state, req).await?.to_vec())?
    };
    let out = packages::publish_version(&state, &auth, &target, &archive).await?;
    Ok(import_response(out))
}

#[utoipa::path(delete, path = "/api/packages/{scope}/{name}", tag = "packages",
    operation_id = "deletePackage", summary = "Remove a package from the application",
    params(("scope" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "Removed from the application (and deleted with its versions, \
                                             connections and artifacts when no other application has it)"),
              (status = 403, description = "system_package"),
              (status = 404),
              (status = 409, description = "package_in_use: the application has pending or running runs of it")))]
pub async fn delete_package(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = package_id(&scope, &name)?;
    packages::delete_package(&state, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/packages", tag = "packages",
    operation_id = "listPackages", summary = "List packages",
    params(("type" = Option<String>, Query, description = "agent, skill, integration or mcp-server"),
           ("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "List of packages: system packages plus those installed in the application", body = crate::http::openapi::PackageList),
              (status = 400)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:read")?;
    let query = ListQuery::parse(q.as_deref())?;
    let kind = query.param("type");
    if let Some(k) = &kind {
        if packages::PackageType::parse(k).is_none() {
            return Err(ApiError::invalid_request(format!(
                "type must be agent, skill, integration or mcp-server, got {k:?}"
            ))
            .with_param("type"));
        }
    }
    let app = auth.app()?;
    let page = state
        .infra
        .db
        .list_visible_packages(&app.id, &PackageFilter { kind }, &query.page)
        .await?;
    let last = page.items.last().map(|p| p.package.package_id.clone());
    let data: Vec<PackageDto> = page
        .items
        .into_iter()
        .map(|p| PackageDto::from(p.package))
        .collect();
    Ok(list_response(
        &state.config.app_url,
        "/api/packages",
        &query,
        data,
        page.has_more,
        last.as_deref(),
    ))
}

#[utoipa::path(get, path = "/api/packages/{scope}/{name}", tag = "packages",
    operation_id = "getPackage", summary = "Get a package with the manifest of its latest version",
    params(("scope" = String, Path, description = "@scope (or %40scope)"), ("name" = String, Path)),
    responses((status = 200, body = PackageDto), (status = 404)))]
pub async fn get_package(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:read")?;
    let id = package_id(&scope, &name)?;
    let pkg = visible(&state, &auth, &id).await?;
    let manifest = state
        .infra
        .db
        .get_package_version(&pkg.id, &pkg.latest_version)
        .await?
        .map(|v| v.manifest.0);
    let mut dto = PackageDto::from(pkg);
    dto.manifest = Some(manifest.unwrap_or(Value::Null));
    Ok(Json(dto).into_response())
}

#[utoipa::path(get, path = "/api/packages/{scope}/{name}/versions", tag = "packages",
    operation_id = "listPackageVersions", summary = "List the versions of a package",
    params(("scope" = String, Path), ("name" = String, Path),
           ("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query, description = "a version")),
    responses((status = 200, description = "List of versions, highest semver first", body = crate::http::openapi::VersionList), (status = 404)))]
pub async fn versions(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:read")?;
    let query = ListQuery::parse(q.as_deref())?;
    let id = package_id(&scope, &name)?;
    let pkg = visible(&state, &auth, &id).await?;
    let mut rows = state.infra.db.list_package_versions(&pkg.id).await?;
    packages::sort_versions_desc(&mut rows, |v| &v.version);
    let start = match &query.page.starting_after {
        None => 0,
        Some(after) => {
            rows.iter()
                .position(|v| &v.version == after)
                .ok_or_else(|| {
                    ApiError::invalid_request("Unknown startingAfter cursor")
                        .with_param("startingAfter")
                })?
                + 1
        }
    };
    let limit = query.page.limit as usize;
    let has_more = rows.len() > start + limit;
    let page: Vec<VersionDto> = rows
        .into_iter()
        .skip(start)
        .take(limit)
        .map(VersionDto::from)
        .collect();
    let last = page.last().map(|v| v.version.clone());
    Ok(list_response(
        &state.config.app_url,
        &format!("/api/packages/{id}/versions"),
        &query,
        page,
        has_more,
        last.as_deref(),
    ))
}

#[utoipa::path(put, path = "/api/packages/{scope}/{name}/connections/{authKey}", tag = "packages",
    operation_id = "putConnection", summary = "Store the credentials of an integration",
    params(("scope" = String, Path), ("name" = String, Path), ("authKey" = String, Path)),
    request_body(content = crate::http::openapi::PutConnectionRequest, description = "{credentials:{…}} validated against auths.<authKey>.credentials.schema"),
    responses((status = 200, body = ConnectionView), (status = 400), (status = 404)))]
pub async fn put_connection(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name, auth_key)): Path<(String, String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = package_id(&scope, &name)?;
    let view = packages::put_connection(&state, &auth, &id, &auth_key, &body).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/api/packages/{scope}/{name}/connections/{authKey}", tag = "packages",
    operation_id = "getConnection", summary = "Get a connection (field names only, never values)",
    params(("scope" = String, Path), ("name" = String, Path), ("authKey" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 404)))]
pub async fn get_connection(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name, auth_key)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:read")?;
    let id = package_id(&scope, &name)?;
    let view = packages::connection_for_actor(&state, &auth, &id, &auth_key).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(delete, path = "/api/packages/{scope}/{name}/connections/{authKey}", tag = "packages",
    operation_id = "deleteConnection", summary = "Delete a connection",
    params(("scope" = String, Path), ("name" = String, Path), ("authKey" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_connection(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path((scope, name, auth_key)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    auth.require_scope("packages:write")?;
    let id = package_id(&scope, &name)?;
    packages::delete_connection(&state, &auth, &id, &auth_key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/agents", tag = "agents",
    operation_id = "listAgents", summary = "List the agents the application can run",
    params(("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query)),
    responses((status = 200, description = "List of agents visible to the application (system and installed)", body = crate::http::openapi::AgentList)))]
pub async fn list_agents(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("agents:read")?;
    let query = ListQuery::parse(q.as_deref())?;
    let app = auth.app()?;
    let filter = PackageFilter {
        kind: Some("agent".into()),
    };
    let page = state
        .infra
        .db
        .list_visible_packages(&app.id, &filter, &query.page)
        .await?;
    let running = packages::running_runs_by_agent(&state, &auth).await?;
    let has_more = page.has_more;
    let data = packages::agent_summaries(page.items, &running);
    let last = data.last().map(|a| a.id.clone());
    Ok(list_response(
        &state.config.app_url,
        "/api/agents",
        &query,
        data,
        has_more,
        last.as_deref(),
    ))
}
