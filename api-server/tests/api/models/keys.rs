//! Provider keys: the test call, the roles that manage keys, and where a key must never appear.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::Backend;

use super::{add_model, app_with, call, inline_run, run_inline, set_default, Org, KEY_A};

#[tokio::test]
async fn the_test_call_reports_a_bad_key_with_the_providers_error() {
    let fake = FakeLlm::start(vec![]).await;
    fake.require_key(KEY_A);
    fake.set_models(&["gpt-fake-1", "gpt-fake-2"]);
    let app = app_with(Backend::Sqlite, &[]).await.unwrap();
    let org = Org::of(&app);
    let test = |body: Value| {
        let (app, org) = (&app, &org);
        async move {
            call(
                app,
                &org.admin,
                Method::POST,
                "/api/model-provider-credentials/test",
                Some(body),
            )
            .await
        }
    };

    // Before saving: a bad key gets the provider's refusal, in both API shapes; the good key passes.
    let (s, r) =
        test(json!({"providerId": "openai", "apiKey": "sk-wrong-key-000", "baseUrl": fake.url()}))
            .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "invalid_key");
    assert_eq!(r["status"], 401);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key provided"),
        "{r}"
    );
    let (_, r) = test(
        json!({"providerId": "anthropic", "apiKey": "sk-wrong-key-000", "baseUrl": fake.url()}),
    )
    .await;
    assert_eq!(r["error"], "invalid_key", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("invalid x-api-key"),
        "{r}"
    );
    let (_, r) =
        test(json!({"providerId": "openai-compatible", "apiKey": KEY_A, "baseUrl": fake.url()}))
            .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["models"], json!(["gpt-fake-1", "gpt-fake-2"]));
    // Bad input names the field.
    let (s, e) = test(json!({"providerId": "openai-compatible", "apiKey": KEY_A})).await;
    assert_eq!(s, 400);
    assert_eq!(e["errors"][0]["field"], "baseUrl", "{e}");
    let (s, e) = test(json!({"providerId": "mystery", "apiKey": KEY_A})).await;
    assert_eq!(s, 400);
    assert_eq!(e["errors"][0]["field"], "providerId", "{e}");

    // Stored with a bad key: the credential test and the model test report it, and the key is fixed.
    let (cred, model) = add_model(
        &app,
        &org,
        "openai",
        &fake.url(),
        "sk-wrong-key-000",
        json!({"modelId": "gpt-fake-1"}),
    )
    .await;
    let (_, r) = call(
        &app,
        &org.admin,
        Method::POST,
        &format!("/api/model-provider-credentials/{cred}/test"),
        None,
    )
    .await;
    assert_eq!(
        (r["ok"].clone(), r["error"].clone()),
        (json!(false), json!("invalid_key")),
        "{r}"
    );
    let (_, r) = call(
        &app,
        &org.admin,
        Method::POST,
        &format!("/api/models/{model}/test"),
        None,
    )
    .await;
    assert_eq!(r["error"], "invalid_key", "{r}");
    let (s, e) = call(
        &app,
        &org.admin,
        Method::POST,
        &format!("/api/model-provider-credentials/{cred}/refresh-models"),
        None,
    )
    .await;
    assert_eq!(s, 502, "{e}");
    // A run on it fails with the provider's refusal.
    set_default(&app, &org, json!({"modelId": model})).await;
    let run = run_inline(&app, &org, json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("401"), "{run}");

    let (s, v) = call(
        &app,
        &org.admin,
        Method::PUT,
        &format!("/api/model-provider-credentials/{cred}"),
        Some(json!({"apiKey": KEY_A})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, r) = call(
        &app,
        &org.admin,
        Method::POST,
        &format!("/api/model-provider-credentials/{cred}/test"),
        None,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    fake.push(Turn::text("OK"));
    let (_, r) = call(
        &app,
        &org.admin,
        Method::POST,
        &format!("/api/models/{model}/test"),
        None,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // Before adding a model: its provider id is tested on the credential, asking for one token.
    fake.push(Turn::text("OK"));
    let (_, r) = call(
        &app,
        &org.admin,
        Method::POST,
        "/api/models/test",
        Some(json!({"credentialId": cred, "modelId": "gpt-fake-2"})),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let sent = fake.requests().last().unwrap().json();
    assert_eq!(
        (sent["model"].clone(), sent["max_tokens"].clone()),
        (json!("gpt-fake-2"), json!(1))
    );
    let (s, e) = call(
        &app,
        &org.admin,
        Method::POST,
        "/api/models/test",
        Some(json!({"credentialId": "mpc_nope", "modelId": "x"})),
    )
    .await;
    assert_eq!(
        (s, e["errors"][0]["field"].clone()),
        (400, json!("credentialId")),
        "{e}"
    );
    let (s, v) = call(
        &app,
        &org.admin,
        Method::POST,
        &format!("/api/model-provider-credentials/{cred}/refresh-models"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["availableModels"], json!(["gpt-fake-1", "gpt-fake-2"]));

    // A base URL on a private address is refused unless exempted (EGRESS_ALLOW_INTERNAL_HOSTS).
    let (s, e) = call(&app, &org.admin, Method::POST, "/api/model-provider-credentials",
        Some(json!({"providerId": "openai-compatible", "apiKey": KEY_A, "baseUrl": "http://169.254.169.254/v1"}))).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["errors"][0]["field"], "baseUrl");
    assert_eq!(e["errors"][0]["code"], "blocked_address");
    // API keys and members without the permission cannot manage provider keys.
    let (s, _) = call(
        &app,
        &org.key,
        Method::GET,
        "/api/model-provider-credentials",
        None,
    )
    .await;
    assert_eq!(s, 403);
}

/// Through the real binary at `LOG_LEVEL=trace`: provider keys (a stored one, used by a run and by the
/// test calls, and a refused one) reach the provider but never an API answer, the log output, or a
/// plaintext column of the database file.
#[test]
fn keys_never_appear_in_answers_logs_or_plaintext_columns() {
    use std::process::{Command, Stdio};
    const BAD_KEY: &str = "sk-refused-canary-3c9d71";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(FakeLlm::start(vec![Turn::text("Hello.")]));
    fake.require_key(KEY_A);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let packages = test_support::app::system_packages_dir();
    let env: Vec<(&str, String)> = vec![
        ("BETTER_AUTH_SECRET", "better-auth-secret-models".into()),
        ("UPLOAD_SIGNING_SECRET", "upload-secret-models-0123".into()),
        (
            "CONNECTION_ENCRYPTION_KEY",
            test_support::app::TEST_ENCRYPTION_KEY.into(),
        ),
        ("PORT", port.to_string()),
        ("LOG_LEVEL", "trace".into()),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1".into()),
        (
            "SYSTEM_PACKAGES_DIR",
            packages.to_string_lossy().into_owned(),
        ),
    ];
    let command = |args: &[&str], out: Stdio, err: Stdio| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appstrate"));
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdout(out)
            .stderr(err);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd
    };
    let boot = command(&["bootstrap"], Stdio::piped(), Stdio::piped())
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let creds: Value = serde_json::from_slice(&boot.stdout).unwrap();
    let admin = creds["adminToken"].as_str().unwrap().to_string();
    let api_key = creds["apiKey"].as_str().unwrap().to_string();
    // Trace output is large: files, so that a full pipe never stalls the server.
    let log_out = dir.path().join("stdout.log");
    let log_err = dir.path().join("stderr.log");
    let mut child = command(
        &["serve"],
        Stdio::from(std::fs::File::create(&log_out).unwrap()),
        Stdio::from(std::fs::File::create(&log_err).unwrap()),
    )
    .spawn()
    .unwrap();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(url("/health"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "server did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut answers = String::new();
    let mut send = |method: Method, path: &str, token: &str, body: Option<Value>| -> Value {
        let mut req = client.request(method, url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let text = r.text().unwrap();
        answers.push_str(&text);
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    let refused = send(
        Method::POST,
        "/api/model-provider-credentials/test",
        &admin,
        Some(json!({"providerId": "openai", "apiKey": BAD_KEY, "baseUrl": fake.url()})),
    );
    assert_eq!(refused["error"], "invalid_key", "{refused}");
    let cred = send(
        Method::POST,
        "/api/model-provider-credentials",
        &admin,
        Some(json!({"providerId": "openai", "apiKey": KEY_A, "baseUrl": fake.url()})),
    );
    let cred_id = cred["id"].as_str().unwrap().to_string();
    assert_eq!(
        send(
            Method::POST,
            &format!("/api/model-provider-credentials/{cred_id}/test"),
            &admin,
            None
        )["ok"],
        true
    );
    send(
        Method::POST,
        &format!("/api/model-provider-credentials/{cred_id}/refresh-models"),
        &admin,
        None,
    );
    send(
        Method::PUT,
        &format!("/api/model-provider-credentials/{cred_id}"),
        &admin,
        Some(json!({"apiKey": KEY_A})),
    );
    send(Method::GET, "/api/model-provider-credentials", &admin, None);
    let model = send(
        Method::POST,
        "/api/models",
        &admin,
        Some(
            json!({"credentialId": cred_id, "modelId": "fake-model", "pricing": {"input": 1, "output": 2}}),
        ),
    );
    let model_id = model["id"].as_str().unwrap().to_string();
    send(
        Method::PUT,
        "/api/models/default",
        &admin,
        Some(json!({"modelId": model_id})),
    );
    send(Method::GET, "/api/models", &admin, None);
    let run = send(
        Method::POST,
        "/api/runs/inline",
        &api_key,
        Some(inline_run()),
    );
    let run_id = run["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let r = send(
            Method::GET,
            &format!("/api/runs/{run_id}?wait=10"),
            &api_key,
            None,
        );
        if r["status"] == "success" || r["status"] == "failed" {
            break r;
        }
        assert!(Instant::now() < deadline, "run did not finish: {r}");
    };
    assert_eq!(done["status"], "success", "{done}");
    send(
        Method::GET,
        &format!("/api/runs/{run_id}/logs"),
        &api_key,
        None,
    );
    send(Method::GET, "/api/usage?groupBy=run", &admin, None);

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    // The provider received the key, through the sidecar.
    assert!(fake
        .authorizations()
        .iter()
        .any(|a| a == &format!("Bearer {KEY_A}")));
    let logs = format!(
        "{}{}",
        std::fs::read_to_string(&log_out).unwrap(),
        std::fs::read_to_string(&log_err).unwrap()
    );
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "not at trace level"
    );
    let mut db = Vec::new();
    for f in ["data/appstrate.db", "data/appstrate.db-wal"] {
        db.extend(std::fs::read(dir.path().join(f)).unwrap_or_default());
    }
    let db = String::from_utf8_lossy(&db);
    assert!(
        db.contains("v1:k1:"),
        "no encrypted column in the database file"
    );
    for key in [KEY_A, BAD_KEY] {
        assert!(!answers.contains(key), "{key} in an answer");
        assert!(!logs.contains(key), "{key} in the logs");
        assert!(!db.contains(key), "{key} in a plaintext column");
    }
    drop(fake);
}

/// Signed-in users act in the organization named by `X-Org-Id`, within their role: viewers read models,
/// members also read usage, admins and owners manage keys and models.
#[tokio::test]
async fn roles_gate_the_models_routes() {
    let app = test_support::app::spawn_fresh_on(
        Backend::Sqlite,
        &[("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1")],
    )
    .await
    .unwrap();
    let fake = FakeLlm::start(vec![]).await;
    let (owner, org_id, _) = crate::people::owner(&app, "owner@example.com").await;
    let viewer =
        crate::people::invite_and_join(&app, &owner, &org_id, "viewer@example.com", "viewer").await;
    let member =
        crate::people::invite_and_join(&app, &owner, &org_id, "member@example.com", "member").await;
    let org = [("X-Org-Id", org_id.as_str())];
    let create = json!({"providerId": "openai", "apiKey": KEY_A, "baseUrl": fake.url()});

    let (s, e) = owner
        .send(
            Method::POST,
            "/api/model-provider-credentials",
            &[],
            Some(create.clone()),
        )
        .await;
    assert_eq!((s, e["param"].clone()), (400, json!("X-Org-Id")), "{e}");
    let (s, cred) = owner
        .send(
            Method::POST,
            "/api/model-provider-credentials",
            &org,
            Some(create.clone()),
        )
        .await;
    assert_eq!(s, 201, "{cred}");
    assert_eq!(cred["label"], "OpenAI (127.0.0.1)");
    let (s, _) = viewer
        .send(
            Method::POST,
            "/api/model-provider-credentials",
            &org,
            Some(create.clone()),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = member
        .send(
            Method::POST,
            "/api/models",
            &org,
            Some(json!({"credentialId": cred["id"], "modelId": "m"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, list) = viewer.get("/api/model-provider-credentials", &org).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["data"][0]["id"], cred["id"]);
    let (s, _) = viewer.get("/api/models", &org).await;
    assert_eq!(s, 200);
    let (s, _) = viewer.get("/api/usage", &org).await;
    assert_eq!(s, 403);
    let (s, _) = member.get("/api/usage", &org).await;
    assert_eq!(s, 200);
    // The same label twice is refused; a derived label is made unique.
    let (s, e) = owner.send(Method::POST, "/api/model-provider-credentials", &org,
        Some(json!({"providerId": "openai", "apiKey": KEY_A, "baseUrl": fake.url(), "label": "OpenAI (127.0.0.1)"}))).await;
    assert_eq!((s, e["code"].clone()), (409, json!("label_taken")), "{e}");
    let (_, again) = owner
        .send(
            Method::POST,
            "/api/model-provider-credentials",
            &org,
            Some(create),
        )
        .await;
    assert_eq!(again["label"], "OpenAI (127.0.0.1) 2");
}
