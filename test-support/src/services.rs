//! The real services of the promoted tiers, as `scripts/services.sh` provides them:
//! - PostgreSQL: [`postgres_database`] creates a fresh, empty database per call in the cluster at
//!   `TEST_DATABASE_URL`.
//! - Redis: [`RedisServer::start`] runs a private `redis-server` (from `REDIS_SERVER_BIN`) on a free
//!   loopback port, with an append-only file so that [`RedisServer::restart`] keeps committed data.
//! - S3: [`s3_bucket`] names a fresh bucket on the server at `TEST_S3_ENDPOINT` (moto), not yet created.
//! - Docker: [`docker_available`].
//!
//! When a service is missing, the helpers return `None` and the test is skipped with a message, except
//! under `CI=true` (or `APPSTRATE_REQUIRE_SERVICES=1`), where a missing service fails the test: CI must
//! never pass by skipping.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether missing services fail tests instead of skipping them.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("APPSTRATE_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips (or, under CI, fails) a test whose service is missing.
pub fn missing(what: &str, var: &str) {
    if required() {
        panic!("{what} is required (CI=true) but {var} is not set: run the tests through scripts/test.sh");
    }
    eprintln!("SKIP: {what} not available ({var} unset); scripts/test.sh starts it");
}

/// `let url = require!(services::postgres_database().await);` returns from the test when absent.
#[macro_export]
macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// A free loopback TCP port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A URL to a new, empty PostgreSQL database of its own.
pub async fn postgres_database() -> Option<String> {
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        missing("PostgreSQL", "TEST_DATABASE_URL");
        return None;
    };
    Some(create_database(&admin).await)
}

/// Creates a database named `t_<uuid>` next to the one `admin_url` points at and returns its URL.
pub async fn create_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach TEST_DATABASE_URL: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let mut url = url::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A private redis-server on a loopback port. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub url: String,
    /// With [`RedisServer::start_tls`]: the PEM file of the CA that signed the server certificate.
    pub ca_cert: Option<PathBuf>,
    bin: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A fresh CA and a server certificate it signs for `localhost` and `127.0.0.1`, as PEM strings:
/// `(ca_cert, server_cert, server_key)`.
pub fn test_tls_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Appstrate test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server parameters");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

impl RedisServer {
    /// Starts a server, or `None` (skip) when `REDIS_SERVER_BIN` is unset and no `redis-server` is on PATH.
    pub fn start() -> Option<RedisServer> {
        Self::start_inner(false)
    }

    /// Starts a server that only speaks TLS (`rediss://localhost:<port>`), with a certificate signed by
    /// a CA made for this server; [`RedisServer::ca_cert`] is that CA's PEM file. Clients need no
    /// certificate of their own.
    pub fn start_tls() -> Option<RedisServer> {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Option<RedisServer> {
        let bin = match std::env::var("REDIS_SERVER_BIN") {
            Ok(b) => b,
            Err(_) => match which("redis-server") {
                Some(b) => b.to_string_lossy().into_owned(),
                None => {
                    missing("redis-server", "REDIS_SERVER_BIN");
                    return None;
                }
            },
        };
        let port = free_port();
        let mut server = RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            ca_cert: None,
            bin,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        };
        if tls {
            let (ca, cert, key) = test_tls_certificates();
            let dir = server.dir.path();
            for (name, pem) in [("ca.pem", &ca), ("server.pem", &cert), ("server.key", &key)] {
                std::fs::write(dir.join(name), pem).expect("writing a test certificate");
            }
            server.ca_cert = Some(dir.join("ca.pem"));
            server.url = format!("rediss://localhost:{port}");
        }
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1"]);
        if self.ca_cert.is_some() {
            let dir = self.dir.path();
            cmd.args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        let child = cmd
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args([
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port and data directory (append-only file).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where an S3-compatible server listens, and a fresh bucket name on it (not created).
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
}

impl S3Target {
    /// The environment a server needs to use this bucket (credentials come from the AWS_* variables
    /// that scripts/services.sh exports).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_BUCKET", self.bucket.clone()),
            ("S3_REGION", self.region.clone()),
            ("S3_ENDPOINT", self.endpoint.clone()),
        ]
    }
}

pub fn s3_bucket() -> Option<S3Target> {
    let Ok(endpoint) = std::env::var("TEST_S3_ENDPOINT") else {
        missing("an S3-compatible server", "TEST_S3_ENDPOINT");
        return None;
    };
    Some(S3Target {
        endpoint,
        bucket: format!("appstrate-test-{}", uuid::Uuid::new_v4().simple()),
        region: "us-east-1".into(),
    })
}

/// Whether a Docker engine answers (scripts/services.sh starts dockerd and sets DOCKER_HOST_AVAILABLE).
pub fn docker_available() -> bool {
    if std::env::var("DOCKER_HOST_AVAILABLE").is_ok_and(|v| v == "1") {
        return true;
    }
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing("a Docker engine", "DOCKER_HOST_AVAILABLE");
    }
    ok
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}
