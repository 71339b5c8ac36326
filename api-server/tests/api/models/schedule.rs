//! A model deleted while a schedule uses it: the next occurrence fails with a clear error, and nothing
//! else breaks.

use appstrate::schedules::{fire, FireOutcome};
use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::Backend;

use super::{add_model, app_with, call, set_default, wait_terminal, Org, KEY_A};

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
