//! `spawn_app()`: a real API server in-process on `127.0.0.1:0`, with its own temporary data directory
//! and SQLite file, bootstrapped with an organization, an admin token and an API key.

use std::collections::HashMap;
use std::path::PathBuf;

use appstrate::config::Config;
use appstrate::startup::{bind, Application};

pub const TEST_ENCRYPTION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A running test server.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub org_id: String,
    pub app_id: String,
    pub admin_token: String,
    pub api_key: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    /// The environment the server was configured from (for restarts).
    pub env: HashMap<String, String>,
    app: Option<Application>,
    _dir: Option<tempfile::TempDir>,
}

/// The boot secrets and paths every test server gets, under `dir`.
pub fn base_env(dir: &std::path::Path) -> HashMap<String, String> {
    let system_packages = std::env::var("APPSTRATE_TEST_SYSTEM_PACKAGES")
        .unwrap_or_else(|_| dir.join("system-packages").to_string_lossy().into_owned());
    [
        ("BETTER_AUTH_SECRET", "test-better-auth-secret".to_string()),
        (
            "UPLOAD_SIGNING_SECRET",
            "test-upload-signing-secret".to_string(),
        ),
        ("CONNECTION_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY.to_string()),
        ("DATA_DIR", dir.join("data").to_string_lossy().into_owned()),
        (
            "FS_STORAGE_PATH",
            dir.join("data/storage").to_string_lossy().into_owned(),
        ),
        ("SYSTEM_PACKAGES_DIR", system_packages),
        ("APP_ENV", "test".to_string()),
        ("RUNNER_BIN", runner_bin().to_string_lossy().into_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The path of the `appstrate-runner` binary of this workspace's target directory, building it first
/// when a test runs before it exists (e.g. `cargo test -p api-server`).
pub fn runner_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable");
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe
            .parent()
            .and_then(|d| {
                if d.ends_with("deps") {
                    d.parent()
                } else {
                    Some(d)
                }
            })
            .expect("target directory")
            .to_path_buf();
        let bin = dir.join("appstrate-runner");
        if bin.is_file() {
            return bin;
        }
        // A separate target directory: the running `cargo test` may still hold the lock of its own.
        let own = dir.join("runner-for-tests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "runner",
                "--bin",
                "appstrate-runner",
                "--target-dir",
            ])
            .arg(&own)
            .status()
            .expect("cargo build -p runner");
        assert!(status.success(), "building appstrate-runner failed");
        let bin = own.join("debug/appstrate-runner");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// The repository's `system-packages/` directory.
pub fn system_packages_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../system-packages")
}

/// The database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Tier 0: a SQLite file in the server's temporary data directory.
    Sqlite,
    /// Tier 1: a fresh database of its own in the PostgreSQL cluster at `TEST_DATABASE_URL`.
    Postgres,
}

/// A bootstrapped server on `backend`, or `None` (the test is skipped; under CI it fails) when
/// PostgreSQL is asked for and not available. Use with `test_support::require!`.
pub async fn spawn_app_on(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
    match backend {
        Backend::Sqlite => Some(spawn_app_with(extra).await),
        Backend::Postgres => {
            let url = crate::services::postgres_database().await?;
            let mut env: Vec<(&str, &str)> = vec![("DATABASE_URL", url.as_str())];
            env.extend_from_slice(extra);
            Some(spawn_app_with(&env).await)
        }
    }
}

/// A server on `backend` without any organization (a fresh installation, claimed by its first sign-up),
/// or `None` when PostgreSQL is asked for and not available. Use with `test_support::require!`.
pub async fn spawn_fresh_on(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
    match backend {
        Backend::Sqlite => Some(start_with(extra).await),
        Backend::Postgres => {
            let url = crate::services::postgres_database().await?;
            let mut env: Vec<(&str, &str)> = vec![("DATABASE_URL", url.as_str())];
            env.extend_from_slice(extra);
            Some(start_with(&env).await)
        }
    }
}

/// A server with the default test environment plus `extra`, without bootstrapping an organization
/// (e.g. several replicas booting together on one database).
pub async fn start_with(extra: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut env = base_env(dir.path());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    start(env, Some(dir)).await
}

/// A server with the default test environment.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A server whose environment is the default test environment plus `extra`.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut env = base_env(dir.path());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let mut app = start(env, Some(dir)).await;
    let db = app.app.as_ref().expect("running").state.infra.db.clone();
    let boot = appstrate::cli::bootstrap_json(db.as_ref(), "Default", "Default")
        .await
        .expect("bootstrap");
    app.org_id = boot["orgId"].as_str().unwrap().to_string();
    app.app_id = boot["applicationId"].as_str().unwrap().to_string();
    app.admin_token = boot["adminToken"].as_str().unwrap().to_string();
    app.api_key = boot["apiKey"].as_str().unwrap().to_string();
    app
}

/// Server logs go to the test's captured output (shown for failing tests only): warnings and errors by
/// default, or the filter in `APPSTRATE_TEST_LOG` (e.g. `debug`).
pub fn init_test_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("APPSTRATE_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

async fn start(mut env: HashMap<String, String>, dir: Option<tempfile::TempDir>) -> TestApp {
    init_test_logs();
    let port: u16 = env.get("PORT").and_then(|p| p.parse().ok()).unwrap_or(0);
    // `HOST` (default loopback) is the listen address; Docker tests use the bridge gateway.
    let host = env
        .get("HOST")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let listener = bind(&host, port).await.expect("bind the test address");
    let port = listener.local_addr().unwrap().port();
    let address = format!("http://{host}:{port}");
    // A test may name its own public URL (e.g. https, to see `Secure` cookies); by default it is the
    // listen address.
    if env.get("APP_URL").is_none_or(|u| u.is_empty()) {
        env.insert("APP_URL".into(), address.clone());
    }
    env.insert("PORT".into(), port.to_string());
    let config = Config::from_map(&env).unwrap_or_else(|errors| {
        panic!(
            "test configuration is invalid: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    let data_dir = config.data_dir.clone();
    let app = Application::start(config, listener)
        .await
        .expect("server boots");
    TestApp {
        address,
        port,
        org_id: String::new(),
        app_id: String::new(),
        admin_token: String::new(),
        api_key: String::new(),
        data_dir,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        env,
        app: Some(app),
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with the API key.
    pub fn key(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.api_key)
    }

    /// A request with the admin token and the default application header.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token)
            .header("X-App-Id", &self.app_id)
    }

    pub fn state(&self) -> &appstrate::state::AppState {
        &self.app.as_ref().expect("running").state
    }

    /// Graceful shutdown, then a fresh boot on the same data directory and port.
    pub async fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            assert!(app.shutdown().await, "graceful shutdown");
        }
        let fresh = start(self.env.clone(), None).await;
        self.app = fresh.app;
    }

    /// Graceful shutdown, keeping the data directory; [`TestApp::start_again`] boots it again.
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            assert!(app.shutdown().await, "graceful shutdown");
        }
    }

    /// Boots a stopped server again on the same data directory and port, with its environment changed:
    /// `set` added or replaced, `unset` removed (e.g. promoting a deployment by adding variables).
    pub async fn start_again(&mut self, set: &[(&str, &str)], unset: &[&str]) {
        assert!(self.app.is_none(), "stop() the server first");
        for k in unset {
            self.env.remove(*k);
        }
        for (k, v) in set {
            self.env.insert(k.to_string(), v.to_string());
        }
        let fresh = start(self.env.clone(), None).await;
        self.app = fresh.app;
    }

    /// [`TestApp::stop`] then [`TestApp::start_again`] with the changed environment.
    pub async fn restart_with(&mut self, set: &[(&str, &str)], unset: &[&str]) {
        self.stop().await;
        self.start_again(set, unset).await;
    }

    /// A second server sharing this one's database, Redis and object storage (the environment minus the
    /// port and data directory, plus `extra`), with the same organization, keys and tokens: a replica.
    pub async fn sibling(&self, extra: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut env = self.env.clone();
        env.remove("PORT");
        env.remove("APP_URL");
        env.insert(
            "DATA_DIR".into(),
            dir.path().join("data").to_string_lossy().into_owned(),
        );
        if !self.env.contains_key("DATABASE_URL") {
            panic!("a sibling shares the database: start the first server with DATABASE_URL");
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let mut app = start(env, Some(dir)).await;
        app.org_id = self.org_id.clone();
        app.app_id = self.app_id.clone();
        app.admin_token = self.admin_token.clone();
        app.api_key = self.api_key.clone();
        app
    }

    pub async fn shutdown(mut self) -> bool {
        match self.app.take() {
            Some(app) => app.shutdown().await,
            None => true,
        }
    }
}
