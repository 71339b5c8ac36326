//! Stdio MCP servers in Docker mode: their package files go into the run's sidecar container (under
//! [`MCP_DIR`]), next to the credentials the sidecar holds, never into the agent container.

use std::collections::{BTreeSet, HashMap};

use bollard::models::{Mount, MountType, MountVolumeOptions, VolumeCreateRequest};
use bollard::query_parameters::{ListVolumesOptions, RemoveVolumeOptions};

use super::engine::{append_tar, finish_tar};
use super::{Inner, INSTANCE_LABEL, MANAGED_LABEL, RUN_LABEL};
use crate::infra::run_adapter::{mcp_files, WorkloadSpec};

/// Where the servers' files are in the sidecar container: `/mcp/<name>/`.
pub const MCP_DIR: &str = "/mcp";
/// Where the run workspace is, in the agent container and (when a server shares it) in the sidecar's.
pub const WORKSPACE_DIR: &str = "/workspace";
/// The prefix of a run's shared workspace volume: `appstrate-ws-{runId}`.
pub const WORKSPACE_VOLUME_PREFIX: &str = "appstrate-ws-";

/// What the sidecar of a run with stdio MCP servers gets beyond an ordinary one.
pub struct McpSidecar<'a> {
    /// The servers' files, extracted under [`MCP_DIR`] before the sidecar starts.
    pub tar: &'a [u8],
    /// The run's workspace volume, when a server shares the workspace; read-only when every server
    /// sharing it asks for `access: read-only`.
    pub workspace: Option<(&'a str, bool)>,
}

impl McpSidecar<'_> {
    /// An anonymous volume for the files (the root filesystem stays read-only, and the engine only
    /// extracts archives into volumes then), and the workspace volume when shared.
    pub fn mounts(&self) -> Vec<Mount> {
        let mut m = vec![Mount {
            target: Some(MCP_DIR.into()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }];
        if let Some((name, read_only)) = self.workspace {
            m.push(workspace_mount(name, read_only));
        }
        m
    }
}

/// The run's workspace volume mounted at [`WORKSPACE_DIR`].
pub fn workspace_mount(volume: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(WORKSPACE_DIR.into()),
        source: Some(volume.into()),
        typ: Some(MountType::VOLUME),
        read_only: Some(read_only),
        // The image's own directory must not be copied in (nor its owner and mode applied).
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether a stdio server shares the run workspace, and whether every one that does only reads it.
pub fn shared_workspace(spec: &WorkloadSpec) -> Option<bool> {
    let sharing: Vec<_> = spec
        .sidecar
        .mcp_servers
        .iter()
        .filter(|s| s.command.is_some() && s.share_workspace)
        .collect();
    (!sharing.is_empty()).then(|| {
        sharing
            .iter()
            .all(|s| s.workspace_access.as_deref() == Some("read-only"))
    })
}

impl Inner {
    /// A run's shared workspace: a tmpfs volume (`WORKSPACE_TMPFS_SIZE_MB`, owned by 65534, mode 0700),
    /// the same memory-backed workspace the agent otherwise gets, mounted in both containers.
    pub(super) async fn create_workspace_volume(&self, run_id: &str) -> Result<String, String> {
        let name = format!("{WORKSPACE_VOLUME_PREFIX}{run_id}");
        let mut labels = self.base_labels();
        labels.insert(RUN_LABEL.into(), run_id.into());
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                driver: Some("local".into()),
                driver_opts: Some(HashMap::from([
                    ("type".to_string(), "tmpfs".to_string()),
                    ("device".to_string(), "tmpfs".to_string()),
                    (
                        "o".to_string(),
                        format!(
                            "size={}m,uid=65534,gid=65534,mode=0700",
                            self.settings.workspace_tmpfs_mb
                        ),
                    ),
                ])),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the workspace volume {name}: {e}"))?;
        Ok(name)
    }

    /// Removes a volume; a missing one is fine. Errors are logged, never raised.
    pub(super) async fn remove_volume(&self, name: &str) {
        let opts = RemoveVolumeOptions { force: true };
        if let Err(e) = self.docker.remove_volume(name, Some(opts)).await {
            if !super::engine::is_not_found(&e) {
                tracing::warn!(volume = name, error = %e, "could not remove a volume");
            }
        }
    }

    /// Removes this instance's workspace volumes (after its containers).
    pub(super) async fn sweep_volumes(&self) {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{MANAGED_LABEL}=true"),
                format!("{INSTANCE_LABEL}={}", self.settings.instance),
            ],
        )]);
        let list = match self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
        {
            Ok(l) => l.volumes.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list workspace volumes");
                return;
            }
        };
        for v in list {
            if v.name.starts_with(WORKSPACE_VOLUME_PREFIX) {
                self.remove_volume(&v.name).await;
            }
        }
    }
}

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
