//! Models and providers per organization (docs/models.md), end to end against the scripted fake LLM in
//! both API shapes: provider keys per organization injected by the sidecar, the resolution order and a
//! model deleted under a schedule here; the test call, roles and where keys must never appear in
//! `keys.rs`; the usage ledger in `usage.rs`.

mod keys;
mod schedule;
mod usage;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::{spawn_app_on, Backend};

pub(crate) const KEY_A: &str = "sk-org-a-canary-7a1f03";
pub(crate) const KEY_B: &str = "sk-ant-org-b-canary-92bd44";
pub(crate) const INSTANCE_KEY: &str = "sk-instance-canary-5e0c11";

/// One organization's credentials.
pub(crate) struct Org {
    pub(crate) org_id: String,
    pub(crate) app_id: String,
    pub(crate) admin: String,
    pub(crate) key: String,
}

impl Org {
    pub(crate) fn of(app: &TestApp) -> Org {
        Org {
            org_id: app.org_id.clone(),
            app_id: app.app_id.clone(),
            admin: app.admin_token.clone(),
            key: app.api_key.clone(),
        }
    }

    /// A second organization on the same server.
    pub(crate) async fn second(app: &TestApp, name: &str) -> Org {
        let boot = appstrate::cli::bootstrap_json(app.state().infra.db.as_ref(), name, "Default")
            .await
            .unwrap();
        Org {
            org_id: boot["orgId"].as_str().unwrap().into(),
            app_id: boot["applicationId"].as_str().unwrap().into(),
            admin: boot["adminToken"].as_str().unwrap().into(),
            key: boot["apiKey"].as_str().unwrap().into(),
        }
    }
}

pub(crate) async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Adds a credential and a model on it; returns (credential id, model id).
pub(crate) async fn add_model(
    app: &TestApp,
    org: &Org,
    provider: &str,
    base_url: &str,
    key: &str,
    model: Value,
) -> (String, String) {
    let (s, cred) = call(
        app,
        &org.admin,
        Method::POST,
        "/api/model-provider-credentials",
        Some(json!({"providerId": provider, "apiKey": key, "baseUrl": base_url})),
    )
    .await;
    assert_eq!(s, 201, "{cred}");
    let cred_id = cred["id"].as_str().unwrap().to_string();
    let mut body = model;
    body["credentialId"] = json!(cred_id);
    let (s, m) = call(app, &org.admin, Method::POST, "/api/models", Some(body)).await;
    assert_eq!(s, 201, "{m}");
    (cred_id, m["id"].as_str().unwrap().to_string())
}

pub(crate) async fn set_default(app: &TestApp, org: &Org, body: Value) {
    let (s, b) = call(
        app,
        &org.admin,
        Method::PUT,
        "/api/models/default",
        Some(body),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

pub(crate) fn inline_run() -> Value {
    json!({"manifest": {"schema_version": "0.1", "name": "@tests/inline", "version": "1.0.0",
        "type": "agent", "display_name": "Inline"}, "prompt": "Say hello."})
}

pub(crate) async fn run_inline(app: &TestApp, org: &Org, extra: Value) -> Value {
    let mut body = inline_run();
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (s, run) = call(app, &org.key, Method::POST, "/api/runs/inline", Some(body)).await;
    assert_eq!(s, 201, "{run}");
    wait_terminal(app, org, run["id"].as_str().unwrap()).await
}

pub(crate) async fn wait_terminal(app: &TestApp, org: &Org, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, r) = call(
            app,
            &org.key,
            Method::GET,
            &format!("/api/runs/{id}?wait=10"),
            None,
        )
        .await;
        if ["success", "failed", "timeout", "cancelled"]
            .contains(&r["status"].as_str().unwrap_or(""))
        {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {r}");
    }
}

pub(crate) async fn app_with(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
    let mut env = vec![("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1")];
    env.extend_from_slice(extra);
    spawn_app_on(backend, &env).await
}

pub(crate) fn requests_for_model(
    fake: &FakeLlm,
    model: &str,
) -> Vec<test_support::fake_upstream::RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.json()["model"] == model)
        .collect()
}

on_both_backends!(two_organizations_reach_the_provider_with_their_own_keys);
async fn two_organizations_reach_the_provider_with_their_own_keys(backend: Backend) {
    // One provider endpoint for both: OpenAI chat completions for A, Anthropic messages for B.
    let fake = FakeLlm::start(vec![
        Turn::text("Hello from A."),
        Turn::text("Hello from B."),
    ])
    .await;
    let app = test_support::require!(app_with(backend, &[]).await);
    let a = Org::of(&app);
    let b = Org::second(&app, "Org B").await;
    let (_, model_a) = add_model(
        &app,
        &a,
        "openai",
        &fake.url(),
        KEY_A,
        json!({"modelId": "alpha-model", "label": "Alpha"}),
    )
    .await;
    let (_, model_b) = add_model(
        &app,
        &b,
        "anthropic",
        &fake.url(),
        KEY_B,
        json!({"modelId": "beta-model", "label": "Beta"}),
    )
    .await;
    set_default(&app, &a, json!({"modelId": model_a})).await;
    set_default(&app, &b, json!({"modelId": model_b})).await;

    // Neither organization sees the other's credentials or models, nor can use them.
    let (_, list_a) = call(&app, &a.admin, Method::GET, "/api/models", None).await;
    assert_eq!(list_a["data"].as_array().unwrap().len(), 1, "{list_a}");
    assert_eq!(list_a["defaultModelId"], model_a);
    let (s, _) = call(
        &app,
        &a.admin,
        Method::PUT,
        &format!("/api/models/{model_b}"),
        Some(json!({"label": "x"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, e) = call(
        &app,
        &a.admin,
        Method::PUT,
        "/api/models/default",
        Some(json!({"modelId": model_b})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["errors"][0]["field"], "modelId");

    let run_a = run_inline(&app, &a, json!({})).await;
    let run_b = run_inline(&app, &b, json!({})).await;
    assert_eq!(run_a["status"], "success", "{run_a}");
    assert_eq!(run_b["status"], "success", "{run_b}");
    assert_eq!(run_a["model_label"], "Alpha");
    assert_eq!(run_b["model_label"], "Beta");

    // Each run reached the provider with its own organization's key, and only with it.
    let to_a = requests_for_model(&fake, "alpha-model");
    let to_b = requests_for_model(&fake, "beta-model");
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_a[0].path, "/chat/completions");
    assert_eq!(
        to_a[0].header("authorization"),
        Some(format!("Bearer {KEY_A}").as_str())
    );
    assert_eq!(to_a[0].header("x-api-key"), None);
    assert_eq!(to_b[0].path, "/v1/messages");
    assert_eq!(to_b[0].header("x-api-key"), Some(KEY_B));
    assert_eq!(to_b[0].header("authorization"), None);
    for r in fake.requests() {
        let headers = format!("{:?}", r.headers);
        assert!(
            !(headers.contains(KEY_A) && headers.contains(KEY_B)),
            "{headers}"
        );
    }
    // The keys are stored encrypted with the keyring, on either backend.
    let state = app.state();
    for (org, key) in [(&a, KEY_A), (&b, KEY_B)] {
        let creds = state
            .infra
            .db
            .list_provider_credentials(&org.org_id)
            .await
            .unwrap();
        assert_eq!(creds.len(), 1);
        let stored = &creds[0].api_key_encrypted;
        assert!(
            stored.starts_with("v1:k1:") && !stored.contains(key),
            "{stored}"
        );
        assert_eq!(state.keyring.decrypt(stored).unwrap(), key.as_bytes());
    }
    // Usage is the organization's own.
    for (org, run) in [(&a, &run_a), (&b, &run_b)] {
        let (s, u) = call(
            &app,
            &org.admin,
            Method::GET,
            "/api/usage?groupBy=run",
            None,
        )
        .await;
        assert_eq!(s, 200, "{u}");
        assert_eq!(u["data"].as_array().unwrap().len(), 1, "{u}");
        assert_eq!(u["data"][0]["key"], run["id"]);
        assert_eq!(u["totals"]["calls"], 1);
    }
    assert_ne!(a.org_id, b.org_id);
}

on_both_backends!(the_resolution_order_is_run_agent_application_organization_instance);
async fn the_resolution_order_is_run_agent_application_organization_instance(backend: Backend) {
    let fake = FakeLlm::start(vec![]).await;
    let url = fake.url();
    let app = test_support::require!(
        app_with(
            backend,
            &[
                ("LLM_BASE_URL", url.as_str()),
                ("LLM_API_KEY", INSTANCE_KEY),
                ("LLM_MODEL", "instance-model"),
            ],
        )
        .await
    );
    let org = Org::of(&app);
    let (s, b) = call(
        &app,
        &org.key,
        Method::POST,
        "/api/packages",
        Some(json!({"manifest": {"schema_version": "0.1", "name": "@models/writer", "version": "1.0.0",
            "type": "agent", "display_name": "Writer"}, "files": {"prompt.md": "Write."}})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let mut ids = Vec::new();
    for m in ["org-model", "app-model", "agent-model", "run-model"] {
        let (_, id) = add_model(&app, &org, "openai", &url, KEY_A, json!({"modelId": m})).await;
        ids.push(id);
    }
    let (org_m, app_m, agent_m, run_m) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let agent_path = "/api/agents/@models/writer/model";
    let effective = |app: &TestApp| {
        let key = org.key.clone();
        let client = app.client.clone();
        let url = app.url(agent_path);
        async move {
            let r = client.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            (
                v["effective"]["source"].as_str().unwrap_or("").to_string(),
                v["effective"]["modelId"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let fake = &fake;
    let run_agent = |extra: Value| {
        let (app, org) = (&app, &org);
        async move {
            fake.push(Turn::text("ok"));
            let (s, run) = call(
                app,
                &org.key,
                Method::POST,
                "/api/agents/@models/writer/run",
                Some(extra),
            )
            .await;
            assert_eq!(s, 201, "{run}");
            wait_terminal(app, org, run["id"].as_str().unwrap()).await
        }
    };
    let last_model = || fake.requests().last().unwrap().json()["model"].clone();
    let last_auth = || {
        fake.requests()
            .last()
            .unwrap()
            .header("authorization")
            .unwrap_or("")
            .to_string()
    };

    // Nothing chosen: the instance default, with the instance key.
    assert_eq!(
        effective(&app).await,
        ("instance".into(), "instance-model".into())
    );
    let run = run_agent(json!({})).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(last_model(), "instance-model");
    assert_eq!(last_auth(), format!("Bearer {INSTANCE_KEY}"));

    set_default(&app, &org, json!({"modelId": org_m})).await;
    assert_eq!(
        effective(&app).await,
        ("organization".into(), "org-model".into())
    );
    set_default(
        &app,
        &org,
        json!({"modelId": app_m, "applicationId": org.app_id}),
    )
    .await;
    assert_eq!(
        effective(&app).await,
        ("application".into(), "app-model".into())
    );
    let (s, v) = call(
        &app,
        &org.key,
        Method::PUT,
        agent_path,
        Some(json!({"modelId": agent_m})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["modelId"], json!(agent_m));
    assert_eq!(v["effective"]["source"], "agent");
    let run = run_agent(json!({})).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(last_model(), "agent-model");
    assert_eq!(last_auth(), format!("Bearer {KEY_A}"));
    // The run's own model wins, by id or by the provider's model id.
    let run = run_agent(json!({"model": run_m})).await;
    assert_eq!(last_model(), "run-model");
    assert_eq!(run["model_label"], "run-model");
    run_agent(json!({"model": "org-model"})).await;
    assert_eq!(last_model(), "org-model");
    // A model id the organization does not offer runs on the instance default.
    run_agent(json!({"model": "other-model"})).await;
    assert_eq!(last_model(), "other-model");
    assert_eq!(last_auth(), format!("Bearer {INSTANCE_KEY}"));
    let (s, e) = call(
        &app,
        &org.key,
        Method::POST,
        "/api/agents/@models/writer/run",
        Some(json!({"model": "mdl_nope"})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["code"], "model_not_configured");

    // Clearing each level falls back to the next.
    call(
        &app,
        &org.key,
        Method::PUT,
        agent_path,
        Some(json!({"modelId": null})),
    )
    .await;
    assert_eq!(
        effective(&app).await,
        ("application".into(), "app-model".into())
    );
    set_default(
        &app,
        &org,
        json!({"modelId": null, "applicationId": org.app_id}),
    )
    .await;
    assert_eq!(
        effective(&app).await,
        ("organization".into(), "org-model".into())
    );
    set_default(&app, &org, json!({"modelId": null})).await;
    assert_eq!(
        effective(&app).await,
        ("instance".into(), "instance-model".into())
    );

    // Without an instance default and without choices, runs are refused, naming what to set.
    let bare = test_support::require!(app_with(backend, &[]).await);
    let (s, e) = call(
        &bare,
        &bare.api_key,
        Method::POST,
        "/api/runs/inline",
        Some(inline_run()),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["code"], "model_not_configured");
    let detail = e["detail"].as_str().unwrap();
    for what in [
        "PUT /api/models/default",
        "POST /api/model-provider-credentials",
        "LLM_BASE_URL",
    ] {
        assert!(detail.contains(what), "{detail}");
    }
}
