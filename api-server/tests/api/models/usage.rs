//! The usage ledger: totals equal the sum of the calls, across a price change.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::Backend;

use super::{add_model, app_with, call, run_inline, set_default, Org, KEY_A};

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

/// A model deleted while a run is using it: the run goes on with the key it started with, and its calls
/// are priced as the model was priced when the run started.
#[tokio::test]
async fn a_run_outlives_the_deletion_of_its_model_and_keeps_its_prices() {
    let fake = FakeLlm::start(vec![Turn::text("slow")
        .with_usage(1000, 100)
        .with_delay(1500)])
    .await;
    let app = app_with(Backend::Sqlite, &[]).await.unwrap();
    let org = Org::of(&app);
    let (_, model) = add_model(
        &app,
        &org,
        "anthropic",
        &fake.url(),
        KEY_A,
        json!({"modelId": "claude-fake", "pricing": {"input": 3.0, "output": 15.0}}),
    )
    .await;
    set_default(&app, &org, json!({"modelId": model})).await;
    let (s, run) = call(
        &app,
        &org.key,
        Method::POST,
        "/api/runs/inline",
        Some(super::inline_run()),
    )
    .await;
    assert_eq!(s, 201, "{run}");
    // Delete the model once the provider has the request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached the provider"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, _) = call(
        &app,
        &org.admin,
        Method::DELETE,
        &format!("/api/models/{model}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let done = super::wait_terminal(&app, &org, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(fake.api_keys(), vec![KEY_A.to_string()]);
    let want = (1000.0 * 3.0 + 100.0 * 15.0) / 1e6;
    assert!(
        (done["cost"].as_f64().unwrap() - want).abs() < 1e-12,
        "{done}"
    );
    let (_, u) = call(
        &app,
        &org.admin,
        Method::GET,
        "/api/usage?groupBy=model",
        None,
    )
    .await;
    assert_eq!(u["data"][0]["key"], "claude-fake", "{u}");
    assert!(
        (u["data"][0]["cost"].as_f64().unwrap() - want).abs() < 1e-12,
        "{u}"
    );
    // New runs are refused, naming the deleted default.
    let (s, e) = call(
        &app,
        &org.key,
        Method::POST,
        "/api/runs/inline",
        Some(super::inline_run()),
    )
    .await;
    assert_eq!(
        (s, e["code"].clone()),
        (400, json!("model_not_configured")),
        "{e}"
    );
    assert!(e["detail"].as_str().unwrap().contains(&model), "{e}");
}
