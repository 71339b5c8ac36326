//! Stdio MCP servers in Docker mode: their package files go into the run's sidecar container (under
//! [`MCP_DIR`]), next to the credentials the sidecar holds, never into the agent container.

use std::collections::BTreeSet;

use super::engine::{append_tar, finish_tar};
use crate::infra::run_adapter::{mcp_files, WorkloadSpec};

/// Where the servers' files are in the sidecar container: `/mcp/<name>/`.
pub const MCP_DIR: &str = "/mcp";

/// Whether the run has a stdio MCP server (one the sidecar launches).
pub fn has_stdio(spec: &WorkloadSpec) -> bool {
    spec.sidecar.mcp_servers.iter().any(|s| s.command.is_some())
}

/// The tar of every server's files (`<name>/<path>`, owned by root, readable by the sidecar's user),
/// and each server's `dir` set to `/mcp/<name>` in the sidecar configuration.
pub fn prepare(spec: &mut WorkloadSpec) -> Result<Vec<u8>, String> {
    let mut tar = Vec::new();
    for files in &spec.mcp_files {
        let list = mcp_files::files(&files.archive, files.entry_point.as_deref())
            .map_err(|e| format!("MCP server {}: {e}", files.name))?;
        let mut dirs = BTreeSet::from([files.name.clone()]);
        for f in &list {
            let mut parent = f.path.parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(format!("{}/{}", files.name, p.to_string_lossy()));
                parent = p.parent();
            }
        }
        // BTreeSet order puts a directory before the ones under it.
        for d in &dirs {
            append_tar(&mut tar, &format!("{d}/"), 0o755, None)?;
        }
        for f in &list {
            let name = format!("{}/{}", files.name, f.path.to_string_lossy());
            append_tar(&mut tar, &name, f.mode | 0o444, Some(&f.data))?;
        }
        if let Some(s) = spec
            .sidecar
            .mcp_servers
            .iter_mut()
            .find(|s| s.name == files.name)
        {
            s.dir = Some(format!("{MCP_DIR}/{}", files.name));
        }
    }
    finish_tar(&mut tar);
    Ok(tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_use_the_ustar_prefix_and_too_long_ones_are_refused() {
        let mut tar = Vec::new();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        append_tar(&mut tar, &long, 0o644, Some(b"x")).unwrap();
        assert_eq!(&tar[..90], "f".repeat(90).as_bytes());
        assert_eq!(&tar[345..465], "d".repeat(120).as_bytes());
        assert_eq!(tar[156], b'0');
        let err = append_tar(&mut tar, &"x".repeat(300), 0o644, None).unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }
}
