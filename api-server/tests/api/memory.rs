//! Agent memory between runs: the real runner remembering, pinning and checkpointing against the
//! scripted fake LLM; end-user isolation; concurrent writers and finalizes on both databases; limits and
//! the persistence routes.

use std::os::unix::fs::PermissionsExt;

use appstrate::runs::sink::sign;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{offered_tools, system_prompt, FakeLlm, Turn};
use test_support::{spawn_app_on, Backend};

use super::runs::{llm_app, start, wait_terminal};

/// Creates (or re-creates) the package agent `@tests/memo` whose prompt does not place the memory itself,
/// so the runner adds its `## Memory` section.
pub(crate) async fn create_agent(app: &TestApp, name: &str, extra: Value) -> String {
    let mut manifest = json!({"schema_version": "0.1", "name": format!("@tests/{name}"), "version": "1.0.0",
        "type": "agent", "display_name": "Memo"});
    for (k, v) in extra.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    let r = app
        .key(Method::POST, "/api/packages")
        .json(
            &json!({"manifest": manifest, "files": {"prompt.md": "Keep track of the customer.\n"}}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{body}");
    format!("@tests/{name}")
}

async fn persistence(app: &TestApp, agent: &str, end_user: Option<&str>) -> Value {
    let mut req = app.key(Method::GET, &format!("/api/agents/{agent}/persistence"));
    if let Some(eu) = end_user {
        req = req.header("Appstrate-User", eu);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn end_user(app: &TestApp, name: &str) -> String {
    let r: Value = app
        .key(Method::POST, "/api/end-users")
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"].as_str().unwrap().to_string()
}

/// Two consecutive runs: the second sees what the first remembered, pinned and checkpointed.
#[tokio::test]
async fn a_second_run_sees_what_the_first_remembered_pinned_and_checkpointed() {
    let llm = FakeLlm::start(vec![
        Turn::tool_call("remember", json!({"content": "The customer prefers email"}))
            .and_tool_call("pin", json!({"name": "city", "value": "Paris"}))
            .and_tool_call("set_checkpoint", json!({"data": {"page": 2}})),
        Turn::text("Done."),
        Turn::tool_call("recall_memory", json!({"query": "EMAIL preferences"})),
        Turn::text("Done again."),
    ])
    .await;
    let app = llm_app(&llm, &[]).await;
    let agent = create_agent(&app, "memo", json!({})).await;
    let first = start(&app, &format!("/api/agents/{agent}/run"), json!({})).await;
    let first = wait_terminal(&app, first["id"].as_str().unwrap()).await;
    assert_eq!(first["status"], "success", "{first}");
    let second = start(&app, &format!("/api/agents/{agent}/run"), json!({})).await;
    let second = wait_terminal(&app, second["id"].as_str().unwrap()).await;
    assert_eq!(second["status"], "success", "{second}");

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 4);
    let tools = offered_tools(&reqs[0]);
    for t in [
        "remember",
        "recall_memory",
        "pin",
        "set_checkpoint",
        "publish_document",
    ] {
        assert!(tools.iter().any(|x| x == t), "{t} not offered: {tools:?}");
    }
    let before = system_prompt(&reqs[0]).unwrap();
    assert!(!before.contains("## Memory"), "{before}");
    let after = system_prompt(&reqs[2]).unwrap();
    assert!(after.contains("The customer prefers email"), "{after}");
    assert!(after.contains("- city: \"Paris\""), "{after}");
    assert!(after.contains("\"page\": 2"), "{after}");
    // The recall went to the platform and came back to the model.
    let recall = reqs[3].body_text();
    assert!(recall.contains("The customer prefers email"), "{recall}");

    let p = persistence(&app, &agent, None).await;
    assert_eq!(p["memories"][0]["content"], "The customer prefers email");
    assert_eq!(p["memories"][0]["runId"], first["id"]);
    assert_eq!(p["pinned"][0]["name"], "city");
    assert_eq!(p["pinned"][0]["value"], "Paris");
    assert_eq!(p["checkpoint"]["value"], json!({"page": 2}));
    assert_eq!(p["checkpoint"]["runId"], first["id"]);
}

/// Memory written by a run of end-user A is never visible to a run of end-user B (nor to runs without an
/// end-user).
#[tokio::test]
async fn memory_is_isolated_per_end_user() {
    let llm = FakeLlm::start(vec![
        Turn::tool_call("remember", json!({"content": "A's account number is 4242"}))
            .and_tool_call("pin", json!({"name": "owner", "value": "A"})),
        Turn::text("Done."),
        Turn::text("B done."),
    ])
    .await;
    let app = llm_app(&llm, &[]).await;
    let agent = create_agent(&app, "iso", json!({})).await;
    let a = end_user(&app, "A").await;
    let b = end_user(&app, "B").await;
    for eu in [&a, &b] {
        let r = app
            .key(Method::POST, &format!("/api/agents/{agent}/run"))
            .header("Appstrate-User", eu.as_str())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let run: Value = r.json().await.unwrap();
        let done = wait_terminal(&app, run["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    let reqs = llm.requests();
    let b_prompt = system_prompt(&reqs[2]).unwrap();
    assert!(
        !b_prompt.contains("4242") && !b_prompt.contains("owner"),
        "{b_prompt}"
    );
    let pa = persistence(&app, &agent, Some(&a)).await;
    assert_eq!(pa["memories"].as_array().unwrap().len(), 1);
    assert_eq!(pa["endUserId"], a.as_str());
    let pb = persistence(&app, &agent, Some(&b)).await;
    assert!(pb["memories"].as_array().unwrap().is_empty(), "{pb}");
    assert!(pb["pinned"].as_array().unwrap().is_empty(), "{pb}");
    let none = persistence(&app, &agent, None).await;
    assert!(none["memories"].as_array().unwrap().is_empty());
    // Without impersonation, `endUserId` addresses one end-user's state.
    let r: Value = app
        .key(
            Method::GET,
            &format!("/api/agents/{agent}/persistence?endUserId={a}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["memories"][0]["content"], "A's account number is 4242");
    // An impersonated end-user cannot address another one's.
    let r = app
        .key(
            Method::GET,
            &format!("/api/agents/{agent}/persistence?endUserId={a}"),
        )
        .header("Appstrate-User", b.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// A package run whose "runner" only sleeps, so the test is the runner: it signs requests with the run's
/// sink secret.
struct Silent {
    app: TestApp,
    agent: String,
    _llm: FakeLlm,
    _dir: tempfile::TempDir,
}

async fn silent_app(backend: Backend, extra: &[(&str, &str)]) -> Option<Silent> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silent-runner");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let llm = FakeLlm::start(Vec::<Turn>::new()).await;
    let url = llm.url();
    let mut env = vec![
        ("RUNNER_BIN", script.to_str().unwrap()),
        ("LLM_BASE_URL", url.as_str()),
        ("LLM_API_KEY", "sk-test"),
        ("LLM_MODEL", "m"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
    ];
    env.extend_from_slice(extra);
    let app = spawn_app_on(backend, &env).await?;
    let agent = create_agent(&app, "race", json!({})).await;
    Some(Silent {
        app,
        agent,
        _llm: llm,
        _dir: dir,
    })
}

pub(crate) struct RunHandle {
    pub id: String,
    pub secret: String,
}

pub(crate) async fn run_handle(app: &TestApp, path: &str) -> RunHandle {
    let run = start(app, path, json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    let row = app.state().infra.db.get_run(&id).await.unwrap().unwrap();
    let secret = String::from_utf8(
        app.state()
            .keyring
            .decrypt(&row.sink_secret_encrypted)
            .unwrap(),
    )
    .unwrap();
    RunHandle { id, secret }
}

/// A request signed as the run's runner.
pub(crate) async fn signed(
    app: &TestApp,
    run: &RunHandle,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let raw = body.map(|b| b.to_string()).unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let ts = chrono::Utc::now().timestamp();
    let sig = sign(run.secret.as_bytes(), &id, ts, raw.as_bytes());
    let mut req = app
        .client
        .request(method, app.url(&format!("/api/runs/{}{path}", run.id)))
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", format!("v1,{sig}"));
    if body.is_some() {
        req = req.header("content-type", "application/json").body(raw);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Two runs of one agent writing and finalizing together: no memory is lost, the limit holds exactly,
/// and the checkpoint follows the last-writer rule (the run created last wins, whatever the order in
/// which runs finish).
async fn concurrent_writers_and_finalize(backend: Backend) {
    let s = test_support::require!(
        silent_app(
            backend,
            &[("MEMORY_MAX_ENTRIES", "15"), ("PINNED_MAX_SLOTS", "2")]
        )
        .await
    );
    let app = &s.app;
    let path = format!("/api/agents/{}/run", s.agent);
    let older = run_handle(app, &path).await;
    let newer = run_handle(app, &path).await;

    // 2 × 10 concurrent memories against a limit of 15: exactly 15 are kept, the rest told why.
    let writes = (0..20).map(|i| {
        let run = if i % 2 == 0 { &older } else { &newer };
        async move {
            signed(
                app,
                run,
                Method::POST,
                "/memories",
                Some(&json!({"content": format!("fact {i}")})),
            )
            .await
        }
    });
    let results = futures::future::join_all(writes).await;
    let kept = results.iter().filter(|(s, _)| *s == 201).count();
    let full: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 409)
        .map(|(_, b)| b)
        .collect();
    assert_eq!((kept, full.len()), (15, 5), "{results:?}");
    assert_eq!(full[0]["code"], "memory_full");
    assert!(
        full[0]["detail"]
            .as_str()
            .unwrap()
            .contains("MEMORY_MAX_ENTRIES=15"),
        "{}",
        full[0]
    );

    // The newer run finalizes first, the older one right after: the newer run's checkpoint stays.
    let fin_newer = json!({"status": "success", "checkpoint": {"from": "newer"}});
    let (a, b) = tokio::join!(
        signed(
            app,
            &newer,
            Method::POST,
            "/events/finalize",
            Some(&fin_newer)
        ),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            signed(
                app,
                &older,
                Method::POST,
                "/events/finalize",
                Some(&json!({"status": "success", "checkpoint": {"from": "older"}})),
            )
            .await
        }
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let p = persistence(app, &s.agent, None).await;
    assert_eq!(p["memories"].as_array().unwrap().len(), 15);
    let sources: std::collections::HashSet<&str> = p["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["runId"].as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), 2, "memories of both runs are kept");
    assert_eq!(p["checkpoint"]["value"], json!({"from": "newer"}));
    assert_eq!(p["checkpoint"]["runId"], newer.id.as_str());

    // Two more runs finalizing at the same instant: one consistent checkpoint, the newest run's.
    let third = run_handle(app, &path).await;
    let fourth = run_handle(app, &path).await;
    let fin_third = json!({"status": "success", "checkpoint": {"from": "third"}});
    let fin_fourth = json!({"status": "success", "checkpoint": {"from": "fourth"}});
    let (c, d) = tokio::join!(
        signed(
            app,
            &third,
            Method::POST,
            "/events/finalize",
            Some(&fin_third)
        ),
        signed(
            app,
            &fourth,
            Method::POST,
            "/events/finalize",
            Some(&fin_fourth)
        ),
    );
    assert_eq!((c.0, d.0), (200, 200));
    let p = persistence(app, &s.agent, None).await;
    assert_eq!(p["checkpoint"]["value"], json!({"from": "fourth"}));
}

on_both_backends!(concurrent_writers_and_finalize);

/// Limits with clear errors, and the persistence routes: delete one memory, one pinned slot, wipe.
#[tokio::test]
async fn limits_and_persistence_routes() {
    let s = silent_app(
        Backend::Sqlite,
        &[
            ("PINNED_MAX_SLOTS", "2"),
            ("MEMORY_ENTRY_MAX_BYTES", "20"),
            ("CHECKPOINT_MAX_BYTES", "32"),
        ],
    )
    .await
    .unwrap();
    let app = &s.app;
    let run = run_handle(app, &format!("/api/agents/{}/run", s.agent)).await;
    let (status, body) = signed(
        app,
        &run,
        Method::POST,
        "/memories",
        Some(&json!({"content": "x".repeat(21)})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "content");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("MEMORY_ENTRY_MAX_BYTES"));
    let (status, mem) = signed(
        app,
        &run,
        Method::POST,
        "/memories",
        Some(&json!({"content": "short"})),
    )
    .await;
    assert_eq!(status, 201);
    for (name, want) in [("a", 200), ("b", 200), ("a", 200), ("c", 409)] {
        let (status, body) = signed(
            app,
            &run,
            Method::POST,
            "/pinned",
            Some(&json!({"name": name, "value": {"v": name}})),
        )
        .await;
        assert_eq!(status, want, "{name}: {body}");
        if status == 409 {
            assert!(body["detail"]
                .as_str()
                .unwrap()
                .contains("PINNED_MAX_SLOTS=2"));
        }
    }
    let (status, body) = signed(
        app,
        &run,
        Method::POST,
        "/pinned",
        Some(&json!({"name": "bad name", "value": 1})),
    )
    .await;
    assert_eq!(
        (status, body["errors"][0]["field"].clone()),
        (400, json!("name"))
    );

    let p = persistence(app, &s.agent, None).await;
    assert_eq!(p["pinned"].as_array().unwrap().len(), 2);
    assert_eq!(p["usage"]["memories"], 1);
    let base = format!("/api/agents/{}/persistence", s.agent);
    let del = |path: String| async move {
        app.key(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        del(format!("{base}/memories/{}", mem["id"].as_str().unwrap())).await,
        204
    );
    assert_eq!(del(format!("{base}/memories/mem_missing")).await, 404);
    assert_eq!(del(format!("{base}/pinned/a")).await, 204);
    let pin_b = persistence(app, &s.agent, None).await["pinned"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(del(format!("{base}/pinned/{pin_b}")).await, 204);

    // A checkpoint over its limit is not kept (the run still finalizes).
    let (status, _) = signed(
        app,
        &run,
        Method::POST,
        "/events/finalize",
        Some(&json!({"status": "success", "checkpoint": {"big": "y".repeat(64)}})),
    )
    .await;
    assert_eq!(status, 200);
    let p = persistence(app, &s.agent, None).await;
    assert!(p["checkpoint"].is_null(), "{p}");

    let run2 = run_handle(app, &format!("/api/agents/{}/run", s.agent)).await;
    signed(
        app,
        &run2,
        Method::POST,
        "/memories",
        Some(&json!({"content": "again"})),
    )
    .await;
    assert_eq!(del(base.clone()).await, 204);
    let p = persistence(app, &s.agent, None).await;
    assert!(p["memories"].as_array().unwrap().is_empty());
    // A key without agents:run cannot wipe.
    let r: Value = app
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "reader", "scopes": ["agents:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = app
        .client
        .delete(app.url(&base))
        .bearer_auth(r["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Inline runs have no persistent memory: the runner is not offered the memory tools.
#[tokio::test]
async fn inline_runs_have_no_memory_tools() {
    let llm = FakeLlm::start(vec![Turn::text("ok")]).await;
    let app = llm_app(&llm, &[]).await;
    let run = start(
        &app,
        "/api/runs/inline",
        super::runs::inline(json!({}), "x"),
    )
    .await;
    wait_terminal(&app, run["id"].as_str().unwrap()).await;
    let tools = offered_tools(&llm.requests()[0]);
    assert!(!tools.iter().any(|t| t == "remember"), "{tools:?}");
    assert!(tools.iter().any(|t| t == "publish_document"), "{tools:?}");
}
