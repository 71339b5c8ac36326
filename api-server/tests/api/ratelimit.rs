//! Per-route fixed-window rate limits (§10).

use reqwest::Method;
use serde_json::{json, Value};
use test_support::spawn_app;

#[tokio::test]
async fn the_limit_plus_one_request_gets_429_with_exact_headers() {
    let app = spawn_app().await;
    // POST /api/api-keys: 10 per 60 s per caller.
    for i in 1..=10u32 {
        let r = app
            .admin(Method::POST, "/api/api-keys")
            .json(&json!({"name": format!("k{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.headers()["ratelimit"],
            format!("limit=10, remaining={}, reset=60", 10 - i).as_str()
        );
        assert_eq!(r.headers()["ratelimit-policy"], "10;w=60");
    }
    let r = app
        .admin(Method::POST, "/api/api-keys")
        .json(&json!({"name": "k11"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let reset: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset));
    assert_eq!(
        h["ratelimit"],
        format!("limit=10, remaining=0, reset={reset}").as_str()
    );
    assert_eq!(h["ratelimit-policy"], "10;w=60");
    assert!(h.keys().all(|k| !k.as_str().starts_with("x-ratelimit")));
    assert!(h["request-id"].to_str().unwrap().starts_with("req_"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "rate_limited");
    assert_eq!(b["title"], "Rate Limited");
    assert_eq!(b["detail"], "Too many requests. Please try again shortly.");
    assert_eq!(b["retryAfter"], reset);
    // Only 10 keys were created (plus the bootstrap key).
    let list: Value = app
        .admin(Method::GET, "/api/api-keys?limit=100")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 11);

    // Another identity has its own bucket; GETs on the same route are not limited.
    let other = app
        .client
        .post(app.url("/api/end-users"))
        .bearer_auth(&app.api_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
    assert_eq!(
        other.headers()["ratelimit"],
        "limit=60, remaining=59, reset=60"
    );
    let r = app
        .admin(Method::GET, "/api/api-keys")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("ratelimit").is_none());

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"appstrate_rate_limited_total{route="/api/api-keys"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn concrete_ids_share_the_route_template_bucket() {
    let app = spawn_app().await;
    // PATCH/DELETE /api/end-users/{id}: 60 per window for the caller, whatever the id.
    for i in 0..60 {
        let r = app
            .key(Method::DELETE, &format!("/api/end-users/eu_missing{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = app
        .key(Method::PATCH, "/api/end-users/eu_other")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "PATCH is a different method: its own bucket"
    );
    let r = app
        .key(Method::DELETE, "/api/end-users/eu_another")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

/// Two admin tokens of the same organization are two identities: exhausting one token's bucket on a route
/// leaves the other token's bucket on that route untouched, and the same holds for two API keys.
#[tokio::test]
async fn two_credentials_on_the_same_route_have_their_own_buckets() {
    let app = spawn_app().await;
    let db = app.state().infra.db.clone();
    let second = appstrate::cli::mint_admin_token(db.as_ref(), &app.org_id)
        .await
        .unwrap();
    let create_key = |token: &str, name: String| {
        app.client
            .post(app.url("/api/api-keys"))
            .bearer_auth(token)
            .header("X-App-Id", &app.app_id)
            .json(&json!({"name": name}))
            .send()
    };
    let mut keys = Vec::new();
    for i in 0..10 {
        let r = create_key(&app.admin_token, format!("first{i}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        keys.push(
            r.json::<Value>().await.unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let r = create_key(&app.admin_token, "first10".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // The second admin token starts with a full bucket on the same route…
    let r = create_key(&second, "second0".into()).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["ratelimit"], "limit=10, remaining=9, reset=60");
    // …and the first is still limited.
    assert_eq!(
        create_key(&app.admin_token, "first11".into())
            .await
            .unwrap()
            .status(),
        429
    );

    // Two API keys on POST /api/end-users (60 per window each).
    let create_user = |key: &str| {
        app.client
            .post(app.url("/api/end-users"))
            .bearer_auth(key)
            .json(&json!({}))
            .send()
    };
    for i in 0..60 {
        let r = create_user(&keys[0]).await.unwrap();
        assert_eq!(r.status(), 201, "request {i}");
    }
    let r = create_user(&keys[0]).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-policy"], "60;w=60");
    let r = create_user(&keys[1]).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["ratelimit"], "limit=60, remaining=59, reset=60");
}
