//! Authoring through the API: create a package from JSON, publish versions (forward-only semver), delete.
//!
//! A JSON body `{manifest, files?}` becomes an ordinary `.afps` archive ([`afps::build_zip`]) that goes
//! through the same [`afps::parse`] as an uploaded one, so both paths share every rule and cap.

use crate::domain::{DomainError, ErrorKind, FieldError, Fields, Principal};
use serde_json::Value;

use super::afps::{self, AfpsError, AfpsPackage};
use super::store::{import_parsed, ImportOutcome};
use super::{afps_error, invalid_package, PackageId};
use crate::infra::database::{DbError, PackageRow};
use crate::state::AppState;

/// An archive built from a JSON body or uploaded, validated.
#[derive(Debug, Clone)]
pub struct Archive {
    pub bytes: Vec<u8>,
    pub package: AfpsPackage,
}

/// Validates an uploaded archive.
pub fn archive_from_zip(bytes: Vec<u8>) -> Result<Archive, DomainError> {
    let package = afps::parse(&bytes).map_err(afps_error)?;
    Ok(Archive { bytes, package })
}

/// Why a `files` key cannot be a file of the archive, if it cannot.
fn bad_file_path(path: &str) -> Option<(&'static str, &'static str)> {
    if let Some(reason) = afps::unsafe_path_reason(path.as_bytes()) {
        return Some(("unsafe_path", reason));
    }
    if path.split('/').any(|seg| seg.is_empty() || seg == ".") {
        return Some(("unsafe_path", "path contains an empty or . segment"));
    }
    if path == "__MACOSX" || path.starts_with("__MACOSX/") {
        return Some(("invalid_value", "__MACOSX entries are not kept"));
    }
    if path == "manifest.json" {
        return Some(("invalid_value", "manifest.json is built from `manifest`"));
    }
    None
}

/// Builds and validates the archive of a `{manifest: {…}, files?: {"<path>": "<utf-8 content>"}}` body.
///
/// The body's shape (unknown fields, wrong JSON types) is 400 `validation_failed`; the package's content
/// (manifest rules, per-type files, unsafe paths, caps) is 400 `invalid_package` as for an import, with
/// archive-level problems reported on `files`, and 413 past the archive cap.
pub fn archive_from_json(body: &Value) -> Result<Archive, DomainError> {
    let mut f = Fields::new(body, "");
    let manifest = match f.raw("manifest") {
        None => {
            f.error("manifest", "required", "is required");
            None
        }
        Some(m @ Value::Object(_)) => Some(m),
        Some(_) => {
            f.error("manifest", "invalid_type", "must be an object");
            None
        }
    };
    let mut files: Vec<(&str, &str)> = Vec::new();
    match f.raw("files") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (path, content) in map {
                match content {
                    Value::String(s) => files.push((path.as_str(), s.as_str())),
                    _ => f.error(
                        &format!("files.{path}"),
                        "invalid_type",
                        "must be a string (UTF-8 file content)",
                    ),
                }
            }
        }
        Some(_) => f.error(
            "files",
            "invalid_type",
            "must be an object of path → content",
        ),
    }
    f.finish()?;
    let manifest = manifest.expect("checked by finish");

    let errors: Vec<FieldError> = files
        .iter()
        .filter_map(|(path, _)| {
            bad_file_path(path)
                .map(|(code, why)| FieldError::new(format!("files.{path}"), code, why))
        })
        .collect();
    if !errors.is_empty() {
        return Err(invalid_package(errors));
    }
    if files.len() + 1 > afps::MAX_ENTRIES {
        return Err(invalid_package(vec![FieldError::new(
            "files",
            "too_many_entries",
            format!("at most {} files are allowed", afps::MAX_ENTRIES - 1),
        )]));
    }
    files.sort_by(|a, b| a.0.cmp(b.0));
    let manifest_bytes = serde_json::to_vec_pretty(manifest).map_err(DomainError::internal)?;
    let mut entries: Vec<(&str, &[u8])> = vec![("manifest.json", &manifest_bytes)];
    entries.extend(files.iter().map(|(p, c)| (*p, c.as_bytes())));
    let bytes = afps::build_zip(&entries);
    match afps::parse(&bytes) {
        Ok(package) => Ok(Archive { bytes, package }),
        Err(AfpsError::Invalid(errors)) => Err(invalid_package(
            errors
                .into_iter()
                .map(|mut e| {
                    if e.field == "archive" {
                        e.field = "files".into();
                    }
                    e
                })
                .collect(),
        )),
        Err(e) => Err(afps_error(e)),
    }
}

fn system_package(id: &PackageId) -> DomainError {
    DomainError::new(
        ErrorKind::Forbidden,
        "system_package",
        format!("{id} is a system package and is read-only"),
    )
}

/// The organization package `id` installed in the caller's application, for a mutation: 403
/// `system_package` when the application sees a system package under that id, 404 when it sees none.
pub async fn mutable_package(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
) -> Result<PackageRow, DomainError> {
    let app = auth.app()?;
    match state
        .infra
        .db
        .find_visible_package(&app.id, &id.to_string())
        .await?
    {
        Some(p) if p.org_id.is_none() => Err(system_package(id)),
        Some(p) => Ok(p),
        None => Err(super::store::package_not_found(&id.to_string())),
    }
}

/// `POST /api/packages/{scope}/{name}/versions`: `archive` becomes a new version of `target` (from
/// [`mutable_package`]). Its manifest must name the same package (400 `manifest.name`) with the same type
/// (400 `manifest.type`); its version must be strictly greater than every stored version (409
/// `version_not_forward`). An existing version is `created:false` with identical bytes, else 409
/// `version_exists`.
pub async fn publish_version(
    state: &AppState,
    auth: &Principal,
    target: &PackageRow,
    archive: &Archive,
) -> Result<ImportOutcome, DomainError> {
    let m = &archive.package.manifest;
    let id = m.id.to_string();
    if id != target.package_id {
        return Err(invalid_package(vec![FieldError::new(
            "manifest.name",
            "invalid_value",
            format!(
                "must be {} (the package being published), got {id}",
                target.package_id
            ),
        )]));
    }
    if m.kind.as_str() != target.kind {
        return Err(invalid_package(vec![FieldError::new(
            "manifest.type",
            "invalid_value",
            format!(
                "must be {} (the type of {}), got {}",
                target.kind,
                target.package_id,
                m.kind.as_str()
            ),
        )]));
    }
    let version = m.version.to_string();
    let db = &state.infra.db;
    if db
        .get_package_version(&target.id, &version)
        .await?
        .is_none()
    {
        let versions: Vec<String> = db
            .list_package_versions(&target.id)
            .await?
            .into_iter()
            .map(|v| v.version)
            .collect();
        if let Some(highest) = super::pick_version(&versions, None) {
            if !super::semver_gt(&m.version, highest) {
                return Err(DomainError::conflict(
                    "version_not_forward",
                    format!(
                        "{id}@{version} is not greater than the current highest version {highest}; \
                         versions only move forward"
                    ),
                ));
            }
        }
    }
    // Identical bytes of an existing version → created:false, other bytes → 409 version_exists.
    import_parsed(state, auth, &archive.package, &archive.bytes).await
}

/// `DELETE /api/packages/{scope}/{name}`: removes the package from the caller's application — 409
/// `package_in_use` while the application has `pending` or `running` runs of it. When no other
/// application of the organization has it installed, the package, its versions, its connections and its
/// stored artifacts go too.
pub async fn delete_package(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
) -> Result<(), DomainError> {
    let app = auth.app()?;
    let pkg = mutable_package(state, auth, id).await?;
    let db = &state.infra.db;
    let open = db
        .open_runs_by_package(&app.id)
        .await?
        .into_iter()
        .find(|(p, _)| *p == pkg.package_id)
        .map_or(0, |(_, n)| n);
    if open > 0 {
        return Err(DomainError::conflict(
            "package_in_use",
            format!(
                "{id} has {open} pending or running run(s) in this application; cancel them or wait \
                 for them to finish"
            ),
        ));
    }
    let keys = match db.remove_package(&app.id, &pkg).await {
        Ok(keys) => keys,
        Err(DbError::NotFound) => {
            return Err(DomainError::not_found(format!("Package {id} not found")))
        }
        Err(e) => return Err(e.into()),
    };
    for key in keys.unwrap_or_default() {
        if let Err(e) = state.infra.storage.delete(&key).await {
            tracing::warn!(key, error = %e, "deleted package artifact could not be removed from storage");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(e: DomainError) -> Vec<(String, &'static str)> {
        e.errors
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn json_bodies() {
        let m = json!({"schema_version": "0.1", "name": "@a/b", "version": "1.0.0", "type": "agent", "display_name": "B"});
        let a = archive_from_json(
            &json!({"manifest": m, "files": {"prompt.md": "Hi", "docs/x.txt": "y"}}),
        )
        .unwrap();
        assert_eq!(
            a.package.entries,
            ["manifest.json", "docs/x.txt", "prompt.md"]
        );
        assert_eq!(a.package.prompt.as_deref(), Some("Hi"));
        // Deterministic bytes: the same body twice is the same integrity.
        let b = archive_from_json(
            &json!({"manifest": m, "files": {"docs/x.txt": "y", "prompt.md": "Hi"}}),
        )
        .unwrap();
        assert_eq!(a.package.integrity, b.package.integrity);

        let e = archive_from_json(&json!({"manifest": m})).unwrap_err();
        assert_eq!(e.code, "invalid_package");
        assert_eq!(fields(e), [("files".to_string(), "required")]);

        let e =
            archive_from_json(&json!({"manifest": m, "extra": 1, "files": {"a": 1}})).unwrap_err();
        assert_eq!(e.code, "validation_failed");
        assert_eq!(
            fields(e),
            [
                ("files.a".to_string(), "invalid_type"),
                ("extra".to_string(), "unknown_field")
            ]
        );
        let e = archive_from_json(&json!({})).unwrap_err();
        assert_eq!(fields(e), [("manifest".to_string(), "required")]);

        for bad in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "manifest.json",
            "__MACOSX/x",
        ] {
            let e =
                archive_from_json(&json!({"manifest": m, "files": {"prompt.md": "x", bad: "x"}}))
                    .unwrap_err();
            assert_eq!(e.code, "invalid_package", "{bad}");
            assert_eq!(fields(e)[0].0, format!("files.{bad}"), "{bad}");
        }
    }
}
