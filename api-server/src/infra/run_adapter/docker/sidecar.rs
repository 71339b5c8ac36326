//! Sidecar containers (§13.2 step 2, §13.3): created on `appstrate-egress` with the control port
//! published on `SIDECAR_CONTROL_HOST`, then configured once through `POST /configure`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, UploadToContainerOptions,
};
use rand::RngCore;

use super::{Inner, EGRESS_NETWORK};

/// A started sidecar container and how the API reaches its control port.
#[derive(Clone)]
pub struct SidecarHandle {
    pub id: String,
    pub name: String,
    /// `http://<SIDECAR_CONTROL_HOST>:<published port>`
    pub control: String,
    /// The `/configure` bearer (`CONFIG_SECRET` of this container only).
    secret: String,
}

impl std::fmt::Debug for SidecarHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarHandle")
            .field("name", &self.name)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

pub const SIDECAR_MEMORY: i64 = 256 * 1024 * 1024;
pub const SIDECAR_NANO_CPUS: i64 = 500_000_000;

impl Inner {
    /// Creates and starts a sidecar named `name` with `labels` (the managed and instance labels are
    /// added), and reads its published control port. Does not wait for it to be ready.
    ///
    /// With `mcp` (a tar of the run's stdio MCP servers, `<name>/...`), the container is made from
    /// `SIDECAR_MCP_IMAGE` (a userland for the servers) and the tar is extracted into an anonymous
    /// volume at [`super::mcp::MCP_DIR`] before it starts; the root filesystem stays read-only and the
    /// volume goes with the container.
    pub(super) async fn create_sidecar(
        &self,
        name: &str,
        mut labels: HashMap<String, String>,
        mcp: Option<&super::mcp::McpSidecar<'_>>,
    ) -> Result<SidecarHandle, String> {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let secret = hex::encode(raw);
        labels.extend(self.base_labels());
        labels.insert("appstrate.role".into(), "sidecar".into());
        let host_config = HostConfig {
            memory: Some(SIDECAR_MEMORY),
            memory_swap: Some(SIDECAR_MEMORY),
            nano_cpus: Some(SIDECAR_NANO_CPUS),
            pids_limit: Some(256),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([("/tmp".into(), "size=16m".into())])),
            port_bindings: Some(HashMap::from([(
                "8080/tcp".into(),
                Some(vec![PortBinding {
                    host_ip: Some(self.settings.control_host.clone()),
                    host_port: Some(String::new()),
                }]),
            )])),
            extra_hosts: Some(vec!["host.docker.internal:host-gateway".into()]),
            network_mode: Some(EGRESS_NETWORK.into()),
            mounts: mcp.map(|m| m.mounts()),
            ..Default::default()
        };
        let image = match mcp {
            Some(_) => &self.settings.sidecar_mcp_image,
            None => &self.settings.sidecar_image,
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            // The MCP image is the agent image, whose entry point is the runner.
            entrypoint: mcp.map(|_| vec!["/appstrate-sidecar".to_string()]),
            working_dir: mcp.map(|_| super::mcp::MCP_DIR.to_string()),
            user: Some("65534:65534".into()),
            env: Some(vec![
                "PORT=8080".into(),
                format!("CONFIG_SECRET={secret}"),
                format!("LOG_LEVEL={}", self.settings.sidecar_log_level),
            ]),
            exposed_ports: Some(vec!["8080/tcp".into(), "8081/tcp".into()]),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| match mcp {
                Some(_) if super::engine::is_not_found(&e) => format!(
                    "creating sidecar {name}: the image {image} (SIDECAR_MCP_IMAGE, the sidecar of runs \
                     with stdio MCP servers) is missing: build it with `images/build.sh agent` \
                     (AGENT_USERLAND_IMAGE={image})"
                ),
                _ => format!("creating sidecar {name}: {e}"),
            })?;
        let handle = |port: String| SidecarHandle {
            id: created.id.clone(),
            name: name.to_string(),
            control: format!("http://{}:{port}", self.settings.control_host),
            secret: secret.clone(),
        };
        let result = async {
            if let Some(tar) = mcp.map(|m| m.tar) {
                self.docker
                    .upload_to_container(
                        &created.id,
                        Some(UploadToContainerOptions {
                            path: super::mcp::MCP_DIR.to_string(),
                            ..Default::default()
                        }),
                        bollard::body_full(bytes::Bytes::copy_from_slice(tar)),
                    )
                    .await
                    .map_err(|e| {
                        format!("copying the MCP servers' files into sidecar {name}: {e}")
                    })?;
            }
            self.docker
                .start_container(&created.id, None)
                .await
                .map_err(|e| format!("starting sidecar {name}: {e}"))?;
            let info = self
                .docker
                .inspect_container(&created.id, None)
                .await
                .map_err(|e| format!("inspecting sidecar {name}: {e}"))?;
            info.network_settings
                .and_then(|n| n.ports)
                .and_then(|p| p.get("8080/tcp").cloned().flatten())
                .and_then(|b| b.into_iter().find_map(|b| b.host_port))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("sidecar {name} has no published control port"))
        }
        .await;
        match result {
            Ok(port) => Ok(handle(port)),
            Err(e) => {
                self.remove_container(&created.id).await;
                Err(e)
            }
        }
    }

    /// Polls `GET /health` on the control port until it answers 200, for at most `limit`.
    pub(super) async fn wait_ready(&self, sc: &SidecarHandle, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.healthy(sc).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) async fn healthy(&self, sc: &SidecarHandle) -> bool {
        matches!(
            self.http
                .get(format!("{}/health", sc.control))
                .timeout(Duration::from_secs(1))
                .send()
                .await,
            Ok(r) if r.status() == reqwest::StatusCode::OK
        )
    }

    /// `POST /configure` with the run's configuration (3 s). The body holds secrets: never logged.
    pub(super) async fn configure(
        &self,
        sc: &SidecarHandle,
        config: &sidecar::SidecarConfig,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(config).map_err(|e| format!("encoding: {e}"))?;
        let res = self
            .http
            .post(format!("{}/configure", sc.control))
            .bearer_auth(&sc.secret)
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| format!("configuring sidecar {}: {e}", sc.name))?;
        if res.status().is_success() {
            return Ok(());
        }
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        Err(format!(
            "configuring sidecar {}: HTTP {status} {}",
            sc.name,
            text.chars().take(300).collect::<String>()
        ))
    }

    /// Force-removes a container; a missing one is fine. Errors are logged, never raised.
    pub(super) async fn remove_container(&self, id: &str) {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            if !super::engine::is_not_found(&e) {
                tracing::warn!(container = id, error = %e, "could not remove a container");
            }
        }
    }
}
