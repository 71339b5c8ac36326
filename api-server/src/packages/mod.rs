//! AFPS packages (§16): archive validation, import, versions, the boot-time system-package sync,
//! integration connections, and the functions the runs pipeline calls.
//!
//! # API for the runs pipeline
//!
//! | Function | Use |
//! |---|---|
//! | [`resolve_agent`] | §11.1 step 5: the agent and version a run uses (404 `agent_not_found` / `version_not_found`) |
//! | [`validate_input`] | step 6: top-level `default`s of `input.schema`, then validation (400 `validation_failed`, `input.<field>`) |
//! | [`run_integrations`] | step 8: integration dependencies, connections and rendered credential headers (422 / 412) |
//! | [`run_bundle`] / [`inline_bundle`] | §16.3: the ZIP served by `GET /api/runs/{id}/workspace` |
//! | [`validate_manifest`] | inline runs: `invalid_package` errors with fields prefixed `manifest.` |
//! | [`sync_system_packages`] | §5.2 step 5, called at boot |
//! | [`archive_from_json`] / [`publish_version`] / [`delete_package`] | create from JSON, publish, delete |
//! | [`agent_summaries`] | `GET /api/agents` items, given the running-run counts per agent id |
//!
//! Nothing here depends on axum; errors are [`DomainError`]s carrying the documented codes.

pub mod afps;
pub mod authoring;
pub mod connections;
pub mod manifest;
pub mod mcp;
pub mod run;
pub mod store;
pub mod workspace_meta;

use crate::domain::{DomainError, ErrorKind, FieldError};
use serde_json::Value;

pub use afps::{integrity, parse, AfpsError, AfpsPackage};
pub use authoring::{
    archive_from_json, archive_from_zip, delete_package, mutable_package, publish_version, Archive,
};
pub use connections::{connection_for_actor, delete_connection, put_connection, ConnectionView};
pub use manifest::{auth_required, validate_manifest, Manifest, PackageId, PackageType};
pub use run::{
    inline_bundle, resolve_agent, run_bundle, run_integrations, validate_input, ResolvedAgent,
    RunIntegration,
};
pub use store::{
    agent_summaries, import_package, import_parsed, running_runs_by_agent, sync_dir,
    sync_system_packages, visible_package, AgentSummary, ImportOutcome, SyncReport,
};

/// 400 `invalid_package` carrying every problem.
pub fn invalid_package(errors: Vec<FieldError>) -> DomainError {
    let detail = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    let mut e = DomainError::bad_request("invalid_package", format!("Invalid package: {detail}"));
    e.errors = Some(errors);
    e
}

/// The answer for an archive refused by [`afps::parse`].
pub fn afps_error(e: AfpsError) -> DomainError {
    match e {
        AfpsError::TooLarge => DomainError::new(
            ErrorKind::TooLarge,
            "payload_too_large",
            format!(
                "Package archives are limited to {} MiB",
                afps::MAX_COMPRESSED_BYTES / (1024 * 1024)
            ),
        ),
        AfpsError::Invalid(errors) => invalid_package(errors),
    }
}

/// Storage key of an archive: `packages/<orgId or _system>/<@scope>/<name>/<version>.afps`.
pub fn storage_key(org_id: Option<&str>, id: &PackageId, version: &str) -> String {
    format!(
        "packages/{}/{}/{}/{version}.afps",
        org_id.unwrap_or("_system"),
        id.at_scope(),
        id.name
    )
}

/// Picks a version: an exact match first, else the highest version satisfying `req` as a semver range;
/// `None` asks for the highest version.
pub fn pick_version<'a>(versions: &'a [String], req: Option<&str>) -> Option<&'a str> {
    let parsed = || {
        versions
            .iter()
            .filter_map(|v| semver::Version::parse(v).ok().map(|p| (p, v.as_str())))
    };
    match req.map(str::trim).filter(|r| !r.is_empty()) {
        None => parsed().max_by(|a, b| a.0.cmp(&b.0)).map(|(_, v)| v),
        Some(r) => {
            if let Some(v) = versions.iter().find(|v| v.as_str() == r) {
                return Some(v.as_str());
            }
            let req = semver::VersionReq::parse(r).ok()?;
            parsed()
                .filter(|(p, _)| req.matches(p))
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, v)| v)
        }
    }
}

/// Sorts versions highest semver first (unparseable ones last).
pub fn sort_versions_desc<T>(items: &mut [T], version: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| {
        let pa = semver::Version::parse(version(a)).ok();
        let pb = semver::Version::parse(version(b)).ok();
        pb.cmp(&pa)
    });
}

/// Whether `v` is higher than the version string `other` (an unparseable `other` loses).
pub(crate) fn semver_gt(v: &semver::Version, other: &str) -> bool {
    semver::Version::parse(other).map_or(true, |o| *v > o)
}

/// A top-level string field of a manifest.
pub(crate) fn manifest_str(manifest: &Value, key: &str) -> Option<String> {
    manifest
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_picking() {
        let vs: Vec<String> = ["1.0.0", "1.2.0", "2.0.0-rc.1", "1.10.0", "0.9.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(pick_version(&vs, None), Some("2.0.0-rc.1"));
        assert_eq!(pick_version(&vs, Some("1.2.0")), Some("1.2.0"));
        assert_eq!(pick_version(&vs, Some("^1")), Some("1.10.0"));
        assert_eq!(pick_version(&vs, Some("~1.2")), Some("1.2.0"));
        assert_eq!(pick_version(&vs, Some("2.0.0-rc.1")), Some("2.0.0-rc.1"));
        assert_eq!(pick_version(&vs, Some("^3")), None);
        assert_eq!(pick_version(&vs, Some("garbage")), None);
        let mut v = vs.clone();
        sort_versions_desc(&mut v, |s| s);
        assert_eq!(
            v,
            ["2.0.0-rc.1", "1.10.0", "1.2.0", "1.0.0", "0.9.0"].map(String::from)
        );
    }

    #[test]
    fn keys() {
        let id = PackageId::parse("@appstrate/github").unwrap();
        assert_eq!(
            storage_key(None, &id, "1.0.3"),
            "packages/_system/@appstrate/github/1.0.3.afps"
        );
        assert_eq!(
            storage_key(Some("org1"), &id, "1.0.3"),
            "packages/org1/@appstrate/github/1.0.3.afps"
        );
    }
}
