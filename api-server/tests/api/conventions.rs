//! HTTP conventions (§8): problem+json, request ids, strict bodies, lists, idempotency, meta routes.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::{spawn_app, spawn_app_with};

fn is_request_id(s: &str) -> bool {
    s.len() == 40 && s.starts_with("req_") && uuid::Uuid::parse_str(&s[4..]).is_ok()
}

async fn problem(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let rid = r.headers()["request-id"].to_str().unwrap().to_string();
    assert!(is_request_id(&rid), "{rid}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["requestId"], rid.as_str());
    assert_eq!(b["instance"], format!("urn:appstrate:request:{rid}"));
    assert_eq!(b["status"], status);
    (status, b)
}

#[tokio::test]
async fn errors_are_problem_json_with_request_ids() {
    let app = spawn_app().await;
    // 401
    let (s, b) = problem(
        app.client
            .get(app.url("/api/end-users"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (401, "unauthorized"));
    // Unknown /api route → 404 naming method and path.
    let (s, b) = problem(app.key(Method::GET, "/api/nope").send().await.unwrap()).await;
    assert_eq!(s, 404);
    assert_eq!(b["detail"], "API endpoint not found: GET /api/nope");
    assert_eq!(b["type"], "https://docs.appstrate.dev/errors/not-found");
    // Out-of-scope features have no routes.
    let (s, _) = problem(app.key(Method::GET, "/api/models").send().await.unwrap()).await;
    assert_eq!(s, 404);
    // Known path, wrong method → 405 with Allow.
    let r = app.key(Method::PUT, "/api/end-users").send().await.unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let (s, _) = problem(r).await;
    assert_eq!(s, 405);
    // Success answers carry a request id too.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert!(is_request_id(r.headers()["request-id"].to_str().unwrap()));
}

#[tokio::test]
async fn strict_bodies() {
    let app = spawn_app_with(&[("API_BODY_LIMIT_BYTES", "2048")]).await;
    // Malformed JSON.
    let r = app
        .key(Method::POST, "/api/end-users")
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    let (s, b) = problem(r).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "invalid_request"));
    // Unknown and invalid fields, all reported.
    let r = app
        .key(Method::POST, "/api/end-users")
        .json(&json!({"name": 7, "nickname": "x", "metadata": {"k": [1]}}))
        .send()
        .await
        .unwrap();
    let (s, b) = problem(r).await;
    assert_eq!(s, 400);
    assert_eq!(b["code"], "validation_failed");
    let errors: Vec<(String, String)> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().into(),
                e["code"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        errors.contains(&("name".into(), "invalid_type".into())),
        "{errors:?}"
    );
    assert!(
        errors.contains(&("nickname".into(), "unknown_field".into())),
        "{errors:?}"
    );
    assert!(
        errors.contains(&("metadata.k".into(), "invalid_value".into())),
        "{errors:?}"
    );
    // Wrong content type.
    let r = app
        .key(Method::POST, "/api/end-users")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (s, b) = problem(r).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );
    // Over the body limit.
    let big = json!({"name": "x".repeat(4096)});
    let (s, b) = problem(
        app.key(Method::POST, "/api/end-users")
            .json(&big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (413, "payload_too_large"));
    // Nothing was stored by any of these.
    let list: Value = app
        .key(Method::GET, "/api/end-users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn cursor_pagination() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let b: Value = app
            .key(Method::POST, "/api/end-users")
            .json(&json!({"name": format!("u{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    ids.reverse(); // newest first
    let r = app
        .key(Method::GET, "/api/end-users?limit=2")
        .send()
        .await
        .unwrap();
    let link = r.headers()["link"].to_str().unwrap().to_string();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["object"], "list");
    assert_eq!(page["hasMore"], true);
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, &ids[..2]);
    assert_eq!(
        link,
        format!(
            "<{}/api/end-users?limit=2&startingAfter={}>; rel=\"next\"",
            app.address, ids[1]
        )
    );
    // Follow the links to the end.
    let mut seen = got.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut next = Some(link);
    while let Some(l) = next {
        let url = l
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string();
        let r = app
            .client
            .get(&url)
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        next = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Value = r.json().await.unwrap();
        for e in page["data"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        if page["hasMore"] == false {
            assert!(next.is_none());
        }
    }
    assert_eq!(seen, ids);
    for bad in [
        "/api/end-users?limit=0",
        "/api/end-users?limit=101",
        "/api/end-users?limit=x",
    ] {
        let (s, b) = problem(app.key(Method::GET, bad).send().await.unwrap()).await;
        assert_eq!(s, 400);
        assert_eq!(b["param"], "limit");
    }
    let (s, b) = problem(
        app.key(Method::GET, "/api/end-users?startingAfter=eu_missing")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["param"], "startingAfter");
}

#[tokio::test]
async fn idempotent_end_user_creation() {
    let app = spawn_app().await;
    let send = |body: Value, key: &str| {
        app.key(Method::POST, "/api/end-users")
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send(json!({"name": "Ann"}), "k-1").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let replay = send(json!({"name": "Ann"}), "k-1").await.unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    let (s, b) = problem(send(json!({"name": "Bob"}), "k-1").await.unwrap()).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (422, "idempotency_conflict")
    );
    let list: Value = app
        .key(Method::GET, "/api/end-users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // A failed request releases the key.
    let (s, _) = problem(send(json!({"name": 5}), "k-2").await.unwrap()).await;
    assert_eq!(s, 400);
    assert_eq!(
        send(json!({"name": "Cy"}), "k-2").await.unwrap().status(),
        201
    );
    // Bad keys, and the header on a route that does not support it.
    let (_, b) = problem(send(json!({}), "has space").await.unwrap()).await;
    assert_eq!(b["code"], "invalid_idempotency_key");
    let r = app
        .admin(Method::POST, "/api/api-keys")
        .header("Idempotency-Key", "k-3")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let (s, b) = problem(r).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "idempotency_not_supported")
    );
}

#[tokio::test]
async fn openapi_metrics_and_health() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["servers"][0]["url"], app.address.as_str());
    for path in [
        "/api/end-users",
        "/api/api-keys",
        "/api/applications/{id}",
        "/health",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let r = app
        .client
        .get(app.url("/api/openapi.json"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let _ = app.key(Method::GET, "/api/end-users").send().await.unwrap();
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
        metrics.contains(
            r#"appstrate_http_requests_total{method="GET",route="/api/end-users",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("appstrate_http_request_duration_seconds_bucket"));

    let h: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["checks"]["database"]["status"], "healthy");
    assert_eq!(h["checks"]["storage"]["status"], "healthy");
    assert_eq!(
        h["sidecar_pool"],
        json!({"enabled": false, "desired": 0, "ready": 0})
    );
}

#[tokio::test]
async fn shutdown_refuses_mutations_but_serves_reads() {
    let app = spawn_app().await;
    app.state().begin_shutdown();
    let (s, b) = problem(
        app.key(Method::POST, "/api/end-users")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (503, "shutting_down"));
    assert_eq!(
        app.key(Method::GET, "/api/end-users")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(app.shutdown().await);
}
