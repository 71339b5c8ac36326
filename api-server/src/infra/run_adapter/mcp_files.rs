//! Unpacking the files of a run's stdio MCP servers where the sidecar launches them (process mode:
//! `$DATA_DIR/runs/<runId>/mcp/<name>/`).

use std::io::{Cursor, Read};
use std::path::Path;

/// Largest unpacked server (the import already capped the archive at 50 MiB inflated).
const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Unpacks `archive` into `dir` (created, mode 0700) and makes `entry_point` executable. Entry names
/// were validated at import; any that would leave `dir` is skipped all the same.
pub fn unpack(archive: &[u8], dir: &Path, entry_point: Option<&str>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let mut zip =
        zip::ZipArchive::new(Cursor::new(archive)).map_err(|e| format!("archive: {e}"))?;
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("archive: {e}"))?;
        let Some(rel) = entry.enclosed_name() else {
            continue;
        };
        if entry.is_dir() || rel.starts_with("__MACOSX") {
            continue;
        }
        let target = dir.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
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
        std::fs::write(&target, &buf).map_err(|e| format!("{}: {e}", target.display()))?;
        let mode = entry.unix_mode().map(|m| m & 0o755).unwrap_or(0o644) | 0o600;
        let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode));
    }
    if let Some(ep) = entry_point {
        let path = dir.join(ep);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("entry point {ep}: {e}"))?;
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
    }
}
