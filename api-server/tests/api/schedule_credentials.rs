//! A schedule starts runs, so it needs the authority to start them: `agents:run` to create or edit it, and
//! at every fire a creating credential that still exists, is not revoked or expired, and may start runs.
//! Otherwise the occurrence is skipped and the schedule disabled with a reason the API shows.

use appstrate::crypto::sha256_hex;
use appstrate::infra::database::runs::RunFilter;
use appstrate::infra::database::schedules::ScheduleRow;
use appstrate::infra::database::{now, Page};
use appstrate::schedules::{fire, tick_schedule, FireOutcome};
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::FakeLlm;

use crate::runs::llm_app;

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create_agent(app: &TestApp, name: &str) {
    let (s, b) = answer(app.key(Method::POST, "/api/packages").json(&json!({
        "manifest": {"schema_version": "0.1", "name": name, "version": "1.0.0",
                     "type": "agent", "display_name": "Scheduled"},
        "files": {"prompt.md": "Hello"},
    })))
    .await;
    assert_eq!(s, 201, "{b}");
}

/// A new API key of the default application: (id, secret).
async fn key_with(app: &TestApp, scopes: &[&str]) -> (String, String) {
    let (s, b) = answer(
        app.admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": "scheduler", "scopes": scopes})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    (
        b["id"].as_str().unwrap().to_string(),
        b["key"].as_str().unwrap().to_string(),
    )
}

fn as_bearer(app: &TestApp, m: Method, path: &str, bearer: &str) -> reqwest::RequestBuilder {
    app.client
        .request(m, app.url(path))
        .bearer_auth(bearer)
        .header("X-App-Id", &app.app_id)
}

async fn row(app: &TestApp, id: &str) -> ScheduleRow {
    app.state()
        .infra
        .db
        .get_schedule(&app.app_id, id)
        .await
        .unwrap()
        .unwrap()
}

async fn runs_of(app: &TestApp, schedule_id: &str) -> usize {
    app.state()
        .infra
        .db
        .list_runs(
            &app.app_id,
            &RunFilter {
                schedule_id: Some(schedule_id.into()),
                ..Default::default()
            },
            &Page {
                limit: 100,
                starting_after: None,
            },
        )
        .await
        .unwrap()
        .items
        .len()
}

/// Fires the next occurrence of `id` and expects it skipped for `reason`, with no run, the schedule
/// disabled and the reason visible in the API.
async fn assert_skipped(app: &TestApp, id: &str, reason: &str) {
    let s = row(app, id).await;
    let at = s.next_run_at.expect("enabled with a next run");
    match fire(app.state(), &s, at).await {
        FireOutcome::Skipped(r) => assert_eq!(r, reason),
        other => panic!("expected the occurrence to be skipped, got {other:?}"),
    }
    assert_eq!(runs_of(app, id).await, 0, "a skipped occurrence has no run");
    let (status, dto) = answer(app.key(Method::GET, &format!("/api/schedules/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(dto["enabled"], false, "{dto}");
    assert_eq!(dto["next_run_at"], Value::Null, "{dto}");
    assert_eq!(dto["disabled_reason"], reason, "{dto}");
}

const DAILY: &str = r#"{"cron_expression": "0 3 * * *"}"#;

#[tokio::test]
async fn creating_or_editing_a_schedule_needs_agents_run() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    create_agent(&app, "@sched/guarded").await;
    let (_, no_run) = key_with(&app, &["schedules:write", "schedules:read"]).await;
    let path = "/api/agents/@sched/guarded/schedules";
    let (s, b) = answer(
        as_bearer(&app, Method::POST, path, &no_run)
            .header("content-type", "application/json")
            .body(r#"{"cron_expression": "* * * * * *"}"#),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["detail"], "Insufficient permissions: agents:run required");

    let (s, created) = answer(
        app.key(Method::POST, path)
            .header("content-type", "application/json")
            .body(DAILY),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let one = format!("/api/schedules/{}", created["id"].as_str().unwrap());
    let (s, b) = answer(
        as_bearer(&app, Method::PUT, &one, &no_run)
            .json(&json!({"cron_expression": "* * * * * *"})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["detail"], "Insufficient permissions: agents:run required");
    let (_, b) = answer(as_bearer(&app, Method::GET, &one, &no_run)).await;
    assert_eq!(b["cron_expression"], "0 3 * * *");

    // A schedule left by a key without agents:run (made before the rule) does not fire either.
    let (legacy_key_id, _) = key_with(&app, &["schedules:write"]).await;
    let mut legacy = row(&app, created["id"].as_str().unwrap()).await;
    legacy.id = "sched_legacy".into();
    legacy.api_key_id = Some(legacy_key_id);
    app.state().infra.db.insert_schedule(&legacy).await.unwrap();
    assert_skipped(
        &app,
        "sched_legacy",
        "The schedule's API key lacks the agents:run scope",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_admin_token_or_api_key_stops_its_schedules() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    create_agent(&app, "@sched/owned").await;
    let db = &app.state().infra.db;
    let path = "/api/agents/@sched/owned/schedules";

    // Made by a second admin token, which is then revoked.
    let token = appstrate::cli::mint_admin_token(db.as_ref(), &app.org_id)
        .await
        .unwrap();
    let (s, by_admin) = answer(as_bearer(&app, Method::POST, path, &token).json(&json!({
        "cron_expression": "0 3 * * *"
    })))
    .await;
    assert_eq!(s, 201, "{by_admin}");
    assert_eq!(by_admin["disabled_reason"], Value::Null);
    let admin_sched = by_admin["id"].as_str().unwrap().to_string();
    let token_id = db
        .find_admin_token(&sha256_hex(&token))
        .await
        .unwrap()
        .unwrap()
        .id;
    db.revoke_admin_token(&token_id).await.unwrap();
    assert_skipped(&app, &admin_sched, "The schedule's admin token was revoked").await;

    // Enabled again by a live admin token: the reason goes, but the schedule keeps its creator, so the
    // next fire is skipped again.
    let (s, b) = answer(
        app.admin(Method::PUT, &format!("/api/schedules/{admin_sched}"))
            .json(&json!({"enabled": true})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["disabled_reason"], Value::Null);
    assert_eq!(b["enabled"], true);
    assert_skipped(&app, &admin_sched, "The schedule's admin token was revoked").await;

    // Made by an API key, which is then revoked.
    let (key_id, key) = key_with(&app, &["schedules:write", "agents:run"]).await;
    let (s, by_key) = answer(as_bearer(&app, Method::POST, path, &key).json(&json!({
        "cron_expression": "0 3 * * *"
    })))
    .await;
    assert_eq!(s, 201, "{by_key}");
    let key_sched = by_key["id"].as_str().unwrap().to_string();
    let (s, _) = answer(app.admin(Method::DELETE, &format!("/api/api-keys/{key_id}"))).await;
    assert_eq!(s, 204);
    assert_skipped(&app, &key_sched, "The schedule's API key was revoked").await;

    // Through the cron clock: a window of three occurrences skips the first, then stops; nothing is
    // recorded as the schedule's last run.
    let (key_id, key) = key_with(&app, &["schedules:write", "agents:run"]).await;
    let (s, by_key) = answer(as_bearer(&app, Method::POST, path, &key).json(&json!({
        "cron_expression": "0 3 * * *"
    })))
    .await;
    assert_eq!(s, 201, "{by_key}");
    let ticked = by_key["id"].as_str().unwrap().to_string();
    let (s, _) = answer(app.admin(Method::DELETE, &format!("/api/api-keys/{key_id}"))).await;
    assert_eq!(s, 204);
    let before = row(&app, &ticked).await;
    let first = before.next_run_at.unwrap();
    let outcomes = tick_schedule(
        app.state(),
        &before,
        first - chrono::Duration::seconds(1),
        first + chrono::Duration::days(2),
    )
    .await;
    assert_eq!(
        outcomes,
        [FireOutcome::Skipped(
            "The schedule's API key was revoked".into()
        )]
    );
    let after = row(&app, &ticked).await;
    assert!(!after.enabled);
    assert_eq!((after.last_run_at, after.next_run_at), (None, None));
    assert_eq!(runs_of(&app, &ticked).await, 0);

    // An expired key likewise.
    let (s, b) = answer(app.admin(Method::POST, "/api/api-keys").json(&json!({
        "name": "short-lived",
        "scopes": ["schedules:write", "agents:run"],
        "expiresAt": (now() + chrono::Duration::seconds(2)).to_rfc3339(),
    })))
    .await;
    assert_eq!(s, 201, "{b}");
    let short = b["key"].as_str().unwrap().to_string();
    let (s, by_short) = answer(as_bearer(&app, Method::POST, path, &short).json(&json!({
        "cron_expression": "0 3 * * *"
    })))
    .await;
    assert_eq!(s, 201, "{by_short}");
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    assert_skipped(
        &app,
        by_short["id"].as_str().unwrap(),
        "The schedule's API key expired",
    )
    .await;
}

#[tokio::test]
async fn an_edit_by_an_api_key_makes_an_admin_schedule_the_keys() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    create_agent(&app, "@sched/handed").await;
    let (s, created) = answer(
        app.admin(Method::POST, "/api/agents/@sched/handed/schedules")
            .json(&json!({"cron_expression": "0 3 * * *"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (key_id, key) = key_with(&app, &["schedules:write", "agents:run"]).await;
    let (s, b) = answer(
        as_bearer(&app, Method::PUT, &format!("/api/schedules/{id}"), &key)
            .json(&json!({"name": "edited by a key"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let edited = row(&app, &id).await;
    assert_eq!(edited.actor_type, "api_key");
    assert_eq!(edited.api_key_id.as_deref(), Some(key_id.as_str()));

    // It now lives and dies with that key, not with the admin token that created it.
    let (s, _) = answer(app.admin(Method::DELETE, &format!("/api/api-keys/{key_id}"))).await;
    assert_eq!(s, 204);
    assert_skipped(&app, &id, "The schedule's API key was revoked").await;

    // An admin token's edit keeps the creator.
    let (s, by_key) = answer(
        app.key(Method::POST, "/api/agents/@sched/handed/schedules")
            .json(&json!({"cron_expression": "0 3 * * *"})),
    )
    .await;
    assert_eq!(s, 201, "{by_key}");
    let kid = by_key["id"].as_str().unwrap();
    let before = row(&app, kid).await;
    let (s, _) = answer(
        app.admin(Method::PUT, &format!("/api/schedules/{kid}"))
            .json(&json!({"name": "edited by an admin"})),
    )
    .await;
    assert_eq!(s, 200);
    let after = row(&app, kid).await;
    assert_eq!(
        (after.actor_type, after.api_key_id),
        (before.actor_type, before.api_key_id)
    );
}

/// A key made by a signed-in administrator fires their schedules only while their role allows running agents:
/// demoted to viewer, the next occurrence is skipped and the schedule disabled with the reason.
#[tokio::test]
async fn a_demoted_creator_stops_the_schedules_of_their_keys() {
    let app = test_support::require!(
        test_support::app::spawn_fresh_on(test_support::Backend::Sqlite, &[]).await
    );
    let (ada, org, app_id) = crate::people::owner(&app, "ada@example.com").await;
    // An admin may mint keys; the key holds at most its creator's role.
    let bob = crate::people::invite_and_join(&app, &ada, &org, "bob@example.com", "admin").await;
    let (s, key) = bob
        .send(
            Method::POST,
            "/api/api-keys",
            &[("X-App-Id", &app_id)],
            Some(json!({"name": "bob's scheduler",
                        "scopes": ["agents:run", "schedules:write", "packages:write"]})),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let (s, b) = answer(
        app.client
            .post(app.url("/api/packages"))
            .bearer_auth(&key)
            .json(&json!({
                "manifest": {"schema_version": "0.1", "name": "@bob/nightly", "version": "1.0.0",
                             "type": "agent", "display_name": "Nightly"},
                "files": {"prompt.md": "Hello"},
            })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, created) = answer(
        app.client
            .post(app.url("/api/agents/@bob/nightly/schedules"))
            .bearer_auth(&key)
            .json(&json!({"cron_expression": "0 3 * * *"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let bob_id = bob.get("/api/profile", &[]).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = ada
        .send(
            Method::PUT,
            &format!("/api/orgs/{org}/members/{bob_id}"),
            &[],
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(s, 200);

    let db = &app.state().infra.db;
    let sched = db.get_schedule(&app_id, &id).await.unwrap().unwrap();
    let reason = "The schedule's API key lacks the agents:run scope (its creator's role no longer \
                  allows running agents)";
    match fire(app.state(), &sched, sched.next_run_at.unwrap()).await {
        FireOutcome::Skipped(r) => assert_eq!(r, reason),
        other => panic!("expected the occurrence to be skipped, got {other:?}"),
    }
    let after = db.get_schedule(&app_id, &id).await.unwrap().unwrap();
    assert!(!after.enabled);
    assert_eq!(after.disabled_reason.as_deref(), Some(reason));
    let (s, dto) = bob
        .get(&format!("/api/schedules/{id}"), &[("X-App-Id", &app_id)])
        .await;
    assert_eq!(s, 200, "a viewer still reads the schedule: {dto}");
    assert_eq!(dto["disabled_reason"], reason);
}

/// A schedule made in a browser session (the dashboard) runs as its user: it fires while the user is a
/// member whose role may run agents, and is skipped and disabled, with the reason, once it is not.
#[tokio::test]
async fn a_users_schedule_fires_with_their_current_role() {
    let app = test_support::require!(
        test_support::app::spawn_fresh_on(
            test_support::Backend::Sqlite,
            // Fired runs need a model; they are not awaited here.
            &[
                ("LLM_BASE_URL", "http://127.0.0.1:9/v1"),
                ("LLM_API_KEY", "k"),
                ("LLM_MODEL", "m")
            ]
        )
        .await
    );
    let (ada, org, app_id) = crate::people::owner(&app, "ada@example.com").await;
    let bob = crate::people::invite_and_join(&app, &ada, &org, "bob@example.com", "member").await;
    let h = [("X-App-Id", app_id.as_str())];
    let (s, b) = bob
        .send(
            Method::POST,
            "/api/packages",
            &h,
            Some(json!({
                "manifest": {"schema_version": "0.1", "name": "@bob/daily", "version": "1.0.0",
                             "type": "agent", "display_name": "Daily"},
                "files": {"prompt.md": "Hello"},
            })),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, created) = bob
        .send(
            Method::POST,
            "/api/agents/@bob/daily/schedules",
            &h,
            Some(json!({"cron_expression": "0 3 * * *", "timezone": "Europe/Paris"})),
        )
        .await;
    assert_eq!(s, 201, "a signed-in member schedules an agent: {created}");
    let id = created["id"].as_str().unwrap().to_string();

    let db = &app.state().infra.db;
    let sched = db.get_schedule(&app_id, &id).await.unwrap().unwrap();
    assert_eq!(sched.actor_type, "user");
    match fire(app.state(), &sched, sched.next_run_at.unwrap()).await {
        FireOutcome::Started(run_id) => {
            let run = db.get_run(&run_id).await.unwrap().unwrap();
            assert_eq!(run.schedule_id.as_deref(), Some(id.as_str()));
        }
        other => panic!("expected a run as the member, got {other:?}"),
    }

    let bob_id = bob.get("/api/profile", &[]).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = ada
        .send(
            Method::PUT,
            &format!("/api/orgs/{org}/members/{bob_id}"),
            &[],
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(s, 200);
    let later = sched.next_run_at.unwrap() + chrono::Duration::days(1);
    let reason = "The schedule's user can no longer run agents (their role is viewer)";
    match fire(app.state(), &sched, later).await {
        FireOutcome::Skipped(r) => assert_eq!(r, reason),
        other => panic!("expected the occurrence to be skipped, got {other:?}"),
    }
    let after = db.get_schedule(&app_id, &id).await.unwrap().unwrap();
    assert!(!after.enabled);
    assert_eq!(after.disabled_reason.as_deref(), Some(reason));

    // The owner enables it again from their own session: the schedule becomes theirs and fires.
    let (s, dto) = ada
        .send(
            Method::PUT,
            &format!("/api/schedules/{id}"),
            &h,
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, 200, "{dto}");
    let owned = db.get_schedule(&app_id, &id).await.unwrap().unwrap();
    assert_eq!(owned.actor_type, "user");
    assert_ne!(owned.user_id.as_deref(), Some(bob_id.as_str()));
    let third = later + chrono::Duration::days(1);
    assert!(matches!(
        fire(app.state(), &owned, third).await,
        FireOutcome::Started(_)
    ));
}
