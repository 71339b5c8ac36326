//! The files of a run's stdio MCP servers, where the sidecar launches them: unpacked under
//! `$DATA_DIR/runs/<runId>/mcp/<name>/` in process mode, uploaded to the sidecar container's `/mcp/<name>/`
//! in Docker mode (see `docker::mcp`).

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

/// Largest unpacked server (the import already capped the archive at 50 MiB inflated).
const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// One regular file of a server package.
pub struct McpFile {
    /// Relative to the package root, never leaving it.
    pub path: PathBuf,
    /// Permission bits: the archive's (at most 0755, at least 0600), 0755 for the entry point.
    pub mode: u32,
    pub data: Vec<u8>,
}

/// The regular files of `archive` (a zip). Entry names were validated at import; any that would leave
/// the package root is skipped all the same. The entry point, when given, must be one of them.
pub fn files(archive: &[u8], entry_point: Option<&str>) -> Result<Vec<McpFile>, String> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(archive)).map_err(|e| format!("archive: {e}"))?;
    let mut total = 0u64;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("archive: {e}"))?;
        let Some(rel) = entry.enclosed_name() else {
            continue;
        };
        if entry.is_dir() || rel.starts_with("__MACOSX") {
            continue;
        }
        let mut buf = Vec::new();
        (&mut entry)
            .take(MAX_BYTES + 1 - total.min(MAX_BYTES))
            .read_to_end(&mut buf)
            .map_err(|e| format!("{}: {e}", rel.display()))?;
        total += buf.len() as u64;
        if total > MAX_BYTES {
            return Err(format!("the server's files exceed {} MiB", MAX_BYTES >> 20));
        }
        let mode = if entry_point.is_some_and(|ep| Path::new(ep) == rel) {
            0o755
        } else {
            entry.unix_mode().map(|m| m & 0o755).unwrap_or(0o644) | 0o600
        };
        out.push(McpFile {
            path: rel,
            mode,
            data: buf,
        });
    }
    if let Some(ep) = entry_point {
        if !out.iter().any(|f| f.path == Path::new(ep)) {
            return Err(format!("entry point {ep} is not a file of the package"));
        }
    }
    Ok(out)
}

/// Unpacks `archive` into `dir` (created, mode 0700) and makes `entry_point` executable.
pub fn unpack(archive: &[u8], dir: &Path, entry_point: Option<&str>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for f in files(archive, entry_point)? {
        let target = dir.join(&f.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&target, &f.data).map_err(|e| format!("{}: {e}", target.display()))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_and_marks_the_entry_point_executable() {
        use std::os::unix::fs::PermissionsExt;
        let zip = crate::packages::afps::build_zip(&[
            ("manifest.json", b"{}"),
            ("bin/srv", b"#!/bin/sh\n"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("srv");
        unpack(&zip, &out, Some("bin/srv")).unwrap();
        let mode = std::fs::metadata(out.join("bin/srv"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), b"{}");
        assert!(unpack(b"not a zip", &out, None).is_err());
        let err = unpack(&zip, &out, Some("bin/missing")).unwrap_err();
        assert!(err.contains("bin/missing"), "{err}");
    }
}
