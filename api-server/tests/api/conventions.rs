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
    let (s, _) = problem(
        app.key(Method::GET, "/api/notifications")
            .send()
            .await
            .unwrap(),
    )
    .await;
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
    // Process mode has no run slots.
    assert_eq!(
        h["run_slots"],
        json!({"enabled": false, "desired": 0, "ready": 0, "creating": 0, "failed": 0})
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

/// Captures what a subscriber writes, for assertions on log lines.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A handler that panics answers 500 `internal_error` as problem+json with a request id, through the same
/// layers as every route; the panic is logged at error with the request id and without the request body,
/// and the server keeps serving on the same connection.
#[tokio::test]
async fn a_handler_panic_is_a_500_problem_logged_without_the_body() {
    // Current-thread runtime: the scoped subscriber sees the server's events too.
    let logs = LogCapture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app().await;
    let routes = axum::Router::new()
        .route(
            "/api/boom",
            axum::routing::post(|body: String| async move {
                if !body.is_empty() {
                    panic!("handler bug: index out of range");
                }
                "fine"
            }),
        )
        .route(
            "/api/boom/{n}",
            axum::routing::get(|| async {
                let n: u16 = "70000".parse().unwrap_or(0);
                if n == 0 {
                    panic!("{}", String::from("formatted panic"));
                }
                "unreachable"
            }),
        );
    let router = appstrate::http::with_request_handling(routes, app.state().clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let r = client
        .post(format!("http://{addr}/api/boom"))
        .body("card=4111111111111111 request-body-canary")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["request-id"].to_str().unwrap().to_string();
    let (s, b) = problem(r).await;
    assert_eq!(s, 500);
    assert_eq!(b["code"], "internal_error");
    assert_eq!(
        b["type"],
        "https://docs.appstrate.dev/errors/internal-error"
    );
    assert_eq!(b["detail"], "An unexpected error occurred.");
    // The panic message is not sent to the client.
    assert!(!b.to_string().contains("index out of range"));

    // A String payload too; the connection and the server are still usable afterwards.
    let (s, b) = problem(
        client
            .get(format!("http://{addr}/api/boom/7"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (500, "internal_error"));
    let r = client
        .post(format!("http://{addr}/api/boom"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fine");

    let log = logs.text();
    let line = log
        .lines()
        .find(|l| l.contains("request handler panicked") && l.contains("index out of range"))
        .unwrap_or_else(|| panic!("no panic log line: {log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&rid), "the request id is on the line: {line}");
    assert!(log.contains("formatted panic"), "{log}");
    // The access log counts it as a 500 on its route.
    assert!(
        log.lines()
            .any(|l| l.contains("route=/api/boom") && l.contains("status=500")),
        "{log}"
    );
    assert!(!log.contains("request-body-canary") && !log.contains("4111111111111111"));
}

mod robustness {
    use proptest::prelude::*;
    use reqwest::Method;
    use serde_json::Value;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            proptest::num::f64::NORMAL.prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            // Values that look valid for some field.
            prop_oneof![
                Just("runs:read"),
                Just("2999-01-01T00:00:00Z"),
                Just("2000-01-01T00:00:00Z"),
                Just("a@b.example"),
                Just("not-a-date"),
                Just(""),
            ]
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((".{0,12}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// An object whose keys are mostly the create bodies' real fields, with arbitrary values.
    fn fieldish_object() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("name".to_string()),
            Just("scopes".to_string()),
            Just("expiresAt".to_string()),
            Just("email".to_string()),
            Just("externalId".to_string()),
            Just("metadata".to_string()),
            "[a-zA-Z]{1,10}",
        ];
        proptest::collection::vec((key, json_value()), 0..6)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            fieldish_object().prop_map(|v| v.to_string().into_bytes()),
            // Valid JSON cut short.
            (fieldish_object(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
                let s = v.to_string().into_bytes();
                let n = i.index(s.len() + 1);
                s[..n].to_vec()
            }),
        ]
    }

    fn content_type() -> impl Strategy<Value = Option<&'static str>> {
        prop_oneof![
            4 => Just(Some("application/json")),
            1 => Just(Some("application/json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ]
    }

    /// Arbitrary bytes, arbitrary JSON and near-valid objects posted to the create endpoints get a 2xx JSON
    /// answer or a 4xx problem+json: never a 5xx, never a dropped connection.
    #[test]
    fn create_endpoints_answer_every_body_with_json_or_a_4xx_problem() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = rt.block_on(test_support::spawn_app());
        let routes = ["/api/applications", "/api/api-keys", "/api/end-users"];
        let config = ProptestConfig {
            cases: 150,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(route in prop::sample::select(routes.to_vec()), body in body(), ct in content_type())| {
            let (status, ctype, text) = rt.block_on(async {
                // A fresh admin token per case: its own rate-limit bucket, so every body reaches the handler.
                let token = appstrate::cli::mint_admin_token(
                    app.state().infra.db.as_ref(),
                    &app.org_id,
                )
                .await
                .unwrap();
                let mut req = app
                    .client
                    .request(Method::POST, app.url(route))
                    .bearer_auth(&token)
                    .body(body.clone());
                if route != "/api/applications" {
                    req = req.header("X-App-Id", &app.app_id);
                }
                if let Some(ct) = ct {
                    req = req.header("content-type", ct);
                }
                let r = req.send().await.expect("the server answers (no dropped connection)");
                let status = r.status().as_u16();
                let ctype = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                (status, ctype, r.text().await.expect("a complete body"))
            });
            prop_assert!(status < 500, "{route}: {status} {text}");
            let parsed: Result<Value, _> = serde_json::from_str(&text);
            prop_assert!(parsed.is_ok(), "{route}: {status} body is not JSON: {text}");
            if status >= 400 {
                prop_assert_eq!(ctype.as_str(), "application/problem+json");
                let b = parsed.unwrap();
                prop_assert_eq!(b["status"].as_u64(), Some(status as u64));
                prop_assert!(b["code"].is_string());
            } else {
                prop_assert!((200..300).contains(&status), "{route}: {status}");
                prop_assert!(ctype.starts_with("application/json"), "{ctype}");
            }
        });
        assert!(rt.block_on(app.shutdown()));
    }
}
