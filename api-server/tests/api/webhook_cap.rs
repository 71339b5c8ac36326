//! The 20-webhooks-per-application cap holds when creates race each other.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::{spawn_app_on, Backend};

on_both_backends!(concurrent_creates_never_pass_twenty_webhooks);
async fn concurrent_creates_never_pass_twenty_webhooks(backend: Backend) {
    let app = test_support::require!(spawn_app_on(backend, &[]).await);
    // Four callers with ten creates each: the route allows ten writes a minute per caller.
    let mut keys = Vec::new();
    for i in 0..4 {
        let r = app
            .admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": format!("hooks {i}"), "scopes": ["webhooks:write", "webhooks:read"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let b: Value = r.json().await.unwrap();
        keys.push(b["key"].as_str().unwrap().to_string());
    }
    let app = &app;
    let creates = keys.iter().flat_map(|key| {
        (0..10).map(move |n| {
            app.client
                .post(app.url("/api/webhooks"))
                .bearer_auth(key)
                .json(
                    &json!({"url": format!("https://example.com/{n}"), "events": ["run.success"]}),
                )
                .send()
        })
    });
    let mut created = 0;
    let mut refused = 0;
    for r in join_all(creates).await {
        let r = r.unwrap();
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        match status {
            201 => created += 1,
            400 if b["code"] == "webhook_limit_reached" => refused += 1,
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!((created, refused), (20, 20));
    let n = app
        .state()
        .infra
        .db
        .count_webhooks(&app.app_id)
        .await
        .unwrap();
    assert_eq!(n, 20);
}
