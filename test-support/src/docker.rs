//! Docker-mode test support: the images (built once per test binary by `images/build.sh`), the host
//! address containers reach (the default bridge's gateway, which `host.docker.internal:host-gateway`
//! names), an engine client, and a guard that removes whatever a test server left on the engine (containers, networks, volumes).
//!
//! Tests only talk to loopback and to the bridge gateway address (a local interface of this machine);
//! every object a server creates carries `appstrate.instance=<hash of its DATA_DIR>`, which the guard
//! sweeps on drop, even when the test failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bollard::Docker;

/// The tag of the images the Docker tests use: `test` (so a release `latest` is never replaced), or
/// `APPSTRATE_TEST_IMAGE_TAG`, so that two checkouts testing on one engine do not replace each other's.
fn image_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        std::env::var("APPSTRATE_TEST_IMAGE_TAG")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "test".into())
    })
}

/// The runner image the Docker tests use (`appstrate-runner:<tag>`).
pub fn agent_image() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("appstrate-runner:{}", image_tag()))
}

/// The agent image with a userland (bash, git, Bun) the Docker tests use (`appstrate-agent:<tag>`).
pub fn agent_userland_image() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("appstrate-agent:{}", image_tag()))
}

/// The sidecar image the Docker tests use (`appstrate-sidecar:<tag>`).
pub fn sidecar_image() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("appstrate-sidecar:{}", image_tag()))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the runner, sidecar and agent images once per test binary (`PROFILE=image-dev TAG=test
/// images/build.sh runner sidecar agent`), unless `APPSTRATE_TEST_IMAGES_BUILT=1` says scripts/test.sh
/// did.
pub fn ensure_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        if std::env::var("APPSTRATE_TEST_IMAGES_BUILT").is_ok_and(|v| v == "1") {
            return Ok(());
        }
        let root = repo_root();
        let status = Command::new("bash")
            .arg(root.join("images/build.sh"))
            .args(["runner", "sidecar", "agent"])
            .env("PROFILE", "image-dev")
            .env("AGENT_IMAGE", agent_image())
            .env("SIDECAR_IMAGE", sidecar_image())
            .env("AGENT_USERLAND_IMAGE", agent_userland_image())
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run images/build.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("images/build.sh failed ({status})"))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The static binary `name` that `images/build.sh` built in the `image-dev` profile.
pub fn static_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("x86_64-unknown-linux-gnu/image-dev").join(name)
}

/// Removes the images named here when dropped (also on panic).
pub struct ImageSweep(pub Vec<String>);

impl Drop for ImageSweep {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f"])
            .args(&self.0)
            .output();
    }
}

/// An engine client on the default socket.
pub async fn client() -> Docker {
    Docker::connect_with_unix("/var/run/docker.sock", 120, bollard::API_DEFAULT_VERSION)
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker engine answers")
}

/// The gateway address of the default `bridge` network: what `host-gateway` resolves to inside
/// containers, and a local address of this machine that test servers can listen on.
pub async fn bridge_gateway() -> String {
    let docker = client().await;
    let net = docker
        .inspect_network("bridge", None)
        .await
        .expect("the default bridge network");
    let iface = net
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        .unwrap_or_else(|| "docker0".to_string());
    // A daemon's first start can leave the default bridge's IPAM config without a gateway
    // (seen with Debian's docker.io 20.10); the bridge interface's own address is the gateway.
    net.ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway))
        .filter(|g| !g.is_empty())
        .or_else(|| interface_ipv4(&iface))
        .unwrap_or_else(|| {
            panic!("the bridge network has no gateway and {iface} has no IPv4 address")
        })
}

/// The first IPv4 address of the network interface `name`, from getifaddrs(3).
fn interface_ipv4(name: &str) -> Option<String> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which is still alive.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if ifname.to_bytes() == name.as_bytes() && family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string());
            break;
        }
    }
    // SAFETY: `addrs` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found
}

/// The `appstrate.instance` label of a server whose data directory is `data_dir`.
pub fn instance_of(data_dir: &Path) -> String {
    appstrate::infra::run_adapter::docker::instance_id(data_dir)
}

/// Removes every container, network and volume labelled with `instance` when dropped (also on panic).
pub struct Sweep {
    pub instance: String,
}

impl Sweep {
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
        }
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let filter = format!("label=appstrate.instance={}", self.instance);
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
        let nets = Command::new("docker")
            .args(["network", "ls", "-q", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let nets: Vec<&str> = nets.split_whitespace().collect();
        if !nets.is_empty() {
            let _ = Command::new("docker")
                .args(["network", "rm"])
                .args(&nets)
                .output();
        }
        let volumes = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let volumes: Vec<&str> = volumes.split_whitespace().collect();
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
    }
}

/// Containers (name → id) carrying every `key=value` label of `labels`, running or not.
pub async fn containers(docker: &Docker, labels: &[(&str, &str)]) -> HashMap<String, String> {
    let filters = HashMap::from([(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )]);
    docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.first()?.trim_start_matches('/').to_string();
            Some((name, c.id?))
        })
        .collect()
}

/// Names of the networks carrying every `key=value` label of `labels`.
pub async fn networks(docker: &Docker, labels: &[(&str, &str)]) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )]);
    docker
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect()
}

/// `docker exec <container> <cmd...>`: its stdout (the CLI is part of Debian's docker.io).
pub fn exec(container: &str, cmd: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(cmd)
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "docker exec {container} {cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
