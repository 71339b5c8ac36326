//! Models and providers per organization (docs/models.md), end to end against the scripted fake LLM in
//! both API shapes: provider keys per organization injected by the sidecar, the resolution order, a
//! model deleted under a schedule, the test call, the usage ledger and where keys must never appear.

use std::time::{Duration, Instant};

use appstrate::schedules::{fire, FireOutcome};
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::{spawn_app_on, Backend};

const KEY_A: &str = "sk-org-a-canary-7a1f03";
const KEY_B: &str = "sk-ant-org-b-canary-92bd44";
const INSTANCE_KEY: &str = "sk-instance-canary-5e0c11";

/// One organization's credentials.
struct Org {
    org_id: String,
    app_id: String,
    admin: String,
    key: String,
}

impl Org {
    fn of(app: &TestApp) -> Org {
        Org {
            org_id: app.org_id.clone(),
            app_id: app.app_id.clone(),
            admin: app.admin_token.clone(),
            key: app.api_key.clone(),
        }
    }

    /// A second organization on the same server.
    async fn second(app: &TestApp, name: &str) -> Org {
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

async fn call(
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
async fn add_model(
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

async fn set_default(app: &TestApp, org: &Org, body: Value) {
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

fn inline_run() -> Value {
    json!({"manifest": {"schema_version": "0.1", "name": "@tests/inline", "version": "1.0.0",
        "type": "agent", "display_name": "Inline"}, "prompt": "Say hello."})
}

async fn run_inline(app: &TestApp, org: &Org, extra: Value) -> Value {
    let mut body = inline_run();
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (s, run) = call(app, &org.key, Method::POST, "/api/runs/inline", Some(body)).await;
    assert_eq!(s, 201, "{run}");
    wait_terminal(app, org, run["id"].as_str().unwrap()).await
}

async fn wait_terminal(app: &TestApp, org: &Org, id: &str) -> Value {
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

async fn app_with(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
    let mut env = vec![("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1")];
    env.extend_from_slice(extra);
    spawn_app_on(backend, &env).await
}

fn requests_for_model(
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

#[tokio::test]
async fn a_model_deleted_while_a_schedule_uses_it_fails_the_next_occurrence_only() {
    let fake = FakeLlm::start(vec![]).await;
    let app = app_with(Backend::Sqlite, &[]).await.unwrap();
    let state = app.state();
    let org = Org::of(&app);
    for name in ["@models/daily", "@models/other"] {
        let (s, b) = call(
            &app,
            &org.key,
            Method::POST,
            "/api/packages",
            Some(
                json!({"manifest": {"schema_version": "0.1", "name": name, "version": "1.0.0",
                "type": "agent", "display_name": "Daily"}, "files": {"prompt.md": "Report."}}),
            ),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let (_, chosen) = add_model(
        &app,
        &org,
        "openai",
        &fake.url(),
        KEY_A,
        json!({"modelId": "chosen"}),
    )
    .await;
    let (_, fallback) = add_model(
        &app,
        &org,
        "openai",
        &fake.url(),
        KEY_A,
        json!({"modelId": "fallback"}),
    )
    .await;
    set_default(&app, &org, json!({"modelId": fallback})).await;
    call(
        &app,
        &org.key,
        Method::PUT,
        "/api/agents/@models/daily/model",
        Some(json!({"modelId": chosen})),
    )
    .await;
    let (s, sched) = call(
        &app,
        &org.key,
        Method::POST,
        "/api/agents/@models/daily/schedules",
        Some(json!({"cron_expression": "0 0 1 1 *"})),
    )
    .await;
    assert_eq!(s, 201, "{sched}");
    let sid = sched["id"].as_str().unwrap().to_string();
    let row = || async {
        state
            .infra
            .db
            .get_schedule(&org.app_id, &sid)
            .await
            .unwrap()
            .unwrap()
    };

    // While the model exists, an occurrence runs on it.
    fake.push(Turn::text("first"));
    let first = row().await;
    let at = first.next_run_at.unwrap();
    let FireOutcome::Started(run_id) = fire(state, &first, at).await else {
        panic!("the first occurrence did not start")
    };
    let run = wait_terminal(&app, &org, &run_id).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(fake.requests().last().unwrap().json()["model"], "chosen");

    // The model is deleted: the next occurrence fails, saying which choice to change.
    let (s, _) = call(
        &app,
        &org.admin,
        Method::DELETE,
        &format!("/api/models/{chosen}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (_, v) = call(
        &app,
        &org.key,
        Method::GET,
        "/api/agents/@models/daily/model",
        None,
    )
    .await;
    assert_eq!(v["effective"], Value::Null, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&chosen), "{v}");
    let requests_before = fake.requests().len();
    let second = row().await;
    match fire(state, &second, at + chrono::Duration::seconds(60)).await {
        FireOutcome::Failed(reason) => {
            assert!(reason.contains("@models/daily"), "{reason}");
            assert!(reason.contains(&chosen), "{reason}");
            assert!(reason.contains("no longer exists"), "{reason}");
            assert!(
                reason.contains("PUT /api/agents/@models/daily/model"),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        fake.requests().len(),
        requests_before,
        "a failed occurrence reached the provider"
    );
    let (_, runs) = call(
        &app,
        &org.key,
        Method::GET,
        &format!("/api/runs?scheduleId={sid}"),
        None,
    )
    .await;
    let failed = &runs["data"][0];
    assert_eq!(failed["status"], "failed", "{runs}");
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("no longer exists"));

    // Nothing else broke: the schedule stays enabled, other agents run on the default, and once the
    // agent's choice is cleared the schedule's next occurrence runs again.
    assert!(row().await.enabled);
    fake.push(Turn::text("other"));
    let (s, r) = call(
        &app,
        &org.key,
        Method::POST,
        "/api/agents/@models/other/run",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let r = wait_terminal(&app, &org, r["id"].as_str().unwrap()).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(fake.requests().last().unwrap().json()["model"], "fallback");
    call(
        &app,
        &org.key,
        Method::PUT,
        "/api/agents/@models/daily/model",
        Some(json!({"modelId": null})),
    )
    .await;
    fake.push(Turn::text("third"));
    let third = row().await;
    let FireOutcome::Started(run_id) =
        fire(state, &third, at + chrono::Duration::seconds(120)).await
    else {
        panic!("the occurrence after the fix did not start")
    };
    assert_eq!(
        wait_terminal(&app, &org, &run_id).await["status"],
        "success"
    );
}

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

on_both_backends!(usage_totals_equal_the_sum_of_the_calls);
async fn usage_totals_equal_the_sum_of_the_calls(backend: Backend) {
    let fake = FakeLlm::start(vec![]).await;
    let app = test_support::require!(app_with(backend, &[]).await);
    let org = Org::of(&app);
    let (_, model) = add_model(
        &app,
        &org,
        "openai",
        &fake.url(),
        KEY_A,
        json!({"modelId": "priced", "contextWindow": 128000,
               "pricing": {"input": 2.0, "output": 10.0}}),
    )
    .await;
    set_default(&app, &org, json!({"modelId": model})).await;

    // Run 1: two calls at the first price.
    fake.push(
        Turn::tool_call("log", json!({"level": "info", "message": "step"})).with_usage(1000, 200),
    );
    fake.push(Turn::text("done").with_usage(3000, 400));
    let run1 = run_inline(&app, &org, json!({})).await;
    assert_eq!(run1["status"], "success", "{run1}");
    let cost1 = (1000.0 * 2.0 + 200.0 * 10.0 + 3000.0 * 2.0 + 400.0 * 10.0) / 1e6;
    assert!(
        (run1["cost"].as_f64().unwrap() - cost1).abs() < 1e-12,
        "{run1}"
    );
    assert_eq!(run1["cost_pricing_status"], "priced");

    // The price changes: later calls only.
    let (s, v) = call(
        &app,
        &org.admin,
        Method::PUT,
        &format!("/api/models/{model}"),
        Some(json!({"pricing": {"input": 4.0, "output": 20.0}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    fake.push(Turn::text("again").with_usage(500, 100));
    let run2 = run_inline(&app, &org, json!({})).await;
    let cost2 = (500.0 * 4.0 + 100.0 * 20.0) / 1e6;
    assert!(
        (run2["cost"].as_f64().unwrap() - cost2).abs() < 1e-12,
        "{run2}"
    );

    let (s, u) = call(
        &app,
        &org.admin,
        Method::GET,
        "/api/usage?groupBy=run",
        None,
    )
    .await;
    assert_eq!(s, 200, "{u}");
    let per_run = |id: &Value| {
        u["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| &r["key"] == id)
            .unwrap()
            .clone()
    };
    let r1 = per_run(&run1["id"]);
    assert_eq!(r1["calls"], 2);
    assert_eq!(r1["inputTokens"], 4000);
    assert_eq!(r1["outputTokens"], 600);
    assert!((r1["cost"].as_f64().unwrap() - cost1).abs() < 1e-12, "{r1}");
    let r2 = per_run(&run2["id"]);
    assert_eq!(r2["calls"], 1);
    assert!((r2["cost"].as_f64().unwrap() - cost2).abs() < 1e-12, "{r2}");
    // The organization's totals are the sum of the calls, as are the agent's and application's.
    assert_eq!(u["totals"]["calls"], 3);
    assert_eq!(u["totals"]["inputTokens"], 4500);
    assert_eq!(u["totals"]["outputTokens"], 700);
    assert_eq!(u["totals"]["unpricedCalls"], 0);
    assert!(
        (u["totals"]["cost"].as_f64().unwrap() - (cost1 + cost2)).abs() < 1e-12,
        "{u}"
    );
    for group in ["agent", "application", "model", "organization"] {
        let (_, g) = call(
            &app,
            &org.admin,
            Method::GET,
            &format!("/api/usage?groupBy={group}"),
            None,
        )
        .await;
        assert_eq!(g["data"].as_array().unwrap().len(), 1, "{group}: {g}");
        assert_eq!(g["data"][0]["calls"], 3, "{group}: {g}");
        assert!((g["data"][0]["cost"].as_f64().unwrap() - (cost1 + cost2)).abs() < 1e-12);
    }
    // A date range before the calls is empty; bad parameters name themselves.
    let (_, g) = call(
        &app,
        &org.admin,
        Method::GET,
        "/api/usage?from=2020-01-01&to=2020-02-01",
        None,
    )
    .await;
    assert_eq!(g["totals"]["calls"], 0, "{g}");
    assert_eq!(g["totals"]["cost"], Value::Null);
    let (s, e) = call(
        &app,
        &org.admin,
        Method::GET,
        "/api/usage?groupBy=week",
        None,
    )
    .await;
    assert_eq!((s, e["param"].clone()), (400, json!("groupBy")), "{e}");
    let (s, e) = call(
        &app,
        &org.admin,
        Method::GET,
        "/api/usage?from=yesterday",
        None,
    )
    .await;
    assert_eq!((s, e["param"].clone()), (400, json!("from")), "{e}");
    // The ledger holds one row per model call.
    let rows = app
        .state()
        .infra
        .db
        .usage_totals(
            &org.org_id,
            &appstrate::infra::database::models::UsageFilter {
                from: chrono::Utc::now() - chrono::Duration::days(1),
                to: chrono::Utc::now() + chrono::Duration::days(1),
                application_id: None,
                agent_id: None,
                run_id: Some(run1["id"].as_str().unwrap().into()),
            },
            appstrate::infra::database::models::UsageGroup::Run,
        )
        .await
        .unwrap();
    assert_eq!(rows[0].calls, 2);
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
