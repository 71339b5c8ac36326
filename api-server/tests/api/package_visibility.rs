//! Package ids are unique per organization, but a package belongs to the applications that installed it:
//! an API key of another application cannot add a version to it (or join it) through import or create.

use appstrate::packages::afps::build_zip;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{system_prompt, FakeLlm};

use crate::runs::{llm_app, start, wait_terminal};

fn victim_zip(version: &str, prompt: &str) -> Vec<u8> {
    let manifest = json!({
        "schema_version": "0.1",
        "name": "@acme/victim",
        "version": version,
        "type": "agent",
        "display_name": "Victim",
    });
    build_zip(&[
        ("manifest.json", manifest.to_string().as_bytes()),
        ("prompt.md", prompt.as_bytes()),
    ])
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An API key pinned to a new application `name`, with every scope.
async fn other_application_key(app: &TestApp, name: &str) -> (String, String) {
    let (s, created) = answer(
        app.admin(Method::POST, "/api/applications")
            .json(&json!({"name": name})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let app_id = created["id"].as_str().unwrap().to_string();
    let (s, key) = answer(
        app.client
            .post(app.url("/api/api-keys"))
            .bearer_auth(&app.admin_token)
            .header("X-App-Id", &app_id)
            .json(&json!({"name": format!("{name} key")})),
    )
    .await;
    assert_eq!(s, 201, "{key}");
    (app_id, key["key"].as_str().unwrap().to_string())
}

/// What a refused request answered, without the per-request fields.
fn refusal(body: &Value) -> (Value, Value, Value) {
    (
        body["status"].clone(),
        body["code"].clone(),
        body["detail"].clone(),
    )
}

#[tokio::test]
async fn another_applications_key_cannot_add_a_version_by_import_or_create() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;

    // Application A imports @acme/victim@1.0.0.
    let (s, b) = answer(
        app.key(Method::POST, "/api/packages/import")
            .header("content-type", "application/zip")
            .body(victim_zip("1.0.0", "Victim prompt version one")),
    )
    .await;
    assert_eq!(s, 201, "{b}");

    // Application B's key, with packages:write, tries to add 2.0.0 (which would become A's latest).
    let (b_app, b_key) = other_application_key(&app, "B").await;
    let as_b = |m: Method, p: &str| app.client.request(m, app.url(p)).bearer_auth(&b_key);
    let (s, by_import) = answer(
        as_b(Method::POST, "/api/packages/import")
            .header("content-type", "application/zip")
            .body(victim_zip("2.0.0", "Attacker prompt version two")),
    )
    .await;
    assert_eq!(s, 404, "{by_import}");
    let (s, by_create) = answer(as_b(Method::POST, "/api/packages").json(&json!({
        "manifest": {"schema_version": "0.1", "name": "@acme/victim", "version": "2.0.0",
                     "type": "agent", "display_name": "Victim"},
        "files": {"prompt.md": "Attacker prompt version two"},
    })))
    .await;
    assert_eq!(s, 404, "{by_create}");
    // Nor may it join the package by importing A's exact bytes (it could then publish to it).
    let (s, by_same_bytes) = answer(
        as_b(Method::POST, "/api/packages/import")
            .header("content-type", "application/zip")
            .body(victim_zip("1.0.0", "Victim prompt version one")),
    )
    .await;
    assert_eq!(s, 404, "{by_same_bytes}");

    // Refused exactly like a package of another organization: same status, code and detail.
    let other_org = appstrate::cli::bootstrap_json(app.state().infra.db.as_ref(), "Other", "Main")
        .await
        .unwrap();
    let other_key = other_org["apiKey"].as_str().unwrap();
    let other_zip = build_zip(&[
        (
            "manifest.json",
            json!({"schema_version": "0.1", "name": "@other/only", "version": "1.0.0",
                   "type": "agent", "display_name": "Only"})
            .to_string()
            .as_bytes(),
        ),
        ("prompt.md", b"Other organization's agent"),
    ]);
    let (s, b) = answer(
        app.client
            .post(app.url("/api/packages/import"))
            .bearer_auth(other_key)
            .header("content-type", "application/zip")
            .body(other_zip),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, other_orgs) = answer(
        as_b(Method::POST, "/api/packages/@other/only/versions").json(&json!({
            "manifest": {"schema_version": "0.1", "name": "@other/only", "version": "2.0.0",
                         "type": "agent", "display_name": "Only"},
            "files": {"prompt.md": "x"},
        })),
    )
    .await;
    assert_eq!(s, 404, "{other_orgs}");
    let expected = refusal(&other_orgs);
    let expected = (
        expected.0,
        expected.1,
        json!(expected
            .2
            .as_str()
            .unwrap()
            .replace("@other/only", "@acme/victim")),
    );
    for refused in [&by_import, &by_create, &by_same_bytes] {
        assert_eq!(refusal(refused), expected, "{refused}");
    }
    assert_eq!(by_import["detail"], "Package @acme/victim not found");

    // Application B still does not see it; A still has 1.0.0 only.
    let (s, _) = answer(as_b(Method::GET, "/api/packages/@acme/victim")).await;
    assert_eq!(s, 404);
    let (s, pkg) = answer(app.key(Method::GET, "/api/packages/@acme/victim")).await;
    assert_eq!(s, 200);
    assert_eq!(pkg["latestVersion"], "1.0.0", "{pkg}");
    let (_, versions) = answer(app.key(Method::GET, "/api/packages/@acme/victim/versions")).await;
    assert_eq!(versions["data"].as_array().unwrap().len(), 1, "{versions}");

    // A's next run still uses 1.0.0: the model sees A's prompt.
    let run = start(&app, "/api/agents/@acme/victim/run", json!({})).await;
    let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    let prompts: Vec<String> = fake.requests().iter().filter_map(system_prompt).collect();
    assert!(!prompts.is_empty());
    assert!(
        prompts
            .iter()
            .all(|p| p.contains("Victim prompt version one") && !p.contains("Attacker")),
        "{prompts:?}"
    );

    // An admin token acts for every application: it may still install the package into B.
    let (s, b) = answer(
        app.client
            .post(app.url("/api/packages/import"))
            .bearer_auth(&app.admin_token)
            .header("X-App-Id", &b_app)
            .header("content-type", "application/zip")
            .body(victim_zip("1.0.0", "Victim prompt version one")),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = answer(as_b(Method::GET, "/api/packages/@acme/victim")).await;
    assert_eq!(s, 200);
}
