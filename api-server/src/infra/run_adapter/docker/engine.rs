//! The Docker Engine connection: connecting to `DOCKER_SOCKET` with errors that say what to do, images
//! that are never pulled (imported from static binaries when missing, §13.4), and the shared networks.

use std::collections::HashMap;
use std::path::Path;

use bollard::errors::Error as DockerError;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptions;
use bollard::Docker;
use futures::StreamExt;

/// The troubleshooting steps every engine error ends with (the seed's "Agents fail to run").
pub const TROUBLESHOOTING: &str = "Troubleshooting: (1) check that the Docker daemon runs (`docker info`); \
(2) check Docker socket permissions: the Appstrate process (or container) must reach the socket named by \
DOCKER_SOCKET (default /var/run/docker.sock); with rootless Docker, map the socket explicitly and add the \
user to the `docker` group; (3) verify the images exist locally: `docker images | grep appstrate`; if \
missing, build them with `images/build.sh` (no image is ever pulled); (4) or unset RUN_ADAPTER to run \
agents as local processes.";

pub fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub fn is_conflict(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// The unix socket path of `DOCKER_SOCKET` (`None` for `tcp://`).
fn unix_path(socket: &str) -> Option<&str> {
    if socket.starts_with("tcp://") || socket.starts_with("http://") {
        None
    } else {
        Some(socket.strip_prefix("unix://").unwrap_or(socket))
    }
}

/// Connects to the engine at `socket` and negotiates the API version (Debian's docker.io speaks 1.41).
/// Errors name `DOCKER_SOCKET`, say what went wrong (missing socket, permissions, no daemon) and end
/// with [`TROUBLESHOOTING`].
pub async fn connect(socket: &str) -> Result<Docker, String> {
    let fail = |what: String| format!("{what}. {TROUBLESHOOTING}");
    let docker = match unix_path(socket) {
        Some(path) => {
            // Probe the socket first: hyper's errors do not tell a missing socket from a refused one.
            if let Err(e) = tokio::net::UnixStream::connect(path).await {
                return Err(fail(socket_error(path, &e)));
            }
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        }
        None => {
            let addr = socket.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&addr, 120, bollard::API_DEFAULT_VERSION)
        }
    }
    .map_err(|e| fail(format!("cannot use the Docker engine at {socket}: {e}")))?;
    let docker = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        docker.negotiate_version(),
    )
    .await
    .map_err(|_| {
        fail(format!(
            "the Docker engine at {socket} did not answer within 10 s"
        ))
    })?
    .map_err(|e| fail(format!("the Docker engine at {socket} did not answer: {e}")))?;
    docker.ping().await.map_err(|e| {
        fail(format!(
            "the Docker engine at {socket} failed its ping: {e}"
        ))
    })?;
    Ok(docker)
}

/// What a failed connection to the unix socket `path` means, in words.
fn socket_error(path: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "the Docker socket {path} does not exist: is the Docker daemon running, and is DOCKER_SOCKET \
             right?"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on the Docker socket {path}: this process (uid {}) may not use it",
            unsafe { libc::geteuid() }
        ),
        std::io::ErrorKind::ConnectionRefused => format!(
            "nothing answers on the Docker socket {path} (connection refused): the daemon is not running"
        ),
        _ => format!("cannot connect to the Docker socket {path}: {e}"),
    }
}

/// Whether `path` is a statically linked ELF executable (no `PT_INTERP` program header): only such a
/// binary works alone in an image.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        match bytes.get(at..at + 4) {
            Some(t) => u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3, // PT_INTERP
            None => true,
        }
    })
}

/// A tar archive holding one executable file at the root.
pub fn tar_with_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2048);
    append_tar(&mut out, name, 0o755, Some(data)).expect("a short name");
    finish_tar(&mut out);
    out
}

/// Appends one ustar entry owned by root: a regular file with `data`, or a directory (`None`). A
/// name longer than 100 bytes is split into the ustar prefix at a `/`.
pub fn append_tar(
    out: &mut Vec<u8>,
    name: &str,
    mode: u32,
    data: Option<&[u8]>,
) -> Result<(), String> {
    let (prefix, base) = if name.len() <= 100 {
        ("", name)
    } else {
        name.char_indices()
            .filter(|(i, c)| *c == '/' && *i <= 155 && name.len() - i - 1 <= 100)
            .map(|(i, _)| (&name[..i], &name[i + 1..]))
            .next()
            .ok_or_else(|| format!("{name}: the path is too long for a tar entry"))?
    };
    let mut header = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut header, 0, base.as_bytes());
    put(
        &mut header,
        100,
        format!("{:07o}\0", mode & 0o7777).as_bytes(),
    );
    put(&mut header, 108, b"0000000\0");
    put(&mut header, 116, b"0000000\0");
    let size = data.map_or(0, |d| d.len());
    put(&mut header, 124, format!("{size:011o}\0").as_bytes());
    put(&mut header, 136, b"00000000000\0");
    put(&mut header, 148, b"        ");
    header[156] = if data.is_some() { b'0' } else { b'5' };
    put(&mut header, 257, b"ustar\0");
    put(&mut header, 263, b"00");
    put(&mut header, 345, prefix.as_bytes());
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&header);
    if let Some(d) = data {
        out.extend_from_slice(d);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    Ok(())
}

/// The two zero blocks that end a tar archive.
pub fn finish_tar(out: &mut Vec<u8>) {
    out.resize(out.len() + 1024, 0);
}

/// Makes sure `image` exists on the engine. A missing image is imported from `binary` (a static
/// executable) as a one-file image (§13.4); nothing is pulled.
pub async fn ensure_image(
    docker: &Docker,
    image: &str,
    binary: Option<&Path>,
    file: &str,
    var: &str,
) -> Result<(), String> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(format!("cannot inspect image {image}: {e}")),
    }
    let missing = |why: &str| {
        format!(
            "the image {image} is missing from the Docker engine and {why}. Build the images with \
             `images/build.sh` (check with `docker images | grep appstrate`), or point {var} at a \
             statically linked {file} so that the server imports it. {TROUBLESHOOTING}"
        )
    };
    let Some(bin) = binary else {
        return Err(missing(&format!("no {file} binary was found to import")));
    };
    if !is_static_elf(bin) {
        return Err(missing(&format!(
            "{} is not a statically linked executable",
            bin.display()
        )));
    }
    let data = std::fs::read(bin).map_err(|e| missing(&format!("{}: {e}", bin.display())))?;
    let (repo, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    };
    tracing::info!(image, binary = %bin.display(), "importing a missing image from a static binary");
    let opts = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo),
        tag: Some(tag),
        changes: vec![
            format!("ENTRYPOINT [\"/{file}\"]"),
            "USER 65534:65534".into(),
        ],
        ..Default::default()
    };
    let body = bollard::body_full(tar_with_file(file, &data).into());
    let mut stream = docker.create_image(Some(opts), Some(body), None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| format!("importing {image}: {e}"))?;
    }
    docker
        .inspect_image(image)
        .await
        .map(|_| ())
        .map_err(|e| format!("importing {image}: {e}"))
}

/// Creates the bridge network `name` when missing (idempotent; a concurrent creation is fine).
pub async fn ensure_network(
    docker: &Docker,
    name: &str,
    internal: bool,
    labels: HashMap<String, String>,
) -> Result<(), DockerError> {
    match docker.inspect_network(name, None).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                internal: Some(internal),
                labels: Some(labels),
                ..Default::default()
            };
            match docker.create_network(req).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(e),
            }
        }
        // Two networks of that name already exist (see below): keep one.
        Err(e) if is_ambiguous(&e) => {}
        Err(e) => return Err(e),
    }
    // Engines before API 1.44 do not refuse a second network of the same name: two servers booting
    // together can both create one, after which every use of the name is "ambiguous". All of them
    // keep the network with the smallest id and remove the others, which nothing uses yet.
    dedupe_networks(docker, name).await
}

/// A Docker error saying that a name matches more than one object.
fn is_ambiguous(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError { status_code: 400, message } if message.contains("ambiguous")
    )
}

/// Removes every network named exactly `name` but the one with the smallest id.
async fn dedupe_networks(docker: &Docker, name: &str) -> Result<(), DockerError> {
    let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await?;
    // The engine's name filter matches substrings.
    let mut ids: Vec<String> = networks
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(name))
        .filter_map(|n| n.id)
        .collect();
    ids.sort();
    for id in ids.iter().skip(1) {
        match docker.remove_network(id).await {
            Ok(()) => tracing::info!(network = name, id = %id, "removed a duplicate network"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two servers booting together on an engine before API 1.44 can each create the shared network;
    /// the next `ensure_network` leaves exactly one of them, so its name resolves again.
    #[tokio::test]
    async fn duplicate_networks_of_one_name_are_reduced_to_one() {
        if !test_support::services::docker_available() {
            return;
        }
        let docker = connect("unix:///var/run/docker.sock")
            .await
            .expect("engine");
        let name = format!("appstrate-test-dedupe-{}", std::process::id());
        let create = || NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(true),
            ..Default::default()
        };
        let first = docker.create_network(create()).await;
        let second = docker.create_network(create()).await;
        let count = |docker: Docker, name: String| async move {
            let filters = HashMap::from([("name".to_string(), vec![name.clone()])]);
            docker
                .list_networks(Some(ListNetworksOptions {
                    filters: Some(filters),
                }))
                .await
                .unwrap()
                .into_iter()
                .filter(|n| n.name.as_deref() == Some(name.as_str()))
                .count()
        };
        let before = count(docker.clone(), name.clone()).await;
        let result = ensure_network(&docker, &name, true, HashMap::new()).await;
        let after = count(docker.clone(), name.clone()).await;
        let inspect = docker.inspect_network(&name, None).await;
        let _ = docker.remove_network(&name).await;
        first.expect("first network");
        if second.is_err() {
            // An engine that refuses duplicate names (API 1.44+): nothing to reduce.
            assert_eq!(before, 1);
        } else {
            assert_eq!(before, 2, "the engine accepted a duplicate name");
        }
        result.expect("ensure_network resolves the duplicate");
        assert_eq!(after, 1);
        inspect.expect("the name resolves to one network again");
    }

    #[test]
    fn a_tar_holds_one_executable() {
        let tar = tar_with_file("appstrate-runner", b"hello");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..16], b"appstrate-runner");
        assert_eq!(&tar[257..262], b"ustar");
        assert_eq!(&tar[512..517], b"hello");
        // The checksum covers the header with the checksum field read as spaces.
        let mut h = tar[..512].to_vec();
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        h[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, h.iter().map(|b| *b as u32).sum::<u32>());
    }

    #[test]
    fn dynamic_executables_are_not_static() {
        // The test binary itself is dynamically linked (it has an interpreter).
        let exe = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&exe));
        assert!(!is_static_elf(Path::new("/nonexistent")));
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_with_the_troubleshooting_steps() {
        let err = connect("/nonexistent/docker.sock").await.unwrap_err();
        assert!(
            err.contains("/nonexistent/docker.sock does not exist"),
            "{err}"
        );
        assert!(err.contains("DOCKER_SOCKET"), "{err}");
        assert!(err.contains("docker images | grep appstrate"), "{err}");
    }

    #[tokio::test]
    async fn a_dead_socket_says_the_daemon_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = connect(path.to_str().unwrap()).await.unwrap_err();
        assert!(err.contains("connection refused"), "{err}");
        assert!(err.contains("the daemon is not running"), "{err}");
    }

    #[test]
    fn permission_problems_are_named() {
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let msg = socket_error("/var/run/docker.sock", &e);
        assert!(
            msg.starts_with("permission denied on the Docker socket /var/run/docker.sock"),
            "{msg}"
        );
    }
}
