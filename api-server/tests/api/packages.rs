//! AFPS packages, system-package sync, connections and the agents list (§9.3, §16, acceptance 9, 10,
//! 33–35), plus the functions the runs pipeline calls (resolve, bundle, integrations).

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use appstrate::http::auth::{Auth, Credential};
use appstrate::packages;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Row, SqlitePool};
use test_support::{spawn_app, spawn_app_on, spawn_app_with, Backend, TestApp};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn system_dir() -> String {
    repo_root()
        .join("system-packages")
        .to_string_lossy()
        .into_owned()
}

async fn spawn_with_system() -> TestApp {
    spawn_app_with(&[("SYSTEM_PACKAGES_DIR", &system_dir())]).await
}

async fn spawn_with_system_on(backend: Backend) -> Option<TestApp> {
    spawn_app_on(backend, &[("SYSTEM_PACKAGES_DIR", &system_dir())]).await
}

/// A deflated ZIP of `(name, bytes)` entries.
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(content).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn manifest(name: &str, version: &str) -> Value {
    json!({
        "schema_version": "0.1",
        "name": name,
        "version": version,
        "type": "agent",
        "display_name": "Test agent",
        "description": "An agent used by the tests",
        "input": {"schema": {"type": "object", "properties": {"topic": {"type": "string"}}}}
    })
}

fn agent_zip(m: &Value, prompt: &str) -> Vec<u8> {
    let m = serde_json::to_vec(m).unwrap();
    zip_of(&[("manifest.json", &m), ("prompt.md", prompt.as_bytes())])
}

async fn import(app: &TestApp, bytes: Vec<u8>) -> reqwest::Response {
    app.key(Method::POST, "/api/packages/import")
        .header("Content-Type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Imports with one of `keys` in turn: imports are limited to 10 per minute per key.
struct Importer<'a> {
    app: &'a TestApp,
    keys: Vec<String>,
    n: usize,
}

impl<'a> Importer<'a> {
    async fn new(app: &'a TestApp, count: usize) -> Importer<'a> {
        let mut keys = Vec::new();
        for i in 0..count {
            let b = json_of(
                app.admin(Method::POST, "/api/api-keys")
                    .json(&json!({"name": format!("importer {i}")}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            keys.push(b["key"].as_str().expect("api key").to_string());
        }
        Importer { app, keys, n: 0 }
    }

    async fn import(&mut self, bytes: Vec<u8>) -> reqwest::Response {
        let key = &self.keys[(self.n / 9) % self.keys.len()];
        self.n += 1;
        self.app
            .client
            .post(self.app.url("/api/packages/import"))
            .bearer_auth(key)
            .header("Content-Type", "application/zip")
            .body(bytes)
            .send()
            .await
            .unwrap()
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

/// Asserts a 400 `invalid_package` with an error of `code` on `field`.
async fn assert_invalid(r: reqwest::Response, field: &str, code: &str) {
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b = json_of(r).await;
    assert_eq!(b["code"], "invalid_package", "{b}");
    let errors = b["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == field && e["code"] == code),
        "expected {field}/{code} in {b}"
    );
}

async fn raw_db(app: &TestApp) -> SqlitePool {
    let path = app.data_dir.join("appstrate.db");
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

async fn api_key_auth(app: &TestApp, end_user: Option<&str>) -> Auth {
    let db = &app.state().infra.db;
    let application = db
        .get_application(&app.org_id, &app.app_id)
        .await
        .unwrap()
        .unwrap();
    let end_user = match end_user {
        Some(id) => Some(db.get_end_user(&app.app_id, id).await.unwrap().unwrap()),
        None => None,
    };
    Auth {
        org_id: app.org_id.clone(),
        credential: Credential::ApiKey {
            id: "test".into(),
            application_id: app.app_id.clone(),
            scopes: vec![],
        },
        application: Some(application),
        end_user,
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let md = e.metadata().unwrap();
            total += if md.is_dir() {
                dir_size(&e.path())
            } else {
                md.len()
            };
        }
    }
    total
}

on_both_backends!(import_reimport_conflict_and_versions);
async fn import_reimport_conflict_and_versions(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    let hello = std::fs::read(repo_root().join("examples/agents/hello.afps")).unwrap();

    let r = import(&app, hello.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let b = json_of(r).await;
    assert_eq!(b["created"], true);
    assert_eq!(b["package"]["id"], "@examples/hello");
    assert_eq!(b["package"]["object"], "package");
    assert_eq!(b["package"]["type"], "agent");
    assert_eq!(b["package"]["source"], "local");
    assert_eq!(b["package"]["latestVersion"], "1.0.0");
    assert_eq!(b["package"]["display_name"], "Hello");
    assert_eq!(b["version"]["version"], "1.0.0");
    assert_eq!(b["version"]["size"], hello.len());
    assert_eq!(b["version"]["integrity"], packages::integrity(&hello));
    assert!(b["version"]["integrity"]
        .as_str()
        .unwrap()
        .starts_with("sha256-"));

    // The artifact went through object storage under the org's key.
    let key = format!("packages/{}/@examples/hello/1.0.0.afps", app.org_id);
    let stored = app.state().infra.storage.get(&key).await.unwrap().unwrap();
    assert_eq!(stored.as_ref(), hello.as_slice());

    // Identical bytes: 200, created:false.
    let r = import(&app, hello.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["created"], false);

    // Same version, different bytes: 409.
    let m = manifest("@examples/hello", "1.0.0");
    let r = import(&app, agent_zip(&m, "different")).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(json_of(r).await["code"], "version_exists");

    // Higher versions; 1.10.0 beats 1.2.0 (semver, not string order).
    for v in ["1.10.0", "1.2.0"] {
        let r = import(&app, agent_zip(&manifest("@examples/hello", v), "Hi")).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = app
        .key(Method::GET, "/api/packages/%40examples/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = json_of(r).await;
    assert_eq!(b["latestVersion"], "1.10.0");
    assert_eq!(b["manifest"]["version"], "1.10.0");
    assert_eq!(b["display_name"], "Test agent");

    let r = app
        .key(Method::GET, "/api/packages/@examples/hello/versions")
        .send()
        .await
        .unwrap();
    let b = json_of(r).await;
    assert_eq!(b["object"], "list");
    let versions: Vec<&str> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["1.10.0", "1.2.0", "1.0.0"]);
    let r = app
        .key(
            Method::GET,
            "/api/packages/@examples/hello/versions?limit=1&startingAfter=1.10.0",
        )
        .send()
        .await
        .unwrap();
    let b = json_of(r).await;
    assert_eq!(b["data"][0]["version"], "1.2.0");
    assert_eq!(b["hasMore"], true);

    // Lists.
    let b = json_of(
        app.key(Method::GET, "/api/packages?type=agent")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
    assert_eq!(b["data"][0]["latestVersion"], "1.10.0");
    let r = app
        .key(Method::GET, "/api/packages?type=plugin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b = json_of(app.key(Method::GET, "/api/agents").send().await.unwrap()).await;
    assert_eq!(b["object"], "list");
    let agent = &b["data"][0];
    assert_eq!(agent["id"], "@examples/hello");
    assert_eq!(agent["scope"], "@examples");
    assert_eq!(agent["name"], "hello");
    assert_eq!(agent["version"], "1.10.0");
    assert_eq!(agent["type"], "agent");
    assert_eq!(agent["source"], "local");
    assert_eq!(agent["schema_version"], "0.1");
    assert_eq!(agent["input_schema"]["type"], "object");
    assert_eq!(agent["running_runs"], 0);

    // Unknown package.
    let r = app
        .key(Method::GET, "/api/packages/@examples/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Another application of the org does not see the package until it imports it.
    let other = json_of(
        app.client
            .post(app.url("/api/applications"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"name": "Other"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let other_id = other["id"].as_str().unwrap();
    let r = app
        .client
        .get(app.url("/api/packages/@examples/hello"))
        .bearer_auth(&app.admin_token)
        .header("X-App-Id", other_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .post(app.url("/api/packages/import"))
        .bearer_auth(&app.admin_token)
        .header("X-App-Id", other_id)
        .header("Content-Type", "application/zip")
        .body(hello.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "installed into the other application");
}

#[tokio::test]
async fn multipart_import_and_media_types() {
    let app = spawn_app().await;
    let bytes = agent_zip(&manifest("@acme/multi", "0.1.0"), "Hello");
    let boundary = "----appstrate-test-boundary";
    let mut body = Vec::new();
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.afps\"\r\n\
         Content-Type: application/zip\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(&bytes);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    let r = app
        .key(Method::POST, "/api/packages/import")
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(json_of(r).await["package"]["id"], "@acme/multi");

    let r = app
        .key(Method::POST, "/api/packages/import")
        .header("Content-Type", "text/plain")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // packages:write is required.
    let key = json_of(
        app.admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": "ro", "scopes": ["packages:read"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let r = app
        .client
        .post(app.url("/api/packages/import"))
        .bearer_auth(key["key"].as_str().unwrap())
        .header("Content-Type", "application/zip")
        .body(agent_zip(&manifest("@acme/x", "0.1.0"), "Hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_rejection_names_the_problem() {
    let app = spawn_app().await;
    let mut imp = Importer::new(&app, 4).await;
    let m = serde_json::to_vec(&manifest("@acme/bad", "1.0.0")).unwrap();

    // Zip-slip and friends.
    for name in ["../evil", "a/../../evil", "/etc/evil", "a\\evil", "C:/evil"] {
        let z = zip_of(&[("manifest.json", &m), ("prompt.md", b"x"), (name, b"x")]);
        assert_invalid(imp.import(z).await, "archive", "unsafe_path").await;
    }
    // A symlink entry.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file("manifest.json", opts).unwrap();
    w.write_all(&m).unwrap();
    w.start_file("prompt.md", opts).unwrap();
    w.write_all(b"x").unwrap();
    w.add_symlink("link", "/etc/passwd", opts).unwrap();
    let z = w.finish().unwrap().into_inner();
    assert_invalid(imp.import(z).await, "archive", "unsafe_path").await;

    // Two entries named prompt.md (a ZIP writer refuses to write that, so the second entry is
    // renamed in place), and two names that are the same path once `./` is dropped.
    for (placeholder, second) in [("prompt.mX", "prompt.md"), ("xxprompt.md", "./prompt.md")] {
        let z = zip_of(&[
            ("manifest.json", &m),
            ("prompt.md", b"validated"),
            (placeholder, b"smuggled"),
        ]);
        let mut dup = z.clone();
        let mut renamed = 0;
        for i in 0..dup.len() - placeholder.len() {
            if &dup[i..i + placeholder.len()] == placeholder.as_bytes() {
                dup[i..i + placeholder.len()].copy_from_slice(second.as_bytes());
                renamed += 1;
            }
        }
        assert_eq!(renamed, 2, "local header and central record");
        let r = imp.import(dup).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let b = json_of(r).await;
        assert_eq!(b["code"], "invalid_package", "{b}");
        let e = b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["code"] == "duplicate_entry")
            .unwrap_or_else(|| panic!("no duplicate_entry in {b}"));
        assert_eq!(e["field"], "archive");
        assert!(
            e["message"].as_str().unwrap().contains(second),
            "the message names the path: {e}"
        );
    }

    // More than 1000 entries.
    let names: Vec<String> = (0..1001).map(|i| format!("f/{i}.txt")).collect();
    let mut files: Vec<(&str, &[u8])> = vec![("manifest.json", &m), ("prompt.md", b"x")];
    files.extend(names.iter().map(|n| (n.as_str(), &b"x"[..])));
    assert_invalid(
        imp.import(zip_of(&files)).await,
        "archive",
        "too_many_entries",
    )
    .await;

    // A bomb: ~80 KiB that inflates to 64 MiB. Rejected, and nothing near 50 MiB lands on disk.
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let bomb = zip_of(&[
        ("manifest.json", &m),
        ("prompt.md", b"x"),
        ("zeros", &zeros),
    ]);
    drop(zeros);
    assert!(bomb.len() < 1024 * 1024);
    let before = dir_size(&app.data_dir);
    assert_invalid(imp.import(bomb).await, "archive", "too_large").await;
    assert!(dir_size(&app.data_dir) < before + 1024 * 1024);

    // More than 10 MiB compressed: 413.
    let r = imp.import(vec![7u8; 10 * 1024 * 1024 + 1]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(r).await["code"], "payload_too_large");

    // Manifest problems.
    let mut bad = manifest("@acme/bad", "1.0");
    assert_invalid(
        imp.import(agent_zip(&bad, "x")).await,
        "manifest.version",
        "invalid_format",
    )
    .await;
    bad["version"] = json!("1.0.0");
    bad["type"] = json!("plugin");
    assert_invalid(
        imp.import(agent_zip(&bad, "x")).await,
        "manifest.type",
        "invalid_value",
    )
    .await;
    bad["type"] = json!("mcp-server");
    assert_invalid(
        imp.import(agent_zip(&bad, "x")).await,
        "manifest.server",
        "required",
    )
    .await;
    bad["type"] = json!("agent");
    bad["schema_version"] = json!("1.0");
    assert_invalid(
        imp.import(agent_zip(&bad, "x")).await,
        "manifest.schema_version",
        "unsupported_schema_version",
    )
    .await;
    bad["schema_version"] = json!("0.1");
    bad["input"] = json!({"schema": {"type": "banana"}});
    assert_invalid(
        imp.import(agent_zip(&bad, "x")).await,
        "manifest.input.schema",
        "invalid_schema",
    )
    .await;
    bad["input"] = json!({});
    bad["name"] = json!("no-scope");
    assert_invalid(
        imp.import(agent_zip(&bad, "x")).await,
        "manifest.name",
        "invalid_format",
    )
    .await;

    // Several problems at once are all reported.
    let r = import(
        &app,
        agent_zip(&json!({"schema_version": "0.1", "type": "agent"}), "x"),
    )
    .await;
    let b = json_of(r).await;
    let fields: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in ["manifest.name", "manifest.version", "manifest.display_name"] {
        assert!(fields.contains(&f), "{f} in {b}");
    }

    // Missing or empty prompt.md, missing manifest, not a ZIP.
    let z = zip_of(&[("manifest.json", &m)]);
    assert_invalid(imp.import(z).await, "archive", "required").await;
    let z = zip_of(&[("manifest.json", &m), ("prompt.md", b"   ")]);
    assert_invalid(imp.import(z).await, "archive", "invalid_value").await;
    let z = zip_of(&[("prompt.md", b"x")]);
    assert_invalid(imp.import(z).await, "archive", "required").await;
    assert_invalid(
        imp.import(b"PK not really".to_vec()).await,
        "archive",
        "invalid_format",
    )
    .await;

    // None of these left a package behind.
    let b = json_of(app.key(Method::GET, "/api/packages").send().await.unwrap()).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 0);
}

/// Every column of the package tables, as text, ordered.
async fn snapshot(pool: &SqlitePool) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT id, org_id, package_id, scope, name, type, source, latest_version, display_name, \
         description, created_at, updated_at FROM packages ORDER BY id",
        "SELECT CAST(id AS TEXT), package_pk, version, integrity, CAST(size AS TEXT), manifest, \
         storage_key, created_at, NULL, NULL, NULL, NULL FROM package_versions ORDER BY id",
    ] {
        for row in sqlx::query(sql).fetch_all(pool).await.unwrap() {
            let cols: Vec<Option<String>> = (0..12).map(|i| row.get(i)).collect();
            out.push(format!("{cols:?}"));
        }
    }
    out
}

#[tokio::test]
async fn system_sync_is_idempotent_and_read_only() {
    let mut app = spawn_with_system().await;
    let pool = raw_db(&app).await;
    let rows = sqlx::query("SELECT org_id, type, source FROM packages")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        assert_eq!(r.get::<Option<String>, _>(0), None);
        assert_eq!(r.get::<String, _>(1), "integration");
        assert_eq!(r.get::<String, _>(2), "system");
    }
    let before = snapshot(&pool).await;
    assert_eq!(before.len(), 24);
    pool.close().await;

    // A lost artifact is put back at the next boot; rows stay untouched.
    let key = "packages/_system/@appstrate/stripe/1.0.1.afps";
    app.state().infra.storage.delete(key).await.unwrap();
    app.restart().await;
    assert!(app.state().infra.storage.get(key).await.unwrap().is_some());
    let pool = raw_db(&app).await;
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a second boot changes no row"
    );

    // Visible in the application, read-only.
    let b = json_of(
        app.key(Method::GET, "/api/packages?type=integration&limit=100")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let data = b["data"].as_array().unwrap();
    assert_eq!(data.len(), 12);
    assert!(data.iter().all(|p| p["source"] == "system"));
    let b = json_of(
        app.key(Method::GET, "/api/packages/@appstrate/github")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["latestVersion"], "1.0.3");
    assert_eq!(b["manifest"]["auths"]["primary"]["type"], "oauth2");

    let github =
        std::fs::read(repo_root().join("system-packages/integration-github-1.0.3.afps")).unwrap();
    let r = import(&app, github).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(r).await["code"], "system_package");
    let r = import(
        &app,
        agent_zip(&manifest("@appstrate/github", "9.0.0"), "x"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Storage holds the system artifacts under _system.
    let stored = app
        .state()
        .infra
        .storage
        .get("packages/_system/@appstrate/stripe/1.0.1.afps")
        .await
        .unwrap();
    assert!(stored.is_some());
}

/// The stripe fixture's manifest at another version.
fn stripe_at(version: &str) -> Vec<u8> {
    let original =
        std::fs::read(repo_root().join("system-packages/integration-stripe-1.0.1.afps")).unwrap();
    let mut z = zip::ZipArchive::new(Cursor::new(original)).unwrap();
    let mut s = String::new();
    z.by_name("manifest.json")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    let mut m: Value = serde_json::from_str(&s).unwrap();
    m["version"] = json!(version);
    m["description"] = json!(format!("Stripe {version}"));
    zip_of(&[("manifest.json", &serde_json::to_vec(&m).unwrap())])
}

#[tokio::test]
async fn system_sync_highest_semver_wins_and_bad_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read(repo_root().join("system-packages/integration-stripe-1.0.1.afps")).unwrap();
    std::fs::write(dir.path().join("a-stripe-1.0.1.afps"), &original).unwrap();
    std::fs::write(dir.path().join("b-stripe-1.10.0.afps"), stripe_at("1.10.0")).unwrap();
    std::fs::write(dir.path().join("c-stripe-1.2.0.afps"), stripe_at("1.2.0")).unwrap();
    // Same version, different bytes: logged, the stored bytes win.
    std::fs::write(
        dir.path().join("d-stripe-1.0.1-changed.afps"),
        stripe_at("1.0.1"),
    )
    .unwrap();
    // Not a package at all, and an invalid one.
    std::fs::write(dir.path().join("e-garbage.afps"), b"garbage").unwrap();
    std::fs::write(
        dir.path().join("f-invalid.afps"),
        zip_of(&[("manifest.json", b"{\"type\":\"mcp-server\"}")]),
    )
    .unwrap();
    std::fs::write(dir.path().join("ignored.txt"), b"not an afps").unwrap();

    let report = packages::sync_dir(&spawn_app().await.state().infra, dir.path()).await;
    assert_eq!(report.inserted, 3);
    assert_eq!(report.failed, 3);

    let app = spawn_app_with(&[("SYSTEM_PACKAGES_DIR", dir.path().to_str().unwrap())]).await;
    let b = json_of(
        app.key(Method::GET, "/api/packages/@appstrate/stripe")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["latestVersion"], "1.10.0");
    assert_eq!(b["description"], "Stripe 1.10.0");
    assert_eq!(b["source"], "system");
    let b = json_of(
        app.key(Method::GET, "/api/packages/@appstrate/stripe/versions")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let data = b["data"].as_array().unwrap();
    let versions: Vec<&str> = data
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["1.10.0", "1.2.0", "1.0.1"]);
    assert_eq!(data[2]["integrity"], packages::integrity(&original));

    // A later boot with the same files changes nothing.
    let again = packages::sync_dir(&app.state().infra, dir.path()).await;
    assert_eq!(again.inserted, 0);
    assert_eq!(again.unchanged, 3);
}

#[tokio::test]
async fn connections_are_validated_encrypted_and_never_returned() {
    let app = spawn_with_system().await;
    let canary = "sk_live_CANARY_4242";
    let path = "/api/packages/@appstrate/stripe/connections/primary";

    let r = app
        .key(Method::PUT, path)
        .json(&json!({"credentials": {"api_key": canary}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(canary));
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["object"], "connection");
    assert_eq!(b["packageId"], "@appstrate/stripe");
    assert_eq!(b["authKey"], "primary");
    assert_eq!(b["endUserId"], Value::Null);
    assert_eq!(b["fields"], json!(["api_key"]));

    // Stored encrypted.
    let pool = raw_db(&app).await;
    let stored: String = sqlx::query_scalar("SELECT credentials_encrypted FROM connections")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.starts_with("v1:k1:"), "{stored}");
    assert!(!stored.contains(canary));
    let decrypted = app.state().keyring.decrypt_json(&stored).unwrap();
    assert_eq!(decrypted["api_key"], canary);

    let r = app.key(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(canary));
    assert!(text.contains("api_key"));

    // Validated against the fixture's credential schema.
    let r = app
        .key(Method::PUT, path)
        .json(&json!({"credentials": {"wrong": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b = json_of(r).await;
    assert_eq!(b["code"], "validation_failed");
    assert!(b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["field"] == "credentials.api_key" && e["code"] == "required"));
    let r = app
        .key(Method::PUT, path)
        .json(&json!({"credentials": {"api_key": 424242}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!r.text().await.unwrap().contains("424242"));
    let r = app
        .key(Method::PUT, path)
        .json(&json!({"credentials": {"api_key": "x"}, "extra": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["errors"][0]["code"], "unknown_field");

    // oauth2 needs access_token.
    let gh = "/api/packages/@appstrate/github/connections/primary";
    let r = app
        .key(Method::PUT, gh)
        .json(&json!({"credentials": {"refresh_token": "r"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        json_of(r).await["errors"][0]["field"],
        "credentials.access_token"
    );
    let r = app
        .key(Method::PUT, gh)
        .json(&json!({"credentials": {"access_token": "gho_x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Unknown package or auth key: 404.
    for p in [
        "/api/packages/@appstrate/nope/connections/primary",
        "/api/packages/@appstrate/stripe/connections/secondary",
    ] {
        let r = app
            .key(Method::PUT, p)
            .json(&json!({"credentials": {"api_key": "x"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{p}");
    }

    // End-user connections are separate from the application's.
    let eu = json_of(
        app.key(Method::POST, "/api/end-users")
            .json(&json!({"name": "Ada"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let eu_id = eu["id"].as_str().unwrap();
    let r = app
        .key(Method::GET, path)
        .header("Appstrate-User", eu_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .key(Method::PUT, path)
        .header("Appstrate-User", eu_id)
        .json(&json!({"credentials": {"api_key": "sk_end_user"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["endUserId"], eu_id);

    // Rate-limit headers on writes (30/min).
    let r = app
        .key(Method::DELETE, path)
        .header("Appstrate-User", eu_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["ratelimit-policy"].to_str().unwrap(), "30;w=60");
    let r = app
        .key(Method::DELETE, path)
        .header("Appstrate-User", eu_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The application's connection is untouched.
    let r = app.key(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Deleting the end-user deletes its connections.
    let r = app
        .key(Method::PUT, path)
        .header("Appstrate-User", eu_id)
        .json(&json!({"credentials": {"api_key": "sk_end_user"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let count_sql = "SELECT COUNT(*) FROM connections WHERE end_user_id = $1";
    let n: i64 = sqlx::query_scalar(count_sql)
        .bind(eu_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = app
        .key(Method::DELETE, &format!("/api/end-users/{eu_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let n: i64 = sqlx::query_scalar(count_sql)
        .bind(eu_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn import_is_rate_limited() {
    let app = spawn_app().await;
    for _ in 0..10 {
        let r = import(&app, b"not a zip".to_vec()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["ratelimit-policy"], "10;w=60");
    }
    let r = import(&app, b"not a zip".to_vec()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(json_of(r).await["code"], "rate_limited");
}

#[tokio::test]
async fn run_integrations_render_the_fixture_delivery() {
    let app = spawn_with_system().await;
    let state = app.state();
    let auth = api_key_auth(&app, None).await;
    let manifest = json!({"dependencies": {"integrations": {
        "@appstrate/stripe": "^1", "@appstrate/twilio": "1.0.1"}}});

    // No connection yet: 412 naming the integration and auth key.
    let e = packages::run_integrations(state, &auth, &manifest)
        .await
        .unwrap_err();
    assert_eq!(appstrate::http::error::status_of(e.kind).as_u16(), 412);
    assert_eq!(e.code, "missing_integration_connection");
    assert!(e.detail.contains("@appstrate/stripe") && e.detail.contains("primary"));

    for (p, creds) in [
        ("stripe", json!({"api_key": "sk_test_1"})),
        ("twilio", json!({"account_sid": "AC1", "auth_token": "tok"})),
    ] {
        let r = app
            .key(
                Method::PUT,
                &format!("/api/packages/@appstrate/{p}/connections/primary"),
            )
            .json(&json!({ "credentials": creds }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let got = packages::run_integrations(state, &auth, &manifest)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, "@appstrate/stripe");
    assert_eq!(got[0].auth_key, "primary");
    assert_eq!(got[0].header.name, "Authorization");
    assert_eq!(got[0].header.value.expose(), "Bearer sk_test_1");
    assert_eq!(got[0].authorized_uris, vec!["https://api.stripe.com/**"]);
    assert!(!got[0].allow_all_uris);
    assert!(got[0].description.is_some());
    // Twilio: "{sid}:{token}", base64, prefix Basic.
    assert_eq!(got[1].header.value.expose(), "Basic QUMxOnRvaw==");
    assert!(!format!("{:?}", got[1]).contains("QUMxOnRvaw"));
    let cfg = got[1].to_config(None);
    assert_eq!(cfg.id, "@appstrate/twilio");

    // An end-user's own connection wins when the actor is that end-user; otherwise the application's.
    let eu = json_of(
        app.key(Method::POST, "/api/end-users")
            .json(&json!({"name": "Bo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let eu_id = eu["id"].as_str().unwrap();
    let eu_auth = api_key_auth(&app, Some(eu_id)).await;
    let got = packages::run_integrations(state, &eu_auth, &manifest)
        .await
        .unwrap();
    assert_eq!(got[0].header.value.expose(), "Bearer sk_test_1");
    let r = app
        .key(
            Method::PUT,
            "/api/packages/@appstrate/stripe/connections/primary",
        )
        .header("Appstrate-User", eu_id)
        .json(&json!({"credentials": {"api_key": "sk_eu"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = packages::run_integrations(state, &eu_auth, &manifest)
        .await
        .unwrap();
    assert_eq!(got[0].header.value.expose(), "Bearer sk_eu");

    // Unresolvable dependency, unsupported delivery.
    let e = packages::run_integrations(
        state,
        &auth,
        &json!({"dependencies": {"integrations": {"@appstrate/stripe": "^2"}}}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (
            appstrate::http::error::status_of(e.kind).as_u16(),
            e.code.as_str()
        ),
        (422, "dependency_unresolved")
    );
    let e = packages::run_integrations(
        state,
        &auth,
        &json!({"dependencies": {"integrations": {"@nobody/nothing": "*"}}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "dependency_unresolved");
    let e = packages::run_integrations(
        state,
        &auth,
        &json!({"dependencies": {"integrations": {"@appstrate/webhooks": "^1"}}}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (
            appstrate::http::error::status_of(e.kind).as_u16(),
            e.code.as_str()
        ),
        (422, "unsupported_delivery")
    );
    assert!(packages::run_integrations(state, &auth, &json!({}))
        .await
        .unwrap()
        .is_empty());
}

on_both_backends!(resolve_agent_and_run_bundle);
async fn resolve_agent_and_run_bundle(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    let state = app.state();
    let auth = api_key_auth(&app, None).await;

    // The briefing-agent fixture (with its signature.sig) imports as is.
    let briefing = std::fs::read(
        repo_root()
            .parent()
            .unwrap()
            .join("shared/fixtures/afps/agents/briefing-agent/agent.afps"),
    );
    if let Ok(briefing) = briefing {
        let r = import(&app, briefing).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let resolved = packages::resolve_agent(state, &auth, "@examples/daily-briefing", None)
            .await
            .unwrap();
        let bundle = packages::run_bundle(state, &resolved).await.unwrap();
        let mut z = zip::ZipArchive::new(Cursor::new(bundle.to_vec())).unwrap();
        assert!(z.by_name("signature.sig").is_ok());
        assert!(z.by_name("prompt.md").is_ok());
    }

    // A skill, and an agent depending on it, in two versions.
    let skill_m = json!({"schema_version": "0.1", "name": "@acme/notes", "version": "1.0.0",
        "type": "skill", "description": "Note taking"});
    let skill = zip_of(&[
        ("manifest.json", &serde_json::to_vec(&skill_m).unwrap()),
        ("SKILL.md", b"# Notes skill"),
        ("extra/data.txt", b"data"),
    ]);
    assert_eq!(import(&app, skill).await.status(), StatusCode::CREATED);
    for v in ["1.0.0", "1.1.0"] {
        let mut m = manifest("@acme/agent", v);
        m["dependencies"] = json!({"skills": {"@acme/notes": "^1"}});
        let r = import(&app, agent_zip(&m, &format!("prompt {v}"))).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    let latest = packages::resolve_agent(state, &auth, "@acme/agent", None)
        .await
        .unwrap();
    assert_eq!(latest.version, "1.1.0");
    assert_eq!(latest.package_id, "@acme/agent");
    assert_eq!(latest.source, "local");
    assert_eq!(
        latest.storage_key,
        format!("packages/{}/@acme/agent/1.1.0.afps", app.org_id)
    );
    assert_eq!(latest.manifest["version"], "1.1.0");
    let exact = packages::resolve_agent(state, &auth, "%40acme/agent", Some("1.0.0"))
        .await
        .unwrap();
    assert_eq!(exact.version, "1.0.0");
    let ranged = packages::resolve_agent(state, &auth, "@acme/agent", Some("~1.0"))
        .await
        .unwrap();
    assert_eq!(ranged.version, "1.0.0");
    let e = packages::resolve_agent(state, &auth, "@acme/agent", Some("^2"))
        .await
        .unwrap_err();
    assert_eq!(
        (
            appstrate::http::error::status_of(e.kind).as_u16(),
            e.code.as_str()
        ),
        (404, "version_not_found")
    );
    for missing in ["@acme/nope", "@acme/notes", "garbage"] {
        let e = packages::resolve_agent(state, &auth, missing, None)
            .await
            .unwrap_err();
        assert_eq!(
            (
                appstrate::http::error::status_of(e.kind).as_u16(),
                e.code.as_str()
            ),
            (404, "agent_not_found")
        );
    }

    let bundle = packages::run_bundle(state, &latest).await.unwrap();
    let mut z = zip::ZipArchive::new(Cursor::new(bundle.to_vec())).unwrap();
    let mut names: Vec<String> = (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "manifest.json",
            "prompt.md",
            "skills/@acme/notes/SKILL.md",
            "skills/@acme/notes/extra/data.txt",
            "skills/@acme/notes/manifest.json",
        ]
    );
    let mut prompt = String::new();
    z.by_name("prompt.md")
        .unwrap()
        .read_to_string(&mut prompt)
        .unwrap();
    assert_eq!(prompt, "prompt 1.1.0");
    let mut skill = String::new();
    z.by_name("skills/@acme/notes/SKILL.md")
        .unwrap()
        .read_to_string(&mut skill)
        .unwrap();
    assert_eq!(skill, "# Notes skill");

    // An unresolvable skill.
    let mut m = manifest("@acme/lonely", "1.0.0");
    m["dependencies"] = json!({"skills": {"@acme/missing": "^1"}});
    assert_eq!(
        import(&app, agent_zip(&m, "x")).await.status(),
        StatusCode::CREATED
    );
    let lonely = packages::resolve_agent(state, &auth, "@acme/lonely", None)
        .await
        .unwrap();
    let e = packages::run_bundle(state, &lonely).await.unwrap_err();
    assert_eq!(e.code, "dependency_unresolved");

    // Inline bundles.
    let b = packages::inline_bundle(&json!({"name": "@inline/x"}), "Hello {{input.a}}");
    let mut z = zip::ZipArchive::new(Cursor::new(b.to_vec())).unwrap();
    let mut p = String::new();
    z.by_name("prompt.md")
        .unwrap()
        .read_to_string(&mut p)
        .unwrap();
    assert_eq!(p, "Hello {{input.a}}");

    // Input validation with defaults.
    let out = packages::validate_input(
        &json!({"input": {"schema": {"type": "object", "properties": {
            "topic": {"type": "string"}, "n": {"type": "integer", "default": 3}},
            "required": ["topic"]}}}),
        &json!({"topic": "x"}),
    )
    .unwrap();
    assert_eq!(out, json!({"topic": "x", "n": 3}));
}

// ---- Authoring: create from JSON, publish versions, delete (issue 3, item 1) ----

fn agent_body(name: &str, version: &str, prompt: &str) -> Value {
    json!({"manifest": manifest(name, version), "files": {"prompt.md": prompt}})
}

async fn post_json(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.key(Method::POST, path).json(body).send().await.unwrap()
}

/// A 4xx with `code`, returning the body.
async fn assert_code(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let b = json_of(r).await;
    assert_eq!(b["code"], code, "{b}");
    b
}

fn has_error(b: &Value, field: &str, code: &str) -> bool {
    b["errors"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["field"] == field && e["code"] == code))
}

/// The stripe system integration's manifest under another id.
fn stripe_manifest_as(name: &str) -> Value {
    let original =
        std::fs::read(repo_root().join("system-packages/integration-stripe-1.0.1.afps")).unwrap();
    let mut m = packages::parse(&original).unwrap().manifest.raw;
    m["name"] = json!(name);
    m
}

on_both_backends!(create_from_json_agent_and_skill);
async fn create_from_json_agent_and_skill(backend: Backend) {
    let app = test_support::require!(spawn_with_system_on(backend).await);

    // An agent: the archive is built server-side and stored like an import.
    let body = agent_body("@authoring/writer", "1.0.0", "Write about {{input.topic}}");
    let r = post_json(&app, "/api/packages", &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let b = json_of(r).await;
    assert_eq!(b["created"], true);
    assert_eq!(b["package"]["id"], "@authoring/writer");
    assert_eq!(b["package"]["type"], "agent");
    assert_eq!(b["package"]["source"], "local");
    assert_eq!(b["package"]["latestVersion"], "1.0.0");
    assert_eq!(b["version"]["version"], "1.0.0");
    let key = format!("packages/{}/@authoring/writer/1.0.0.afps", app.org_id);
    let stored = app.state().infra.storage.get(&key).await.unwrap().unwrap();
    let parsed = packages::parse(&stored).unwrap();
    assert_eq!(parsed.entries, ["manifest.json", "prompt.md"]);
    assert_eq!(
        parsed.prompt.as_deref(),
        Some("Write about {{input.topic}}")
    );
    assert_eq!(b["version"]["integrity"], packages::integrity(&stored));
    assert_eq!(b["version"]["size"], stored.len());
    let agents = json_of(app.key(Method::GET, "/api/agents").send().await.unwrap()).await;
    let agent = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "@authoring/writer")
        .expect("listed as an agent");
    assert_eq!(agent["running_runs"], 0);

    // The same body again is the same archive; other content under the same version is a conflict.
    let r = post_json(&app, "/api/packages", &body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["created"], false);
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/writer", "1.0.0", "Something else"),
    )
    .await;
    assert_code(r, 409, "version_exists").await;

    // A skill with its SKILL.md.
    let skill = json!({"manifest": {"schema_version": "0.1", "name": "@authoring/style", "version": "0.1.0",
                                    "type": "skill", "display_name": "Style"},
                       "files": {"SKILL.md": "# House style\nBe brief.", "examples/one.md": "Short."}});
    let r = post_json(&app, "/api/packages", &skill).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let b = json_of(r).await;
    assert_eq!(b["package"]["type"], "skill");
    let key = format!("packages/{}/@authoring/style/0.1.0.afps", app.org_id);
    let stored = app.state().infra.storage.get(&key).await.unwrap().unwrap();
    let parsed = packages::parse(&stored).unwrap();
    assert_eq!(
        parsed.entries,
        ["manifest.json", "SKILL.md", "examples/one.md"]
    );
    assert_eq!(parsed.skill.as_deref(), Some("# House style\nBe brief."));

    // Import's rules: per-type files, manifest rules, path safety.
    let mut no_skill_md = skill.clone();
    no_skill_md["manifest"]["name"] = json!("@authoring/bare");
    no_skill_md["files"] = json!({});
    let b = assert_code(
        post_json(&app, "/api/packages", &no_skill_md).await,
        400,
        "invalid_package",
    )
    .await;
    assert!(has_error(&b, "files", "required"), "{b}");
    let mut bad = agent_body("@authoring/bad", "1.0", "x");
    bad["files"]["../escape.txt"] = json!("x");
    let b = assert_code(
        post_json(&app, "/api/packages", &bad).await,
        400,
        "invalid_package",
    )
    .await;
    assert!(has_error(&b, "files.../escape.txt", "unsafe_path"), "{b}");
    bad["files"] = json!({"prompt.md": "x"});
    let b = assert_code(
        post_json(&app, "/api/packages", &bad).await,
        400,
        "invalid_package",
    )
    .await;
    assert!(has_error(&b, "manifest.version", "invalid_format"), "{b}");

    // A strict body.
    let mut extra = agent_body("@authoring/extra", "1.0.0", "x");
    extra["prompt"] = json!("x");
    let b = assert_code(
        post_json(&app, "/api/packages", &extra).await,
        400,
        "validation_failed",
    )
    .await;
    assert!(has_error(&b, "prompt", "unknown_field"), "{b}");

    // A system id is read-only.
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@appstrate/github", "9.0.0", "x"),
    )
    .await;
    assert_code(r, 403, "system_package").await;

    // Ten per minute, like import.
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/tenth", "1.0.0", "x"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/eleventh", "1.0.0", "x"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

on_both_backends!(publish_versions_forward_only);
async fn publish_versions_forward_only(backend: Backend) {
    let app = test_support::require!(spawn_with_system_on(backend).await);
    let versions_path = "/api/packages/@authoring/pub/versions";
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/pub", "1.0.0", "v1"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = post_json(
        &app,
        versions_path,
        &agent_body("@authoring/pub", "1.1.0", "v1.1"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let b = json_of(r).await;
    assert_eq!(b["created"], true);
    assert_eq!(b["version"]["version"], "1.1.0");
    assert_eq!(b["package"]["latestVersion"], "1.1.0");

    // Not above the highest version.
    let r = post_json(
        &app,
        versions_path,
        &agent_body("@authoring/pub", "1.0.5", "old"),
    )
    .await;
    let b = assert_code(r, 409, "version_not_forward").await;
    let detail = b["detail"].as_str().unwrap();
    assert!(
        detail.contains("1.0.5") && detail.contains("1.1.0"),
        "{detail}"
    );
    // An existing version: other bytes conflict, the same bytes are a no-op.
    let r = post_json(
        &app,
        versions_path,
        &agent_body("@authoring/pub", "1.1.0", "changed"),
    )
    .await;
    assert_code(r, 409, "version_exists").await;
    let r = post_json(
        &app,
        versions_path,
        &agent_body("@authoring/pub", "1.1.0", "v1.1"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["created"], false);

    // The manifest must name the package of the path.
    let r = post_json(
        &app,
        versions_path,
        &agent_body("@authoring/other", "2.0.0", "x"),
    )
    .await;
    let b = assert_code(r, 400, "invalid_package").await;
    assert!(has_error(&b, "manifest.name", "invalid_value"), "{b}");

    // An archive body works too.
    let r = app
        .key(Method::POST, versions_path)
        .header("Content-Type", "application/zip")
        .body(agent_zip(&manifest("@authoring/pub", "1.2.0"), "v1.2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let b = json_of(app.key(Method::GET, versions_path).send().await.unwrap()).await;
    let listed: Vec<&str> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["1.2.0", "1.1.0", "1.0.0"]);

    // Unknown to the application; system packages are read-only.
    let r = post_json(
        &app,
        "/api/packages/@authoring/nope/versions",
        &agent_body("@authoring/nope", "1.0.0", "x"),
    )
    .await;
    assert_code(r, 404, "not_found").await;
    let r = post_json(
        &app,
        "/api/packages/@appstrate/github/versions",
        &json!({"manifest": stripe_manifest_as("@appstrate/github")}),
    )
    .await;
    assert_code(r, 403, "system_package").await;

    // A plain import may still add an older version (docs/decisions.md); the latest stays.
    let r = import(
        &app,
        agent_zip(&manifest("@authoring/pub", "1.0.7"), "backfill"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let b = json_of(r).await;
    assert_eq!(b["package"]["latestVersion"], "1.2.0");
}

#[tokio::test]
async fn delete_removes_versions_connections_and_artifacts() {
    let app = spawn_with_system().await;
    let pool = raw_db(&app).await;

    // An agent with two versions.
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/gone", "1.0.0", "v1"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post_json(
        &app,
        "/api/packages/@authoring/gone/versions",
        &agent_body("@authoring/gone", "1.1.0", "v2"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let keys =
        ["1.0.0", "1.1.0"].map(|v| format!("packages/{}/@authoring/gone/{v}.afps", app.org_id));
    for k in &keys {
        assert!(app.state().infra.storage.get(k).await.unwrap().is_some());
    }
    let r = app
        .key(Method::DELETE, "/api/packages/@authoring/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .key(Method::GET, "/api/packages/@authoring/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .key(Method::DELETE, "/api/packages/@authoring/gone")
        .send()
        .await
        .unwrap();
    assert_code(r, 404, "not_found").await;
    for k in &keys {
        assert!(
            app.state().infra.storage.get(k).await.unwrap().is_none(),
            "{k} removed from storage"
        );
    }
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM package_versions v JOIN packages p ON p.id = v.package_pk \
         WHERE p.package_id = '@authoring/gone'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 0);
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM packages WHERE package_id = '@authoring/gone'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 0);
    // It can be created again from scratch.
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/gone", "0.1.0", "again"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // An integration installed in two applications, with a connection in each.
    let integration = json!({"manifest": stripe_manifest_as("@authoring/pay")});
    let r = post_json(&app, "/api/packages", &integration).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let other = json_of(
        app.admin(Method::POST, "/api/applications")
            .json(&json!({"name": "Other"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let other_id = other["id"].as_str().unwrap().to_string();
    let as_other = |m: Method, p: &str| {
        app.client
            .request(m, app.url(p))
            .bearer_auth(&app.admin_token)
            .header("X-App-Id", &other_id)
    };
    let r = as_other(Method::POST, "/api/packages")
        .json(&integration)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "installed into the other application"
    );
    let conn = "/api/packages/@authoring/pay/connections/primary";
    let creds = json!({"credentials": {"api_key": "sk_test_1"}});
    let r = app
        .key(Method::PUT, conn)
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_other(Method::PUT, conn)
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let count_conns = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM connections WHERE package_id = '@authoring/pay'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(count_conns().await, 2);
    let key = format!("packages/{}/@authoring/pay/1.0.1.afps", app.org_id);

    // Removed from this application only: the other keeps it, its connection and the artifact.
    let r = app
        .key(Method::DELETE, "/api/packages/@authoring/pay")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .key(Method::GET, "/api/packages/@authoring/pay")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = as_other(Method::GET, "/api/packages/@authoring/pay")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(count_conns().await, 1);
    assert!(app.state().infra.storage.get(&key).await.unwrap().is_some());

    // The last application removes it: everything goes.
    let r = as_other(Method::DELETE, "/api/packages/@authoring/pay")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(count_conns().await, 0);
    assert!(app.state().infra.storage.get(&key).await.unwrap().is_none());
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM packages WHERE package_id = '@authoring/pay'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 0);

    // System packages are read-only.
    let r = app
        .key(Method::DELETE, "/api/packages/@appstrate/github")
        .send()
        .await
        .unwrap();
    assert_code(r, 403, "system_package").await;
    let r = app
        .key(Method::GET, "/api/packages/@appstrate/github")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_is_refused_while_a_run_is_open_and_agents_count_it() {
    use std::os::unix::fs::PermissionsExt;
    use test_support::fake_llm::{FakeLlm, Turn};

    // A "runner" that only sleeps keeps the run open.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sleeping-runner");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let llm = FakeLlm::start(Vec::<Turn>::new()).await;
    let url = llm.url();
    let app = spawn_app_with(&[
        ("RUNNER_BIN", script.to_str().unwrap()),
        ("LLM_BASE_URL", &url),
        ("LLM_API_KEY", "sk-test"),
        ("LLM_MODEL", "m"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
    ])
    .await;
    let r = post_json(
        &app,
        "/api/packages",
        &agent_body("@authoring/busy", "1.0.0", "Work on {{input.topic}}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post_json(
        &app,
        "/api/agents/@authoring/busy/run",
        &json!({"input": {"topic": "x"}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let run = json_of(r).await;
    let run_id = run["id"].as_str().unwrap().to_string();

    let running = |agents: &Value| {
        agents["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "@authoring/busy")
            .map(|a| a["running_runs"].clone())
    };
    let agents = json_of(app.key(Method::GET, "/api/agents").send().await.unwrap()).await;
    assert_eq!(running(&agents), Some(json!(1)), "{agents}");

    let r = app
        .key(Method::DELETE, "/api/packages/@authoring/busy")
        .send()
        .await
        .unwrap();
    let b = assert_code(r, 409, "package_in_use").await;
    assert!(b["detail"].as_str().unwrap().contains("@authoring/busy"));

    // Once the run is over the package can go.
    let r = app
        .key(Method::POST, &format!("/api/runs/{run_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = json_of(
            app.key(Method::GET, &format!("/api/runs/{run_id}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if !["pending", "running"].contains(&r["status"].as_str().unwrap()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "run still open: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let agents = json_of(app.key(Method::GET, "/api/agents").send().await.unwrap()).await;
    assert_eq!(running(&agents), Some(json!(0)), "{agents}");
    let r = app
        .key(Method::DELETE, "/api/packages/@authoring/busy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    drop(llm);
}

#[tokio::test]
async fn a_pathological_authorized_uris_pattern_is_refused_at_import() {
    let app = spawn_app().await;
    let zip = |uris: Value| {
        let mut m = stripe_manifest_as("@acme/payments");
        m["auths"]["primary"]["authorized_uris"] = uris;
        zip_of(&[("manifest.json", &serde_json::to_vec(&m).unwrap())])
    };
    // Eight `**` against an n-segment path cost O(n^8) with a backtracking matcher.
    let pathological = format!("https://api.stripe.com/{}x", "**/".repeat(8));
    let r = import(
        &app,
        zip(json!(["https://api.stripe.com/**", pathological])),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b = json_of(r).await;
    let e = b["errors"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["field"] == "manifest.auths.primary.authorized_uris[1]")
        })
        .unwrap_or_else(|| panic!("no error on authorized_uris[1] in {b}"));
    assert_eq!(e["code"], "invalid_value", "{b}");
    assert!(e["message"].as_str().unwrap().contains("at most 4"), "{b}");
    // A pattern past the length bound, and one the sidecar could not compile, are refused the same way.
    let long = format!("https://api.stripe.com/{}", "a".repeat(1100));
    assert_invalid(
        import(&app, zip(json!([long]))).await,
        "manifest.auths.primary.authorized_uris[0]",
        "invalid_value",
    )
    .await;
    assert_invalid(
        import(&app, zip(json!(["ftp://api.stripe.com/**"]))).await,
        "manifest.auths.primary.authorized_uris[0]",
        "invalid_value",
    )
    .await;
    // Nothing was stored; the ordinary pattern imports.
    let r = import(&app, zip(json!(["https://api.stripe.com/v1/**/items/**"]))).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", json_of(r).await);
}
