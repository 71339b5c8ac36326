//! Schedules end to end: CRUD and validation, the cron clock firing real runs (fake LLM), the per-poll
//! cap, duplicate fires, and schedules whose agent or end-user actor disappeared.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use appstrate::infra::database::runs::RunFilter;
use appstrate::infra::database::{now, Page};
use appstrate::schedules::{fire, tick_schedule, FireOutcome};
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::FakeLlm;
use test_support::{spawn_app_on, Backend};

const LIMITS: &str = r#"{"per_org_global_rate_per_min": 10000, "max_concurrent_per_org": 500}"#;

async fn llm_app(fake: &FakeLlm, extra: &[(&str, &str)]) -> TestApp {
    llm_app_on(Backend::Sqlite, fake, extra)
        .await
        .expect("SQLite is always available")
}

async fn llm_app_on(backend: Backend, fake: &FakeLlm, extra: &[(&str, &str)]) -> Option<TestApp> {
    let url = fake.url();
    let mut env: Vec<(&str, &str)> = vec![
        ("LLM_BASE_URL", url.as_str()),
        ("LLM_API_KEY", "sk-test-schedules"),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        ("PLATFORM_RUN_LIMITS", LIMITS),
    ];
    env.extend_from_slice(extra);
    spawn_app_on(backend, &env).await
}

fn agent_body(name: &str, input_schema: Value) -> Value {
    json!({
        "manifest": {
            "schema_version": "0.1",
            "name": name,
            "version": "1.0.0",
            "type": "agent",
            "display_name": "Scheduled agent",
            "input": {"schema": input_schema},
        },
        "files": {"prompt.md": "Say hello about {{input.topic}}"}
    })
}

async fn create_agent(app: &TestApp, name: &str) {
    let schema = json!({"type": "object", "properties": {"topic": {"type": "string"}}});
    let r = app
        .key(Method::POST, "/api/packages")
        .json(&agent_body(name, schema))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create_schedule(app: &TestApp, agent: &str, body: Value) -> Value {
    let (status, b) = send(
        app.key(Method::POST, &format!("/api/agents/{agent}/schedules"))
            .json(&body),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    b
}

async fn scheduled_runs(app: &TestApp, schedule_id: &str) -> Vec<Value> {
    let (status, b) = send(app.key(
        Method::GET,
        &format!("/api/runs?scheduleId={schedule_id}&limit=100"),
    ))
    .await;
    assert_eq!(status, 200, "{b}");
    b["data"].as_array().unwrap().clone()
}

async fn wait_all_terminal(app: &TestApp, schedule_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = scheduled_runs(app, schedule_id).await;
        if runs.iter().all(|r| {
            ["success", "failed", "timeout", "cancelled"].contains(&r["status"].as_str().unwrap())
        }) {
            return runs;
        }
        assert!(Instant::now() < deadline, "runs did not finish: {runs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_problem(status: u16, b: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{b}");
    assert_eq!(b["code"], code, "{b}");
}

on_both_backends!(crud_validation_and_impersonation);
async fn crud_validation_and_impersonation(backend: Backend) {
    let fake = FakeLlm::start(vec![]).await;
    let app = test_support::require!(llm_app_on(backend, &fake, &[]).await);
    create_agent(&app, "@sched/crud").await;
    let path = "/api/agents/@sched/crud/schedules";
    // Validation (with the admin token: its own rate-limit bucket, the key's holds 10 creations a minute).
    let post = |body: Value| app.admin(Method::POST, path).json(&body);

    let (s, b) = send(post(json!({"timezone": "UTC"}))).await;
    assert_problem(s, &b, 400, "validation_failed");
    assert_eq!(b["errors"][0]["field"], "cron_expression");
    assert_eq!(b["errors"][0]["code"], "required");
    for bad in ["61 * * * *", "* * * *", "@fortnightly", "0 0 0 1 1 * 2030"] {
        let (s, b) = send(post(json!({"cron_expression": bad}))).await;
        assert_problem(s, &b, 400, "invalid_cron");
        assert_eq!(b["param"], "cron_expression", "{b}");
    }
    let (s, b) = send(post(
        json!({"cron_expression": "* * * * *", "timezone": "Mars/Olympus"}),
    ))
    .await;
    assert_problem(s, &b, 400, "invalid_timezone");
    assert_eq!(b["param"], "timezone");
    let (s, b) = send(post(
        json!({"cron_expression": "* * * * *", "input": {"topic": 5}}),
    ))
    .await;
    assert_problem(s, &b, 400, "validation_failed");
    assert_eq!(b["errors"][0]["field"], "input.topic", "{b}");
    let (s, b) = send(post(json!({"cron_expression": "* * * * *", "extra": 1}))).await;
    assert_problem(s, &b, 400, "validation_failed");
    assert_eq!(b["errors"][0]["field"], "extra");
    assert_eq!(b["errors"][0]["code"], "unknown_field");
    let (s, b) = send(
        app.key(Method::POST, "/api/agents/@sched/missing/schedules")
            .json(&json!({"cron_expression": "* * * * *"})),
    )
    .await;
    assert_problem(s, &b, 404, "agent_not_found");

    // Create: the DTO has exactly the documented fields (SPEC §18.1 plus `disabled_reason`, see
    // docs/decisions.md); 09:00 in Paris is 07:00 or 08:00 UTC.
    let created = create_schedule(
        &app,
        "@sched/crud",
        json!({"name": "Morning", "cron_expression": "0 9 * * *", "timezone": "Europe/Paris",
               "input": {"topic": "news"}}),
    )
    .await;
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "applicationId",
            "createdAt",
            "cron_expression",
            "disabled_reason",
            "enabled",
            "endUserId",
            "id",
            "input",
            "last_run_at",
            "name",
            "next_run_at",
            "packageId",
            "timezone",
            "updatedAt",
            "version_override"
        ]
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sched_"));
    assert_eq!(created["packageId"], "@sched/crud");
    assert_eq!(created["applicationId"], app.app_id);
    assert_eq!(created["endUserId"], Value::Null);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["timezone"], "Europe/Paris");
    assert_eq!(created["input"], json!({"topic": "news"}));
    assert_eq!(created["last_run_at"], Value::Null);
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(created["next_run_at"].clone()).unwrap();
    assert!(next > now());
    assert!(next - now() <= chrono::Duration::hours(24));
    assert!(
        next.format("%H:%M:%S").to_string() == "07:00:00"
            || next.format("%H:%M:%S").to_string() == "08:00:00",
        "{next}"
    );

    // Defaults.
    let other = create_schedule(&app, "@sched/crud", json!({"cron_expression": "@daily"})).await;
    assert_eq!(other["timezone"], "UTC");
    assert_eq!(other["input"], json!({}));
    assert_eq!(other["name"], Value::Null);
    assert_eq!(other["version_override"], Value::Null);

    // Lists.
    let (s, b) = send(app.key(Method::GET, "/api/schedules")).await;
    assert_eq!(s, 200);
    assert_eq!(b["object"], "list");
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    assert_eq!(b["data"][0]["id"], other["id"], "newest first");
    let (_, b) = send(app.key(Method::GET, "/api/schedules?limit=1")).await;
    assert_eq!(b["hasMore"], true);
    let (_, b) = send(app.key(Method::GET, path)).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    let (_, b) = send(app.key(Method::GET, "/api/agents/@sched/other/schedules")).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 0);

    // Read and update.
    let one = format!("/api/schedules/{id}");
    let (s, b) = send(app.key(Method::GET, &one)).await;
    assert_eq!(s, 200);
    assert_eq!(b, created);
    let (s, b) = send(app.key(Method::PUT, &one).json(&json!({"enabled": false}))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["enabled"], false);
    assert_eq!(b["next_run_at"], Value::Null);
    assert_eq!(b["name"], "Morning");
    let (s, b) = send(
        app.key(Method::PUT, &one)
            .json(&json!({"enabled": true, "cron_expression": "@hourly", "name": null})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["enabled"], true);
    assert_eq!(b["cron_expression"], "@hourly");
    assert_eq!(b["name"], Value::Null);
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(b["next_run_at"].clone()).unwrap();
    assert_eq!(next.format("%M:%S").to_string(), "00:00", "{next}");
    let (s, b) = send(app.key(Method::PUT, &one).json(&json!({"bogus": 1}))).await;
    assert_problem(s, &b, 400, "validation_failed");
    let (s, b) = send(
        app.key(Method::PUT, &one)
            .json(&json!({"cron_expression": "nope"})),
    )
    .await;
    assert_problem(s, &b, 400, "invalid_cron");
    let (s, b) = send(
        app.key(Method::PUT, &one)
            .json(&json!({"timezone": "Nowhere"})),
    )
    .await;
    assert_problem(s, &b, 400, "invalid_timezone");
    let (s, b) = send(
        app.key(Method::PUT, &one)
            .json(&json!({"input": {"topic": []}})),
    )
    .await;
    assert_problem(s, &b, 400, "validation_failed");
    let (s, b) = send(
        app.key(Method::PUT, "/api/schedules/sched_nope")
            .json(&json!({})),
    )
    .await;
    assert_problem(s, &b, 404, "not_found");

    // Impersonation: an end-user's schedule is attributed to it; end-users see only their own.
    let (s, eu) = send(
        app.key(Method::POST, "/api/end-users")
            .json(&json!({"name": "Ada"})),
    )
    .await;
    assert_eq!(s, 201, "{eu}");
    let eu_id = eu["id"].as_str().unwrap().to_string();
    let (s, mine) = send(
        app.key(Method::POST, path)
            .header("Appstrate-User", &eu_id)
            .json(&json!({"cron_expression": "*/5 * * * *"})),
    )
    .await;
    assert_eq!(s, 201, "{mine}");
    assert_eq!(mine["endUserId"], eu_id.as_str());
    let (_, b) = send(
        app.key(Method::GET, "/api/schedules")
            .header("Appstrate-User", &eu_id),
    )
    .await;
    let ids: Vec<&Value> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&mine["id"]]);
    let (s, _) = send(app.key(Method::GET, &one).header("Appstrate-User", &eu_id)).await;
    assert_eq!(s, 404);
    let (s, _) = send(
        app.key(Method::DELETE, &one)
            .header("Appstrate-User", &eu_id),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = send(app.key(Method::GET, "/api/schedules")).await;
    assert_eq!(s, 200);

    // Delete.
    let (s, _) = send(app.key(Method::DELETE, &one)).await;
    assert_eq!(s, 204);
    let (s, _) = send(app.key(Method::GET, &one)).await;
    assert_eq!(s, 404);
    let (s, _) = send(app.key(Method::DELETE, &one)).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn scopes_are_enforced() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    create_agent(&app, "@sched/scoped").await;
    let (s, b) = send(
        app.admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": "reader", "scopes": ["schedules:read"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let key = b["key"].as_str().unwrap().to_string();
    let r = app
        .client
        .post(app.url("/api/agents/@sched/scoped/schedules"))
        .bearer_auth(&key)
        .json(&json!({"cron_expression": "@daily"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b["detail"],
        "Insufficient permissions: schedules:write required"
    );
    let r = app
        .client
        .get(app.url("/api/schedules"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The admin token can create; the schedule then runs as the admin.
    let (s, b) = send(
        app.admin(Method::POST, "/api/agents/@sched/scoped/schedules")
            .json(&json!({"cron_expression": "@daily"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

#[tokio::test]
async fn every_two_seconds_fires_until_disabled() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[("SCHEDULER_POLL_INTERVAL_SECONDS", "1")]).await;
    create_agent(&app, "@sched/ticker").await;
    let created = create_schedule(
        &app,
        "@sched/ticker",
        json!({"cron_expression": "*/2 * * * * *", "input": {"topic": "time"}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(7_500)).await;

    // Disable, then let any in-flight tick finish.
    let (s, b) = send(
        app.key(Method::PUT, &format!("/api/schedules/{id}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let window = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let runs = wait_all_terminal(&app, &id).await;
    // About one fire every 2 s over the window (the first poll may come up to 1 s after creation).
    assert!(
        runs.len() >= 2 && runs.len() as f64 <= window / 2.0 + 1.0,
        "{} runs in {window:.1}s",
        runs.len()
    );
    let mut seen = HashSet::new();
    for r in &runs {
        assert_eq!(r["scheduleId"], id.as_str());
        assert_eq!(r["packageId"], "@sched/ticker");
        assert_eq!(r["input"], json!({"topic": "time"}));
        assert_eq!(r["status"], "success", "{r}");
        let row = app
            .state()
            .infra
            .db
            .get_run(r["id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        let at = row.scheduled_for.expect("scheduled_for");
        assert_eq!(at.timestamp() % 2, 0, "{at}");
        assert_eq!(at.timestamp_subsec_micros(), 0, "{at}");
        assert!(seen.insert(at), "duplicate scheduled_for {at}");
    }
    let (_, b) = send(app.key(Method::GET, &format!("/api/schedules/{id}"))).await;
    assert_eq!(b["enabled"], false);
    assert_ne!(b["last_run_at"], Value::Null);

    // Disabled: nothing more fires.
    let count = runs.len();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(scheduled_runs(&app, &id).await.len(), count);
}

on_both_backends!(one_poll_fires_at_most_five_and_a_duplicate_is_a_no_op);
async fn one_poll_fires_at_most_five_and_a_duplicate_is_a_no_op(backend: Backend) {
    let fake = FakeLlm::start(vec![]).await;
    let app = test_support::require!(llm_app_on(backend, &fake, &[]).await); // the default 30 s poll stays out of the way
    create_agent(&app, "@sched/burst").await;
    let created = create_schedule(
        &app,
        "@sched/burst",
        json!({"cron_expression": "* * * * * *"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let state = app.state();
    let row = state
        .infra
        .db
        .get_schedule(&app.app_id, id)
        .await
        .unwrap()
        .unwrap();
    // A 10-second window holds 10 occurrences: 5 fire, the older 5 are coalesced.
    let after = row.next_run_at.unwrap();
    let until = after + chrono::Duration::seconds(10);
    let outcomes = tick_schedule(state, &row, after, until).await;
    assert_eq!(outcomes.len(), 5);
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, FireOutcome::Started(_))));
    let runs = wait_all_terminal(&app, id).await;
    assert_eq!(runs.len(), 5);
    let fired = state
        .infra
        .db
        .get_schedule(&app.app_id, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fired.last_run_at, Some(until));
    assert_eq!(
        fired.next_run_at,
        Some(until + chrono::Duration::seconds(1))
    );

    // The same occurrence again is a no-op (unique schedule_id, scheduled_for).
    assert_eq!(fire(state, &row, until).await, FireOutcome::Duplicate);
    // The same window again fires nothing: it is before the new next_run_at.
    assert!(tick_schedule(state, &fired, after, until).await.is_empty());
    assert_eq!(scheduled_runs(&app, id).await.len(), 5);
}

#[tokio::test]
async fn a_vanished_agent_or_end_user_fails_the_run_and_disables_the_schedule() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[("SCHEDULER_POLL_INTERVAL_SECONDS", "1")]).await;
    let state = app.state();

    // The agent is deleted: the cron clock records a failed run with the reason and disables the schedule.
    // Created disabled so that nothing fires before the agent is gone, then enabled.
    create_agent(&app, "@sched/gone").await;
    let created = create_schedule(
        &app,
        "@sched/gone",
        json!({"cron_expression": "* * * * * *", "enabled": false}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let (s, b) = send(app.key(Method::DELETE, "/api/packages/@sched/gone")).await;
    assert!(s == 204 || s == 200, "{s} {b}");
    let (s, b) = send(
        app.key(Method::PUT, &format!("/api/schedules/{id}"))
            .json(&json!({"enabled": true})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let runs = scheduled_runs(&app, &id).await;
        if !runs.is_empty() {
            break runs;
        }
        assert!(Instant::now() < deadline, "no failed run was recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("@sched/gone"),
        "{run}"
    );
    assert_eq!(run["packageId"], "@sched/gone");
    assert_ne!(run["completed_at"], Value::Null);
    let (_, b) = send(app.key(Method::GET, &format!("/api/schedules/{id}"))).await;
    assert_eq!(b["enabled"], false, "{b}");
    assert_eq!(b["next_run_at"], Value::Null);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let count = scheduled_runs(&app, &id).await.len();
    assert!(count <= 5, "{count}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(scheduled_runs(&app, &id).await.len(), count);

    // An end-user actor is deleted: the next fire fails, naming why, and disables the schedule.
    create_agent(&app, "@sched/kept").await;
    let (_, eu) = send(
        app.key(Method::POST, "/api/end-users")
            .json(&json!({"name": "Grace"})),
    )
    .await;
    let eu_id = eu["id"].as_str().unwrap().to_string();
    let (s, created) = send(
        app.key(Method::POST, "/api/agents/@sched/kept/schedules")
            .header("Appstrate-User", &eu_id)
            .json(&json!({"cron_expression": "0 0 1 1 *", "input": {"topic": "x"}})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let sid = created["id"].as_str().unwrap().to_string();
    let (s, _) = send(app.key(Method::DELETE, &format!("/api/end-users/{eu_id}"))).await;
    assert_eq!(s, 204);
    // Deleting the end-user disables its schedules (§6).
    let (_, b) = send(app.key(Method::GET, &format!("/api/schedules/{sid}"))).await;
    assert_eq!(b["enabled"], false, "{b}");
    assert_eq!(b["endUserId"], Value::Null, "{b}");
    assert_eq!(b["next_run_at"], Value::Null, "{b}");
    // Re-enabled, its next fire fails, naming why, and disables it again.
    let (s, b) = send(
        app.key(Method::PUT, &format!("/api/schedules/{sid}"))
            .json(&json!({"enabled": true})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let row = state
        .infra
        .db
        .get_schedule(&app.app_id, &sid)
        .await
        .unwrap()
        .unwrap();
    let at = row.next_run_at.unwrap();
    match fire(state, &row, at).await {
        FireOutcome::Failed(reason) => assert!(reason.contains("end-user"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let after = state
        .infra
        .db
        .get_schedule(&app.app_id, &sid)
        .await
        .unwrap()
        .unwrap();
    assert!(!after.enabled);
    let page = state
        .infra
        .db
        .list_runs(
            &app.app_id,
            &RunFilter {
                schedule_id: Some(sid.clone()),
                ..Default::default()
            },
            &Page {
                limit: 10,
                starting_after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].status, "failed");
    assert_eq!(page.items[0].scheduled_for, Some(at));
    assert!(page.items[0].error.as_deref().unwrap().contains("end-user"));
}
