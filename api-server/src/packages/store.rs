//! Import, the system-package sync (§16.3) and what an application sees.

use std::collections::HashMap;
use std::path::Path;

use crate::domain::{DomainError, ErrorKind, Principal};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::afps::{self, AfpsPackage};
use super::{afps_error, semver_gt, storage_key, PackageId};
use crate::infra::database::{
    NewPackageVersion, PackageRow, PackageVersionRow, PackageWithManifest,
};
use crate::infra::Infra;
use crate::state::AppState;

/// The result of an import.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    pub package: PackageRow,
    pub version: PackageVersionRow,
    /// False when identical bytes were already stored under this version.
    pub created: bool,
}

fn new_version(pkg: &AfpsPackage, org_id: Option<&str>, is_latest: bool) -> NewPackageVersion {
    let m = &pkg.manifest;
    let version = m.version.to_string();
    NewPackageVersion {
        org_id: org_id.map(str::to_string),
        package_id: m.id.to_string(),
        scope: m.id.at_scope(),
        name: m.id.name.clone(),
        kind: m.kind.as_str().to_string(),
        source: if org_id.is_some() { "local" } else { "system" }.to_string(),
        storage_key: storage_key(org_id, &m.id, &version),
        version,
        integrity: pkg.integrity.clone(),
        size: pkg.size as i32,
        manifest: m.raw.clone(),
        display_name: m.display_name.clone(),
        description: m.description.clone(),
        is_latest,
    }
}

/// Whether `version` would become the latest of `existing` (none yet → yes).
fn becomes_latest(existing: Option<&PackageRow>, version: &semver::Version) -> bool {
    match existing {
        None => true,
        Some(p) => semver_gt(version, &p.latest_version),
    }
}

/// Stores the archive, then records the version. A concurrent identical insert is read back.
async fn store_version(
    infra: &Infra,
    pkg: &AfpsPackage,
    bytes: &[u8],
    org_id: Option<&str>,
    existing: Option<&PackageRow>,
) -> Result<(PackageRow, PackageVersionRow), DomainError> {
    let new = new_version(pkg, org_id, becomes_latest(existing, &pkg.manifest.version));
    infra
        .storage
        .put(&new.storage_key, Bytes::copy_from_slice(bytes))
        .await
        .map_err(DomainError::internal)?;
    Ok(infra.db.insert_package_version(&new).await?)
}

/// `POST /api/packages/import`: validates, stores and installs an archive into the caller's application.
pub async fn import_package(
    state: &AppState,
    auth: &Principal,
    bytes: &[u8],
) -> Result<ImportOutcome, DomainError> {
    auth.app()?;
    let pkg = afps::parse(bytes).map_err(afps_error)?;
    import_parsed(state, auth, &pkg, bytes).await
}

/// Stores an archive already validated by [`afps::parse`] (`bytes` are its exact bytes) like an import:
/// 403 for a system id, `created:false` for identical bytes, 409 `version_exists` for other bytes, then
/// installs it into the caller's application.
pub async fn import_parsed(
    state: &AppState,
    auth: &Principal,
    pkg: &AfpsPackage,
    bytes: &[u8],
) -> Result<ImportOutcome, DomainError> {
    let app = auth.app()?;
    let id = pkg.manifest.id.to_string();
    let version = pkg.manifest.version.to_string();
    let db = &state.infra.db;
    if db.find_system_package(&id).await?.is_some() {
        return Err(DomainError::new(
            ErrorKind::Forbidden,
            "system_package",
            format!("{id} is a system package and is read-only"),
        ));
    }
    let conflict = || {
        DomainError::conflict(
            "version_exists",
            format!("{id}@{version} already exists with different content; publish a new version"),
        )
    };
    let existing = db.find_org_package(&auth.org_id, &id).await?;
    if let Some(p) = &existing {
        ensure_installed(state, auth, p).await?;
        if let Some(v) = db.get_package_version(&p.id, &version).await? {
            if v.integrity != pkg.integrity {
                return Err(conflict());
            }
            db.install_package(&app.id, &p.id).await?;
            return Ok(ImportOutcome {
                package: p.clone(),
                version: v,
                created: false,
            });
        }
    }
    let (package, version_row) = match store_version(
        &state.infra,
        pkg,
        bytes,
        Some(&auth.org_id),
        existing.as_ref(),
    )
    .await
    {
        Ok(r) => r,
        // Lost a race with a concurrent import of the same version.
        Err(e) if e.code == "conflict" => {
            let p = db
                .find_org_package(&auth.org_id, &id)
                .await?
                .ok_or_else(conflict)?;
            // The winner created it for its own application: this one may not join it.
            ensure_installed(state, auth, &p).await?;
            let v = db
                .get_package_version(&p.id, &version)
                .await?
                .ok_or_else(conflict)?;
            if v.integrity != pkg.integrity {
                return Err(conflict());
            }
            db.install_package(&app.id, &p.id).await?;
            return Ok(ImportOutcome {
                package: p,
                version: v,
                created: false,
            });
        }
        Err(e) => return Err(e),
    };
    db.install_package(&app.id, &package.id).await?;
    Ok(ImportOutcome {
        package,
        version: version_row,
        created: true,
    })
}

/// The answer for a package the caller's application cannot see, whoever owns it: an import or publish
/// aimed at a package of another application of the organization gets exactly what one aimed at another
/// organization's package gets, so nothing about it is revealed.
pub(super) fn package_not_found(id: &str) -> DomainError {
    DomainError::not_found(format!("Package {id} not found"))
}

/// Refuses to touch the organization package `p` unless it is installed in the caller's application, or
/// the caller is an admin token (which acts for every application of the organization). Package ids are
/// unique per organization, so without this an API key of one application could add a version (the new
/// latest) to a package only another application uses, and change what that application runs.
async fn ensure_installed(
    state: &AppState,
    auth: &Principal,
    p: &PackageRow,
) -> Result<(), DomainError> {
    if auth.is_admin() {
        return Ok(());
    }
    let visible = state
        .infra
        .db
        .find_visible_package(&auth.app()?.id, &p.package_id)
        .await?;
    match visible {
        Some(v) if v.id == p.id => Ok(()),
        _ => Err(package_not_found(&p.package_id)),
    }
}

/// What one boot-time sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Versions newly stored.
    pub inserted: usize,
    /// Files whose version was already stored with the same bytes.
    pub unchanged: usize,
    /// Files skipped: unreadable, invalid, or the same version with different bytes.
    pub failed: usize,
}

/// §5.2 step 5: syncs `$SYSTEM_PACKAGES_DIR/*.afps` (see [`sync_dir`]).
pub async fn sync_system_packages(state: &AppState) -> SyncReport {
    sync_dir(&state.infra, &state.config.system_packages_dir).await
}

/// Validates and upserts every `*.afps` of `dir` as a system package (`org_id` NULL). Idempotent: an
/// already-stored version with the same bytes writes nothing. Bad files are logged at error and skipped;
/// the same version with different bytes is logged at error and the stored bytes win.
pub async fn sync_dir(infra: &Infra, dir: &Path) -> SyncReport {
    let mut report = SyncReport::default();
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "afps") && p.is_file())
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "system packages directory not readable; nothing synced");
            return report;
        }
    };
    files.sort();
    for path in files {
        let file = path.display().to_string();
        match sync_file(infra, &path).await {
            Ok(true) => report.inserted += 1,
            Ok(false) => report.unchanged += 1,
            Err(message) => {
                tracing::error!(file = %file, error = %message, "system package skipped");
                report.failed += 1;
            }
        }
    }
    tracing::info!(
        inserted = report.inserted,
        unchanged = report.unchanged,
        failed = report.failed,
        "system packages synced"
    );
    report
}

/// `Ok(true)` when a version was stored, `Ok(false)` when it already was.
async fn sync_file(infra: &Infra, path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let pkg = afps::parse(&bytes).map_err(|e| match e {
        afps::AfpsError::TooLarge => "archive larger than 10 MiB".to_string(),
        afps::AfpsError::Invalid(errors) => errors
            .iter()
            .map(|e| format!("{} {}: {}", e.field, e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    let id = pkg.manifest.id.to_string();
    let version = pkg.manifest.version.to_string();
    let db = &infra.db;
    let existing = db
        .find_system_package(&id)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(p) = &existing {
        if let Some(v) = db
            .get_package_version(&p.id, &version)
            .await
            .map_err(|e| e.to_string())?
        {
            if v.integrity == pkg.integrity {
                restore_missing_artifact(infra, &v.storage_key, &bytes).await?;
                return Ok(false);
            }
            return Err(format!(
                "{id}@{version} is already stored with integrity {}; this file has {}; the stored bytes win",
                v.integrity, pkg.integrity
            ));
        }
    }
    match store_version(infra, &pkg, &bytes, None, existing.as_ref()).await {
        Ok(_) => Ok(true),
        // A sibling instance booting at the same time inserted it first.
        Err(e) if e.code == "conflict" => {
            let stored = match db
                .find_system_package(&id)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(p) => db
                    .get_package_version(&p.id, &version)
                    .await
                    .map_err(|e| e.to_string())?,
                None => None,
            };
            match stored {
                Some(v) if v.integrity == pkg.integrity => Ok(false),
                Some(v) => Err(format!(
                    "{id}@{version} is already stored with integrity {}; this file has {}; the stored bytes win",
                    v.integrity, pkg.integrity
                )),
                None => Err(format!("{id}@{version}: {}", e.detail)),
            }
        }
        Err(e) => Err(format!("{id}@{version}: {}", e.detail)),
    }
}

/// Puts a system artifact back when its version row exists but the object store lost it (e.g. a fresh
/// `FS_STORAGE_PATH`). Rows are never touched.
async fn restore_missing_artifact(infra: &Infra, key: &str, bytes: &[u8]) -> Result<(), String> {
    let present = infra
        .storage
        .get(key)
        .await
        .map_err(|e| format!("storage: {e}"))?
        .is_some();
    if !present {
        tracing::warn!(
            key,
            "system package artifact missing from storage; restored"
        );
        infra
            .storage
            .put(key, Bytes::copy_from_slice(bytes))
            .await
            .map_err(|e| format!("storage: {e}"))?;
    }
    Ok(())
}

/// The package `@scope/name` as the caller's application sees it (installed, else system).
pub async fn visible_package(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
) -> Result<Option<PackageRow>, DomainError> {
    let app = auth.app()?;
    Ok(state
        .infra
        .db
        .find_visible_package(&app.id, &id.to_string())
        .await?)
}

/// One item of `GET /api/agents`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentSummary {
    /// `@scope/name`
    pub id: String,
    /// `@scope`
    pub scope: String,
    pub name: String,
    /// The latest version.
    pub version: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `local` or `system`
    pub source: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub schema_version: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<Value>,
    /// `pending` + `running` runs of this agent in the application.
    pub running_runs: i64,
}

/// `GET /api/agents` items from package rows (with their latest manifest) and the running-run counts per
/// agent id (`@scope/name`; missing ids count 0).
pub fn agent_summaries(
    rows: Vec<PackageWithManifest>,
    running: &HashMap<String, i64>,
) -> Vec<AgentSummary> {
    rows.into_iter()
        .map(|r| {
            let m = r.manifest.0;
            let p = r.package;
            AgentSummary {
                running_runs: running.get(&p.package_id).copied().unwrap_or(0),
                id: p.package_id,
                scope: p.scope,
                name: p.name,
                version: p.latest_version,
                kind: "agent",
                source: p.source,
                display_name: p.display_name,
                description: p.description,
                schema_version: super::manifest_str(&m, "schema_version"),
                input_schema: m.pointer("/input/schema").cloned(),
                output_schema: m.pointer("/output/schema").cloned(),
            }
        })
        .collect()
}

/// Running (`pending` + `running`) runs per agent id in the caller's application, for `running_runs`.
pub async fn running_runs_by_agent(
    state: &AppState,
    auth: &Principal,
) -> Result<HashMap<String, i64>, DomainError> {
    let app = auth.app()?;
    Ok(state
        .infra
        .db
        .open_runs_by_package(&app.id)
        .await?
        .into_iter()
        .collect())
}
