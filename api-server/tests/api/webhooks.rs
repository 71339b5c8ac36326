//! Webhooks (§19): CRUD and URL rules, then real deliveries of run events to a loopback receiver that
//! checks every Standard-Webhooks signature with the published secret.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::webhook_receiver::{Reply, WebhookReceiver};
use test_support::{spawn_app_with, TestApp};

use crate::runs::{inline, llm_app, start, wait_terminal};

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    let r = app
        .key(Method::POST, "/api/webhooks")
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

async fn get(app: &TestApp, path: &str) -> Value {
    let r = app.key(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// Delivery rows of a webhook, oldest attempt first.
async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let v = get(app, &format!("/api/webhooks/{id}/deliveries?limit=100")).await;
    let mut rows = v["data"].as_array().cloned().unwrap_or_default();
    rows.sort_by_key(|d| d["attempt"].as_i64());
    rows
}

async fn wait_deliveries(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = deliveries(app, id).await;
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} delivery records, got {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one inline agent to success.
async fn run_once(app: &TestApp, fake: &FakeLlm) -> Value {
    fake.push(Turn::tool_call("output", json!({"data": {"answer": "ok"}})));
    let run = start(
        app,
        "/api/runs/inline",
        inline(json!({}), "Answer the question."),
    )
    .await;
    wait_terminal(app, run["id"].as_str().unwrap()).await
}

async fn hook_app(fake: &FakeLlm, delays: &str) -> TestApp {
    llm_app(
        fake,
        &[
            ("WEBHOOK_RETRY_DELAYS_SECONDS", delays),
            ("WEBHOOK_TIMEOUT_SECONDS", "5"),
        ],
    )
    .await
}

#[tokio::test]
async fn crud_url_rules_limits_and_the_secret_shown_once() {
    let app = spawn_app_with(&[("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1")]).await;
    let (code, w) = create(
        &app,
        json!({"url": "http://127.0.0.1:9/in", "events": ["run.success", "run.failed"]}),
    )
    .await;
    assert_eq!(code, 201, "{w}");
    let id = w["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("wh_"));
    assert_eq!(w["object"], "webhook");
    assert_eq!(w["applicationId"], app.app_id.as_str());
    assert_eq!(w["payloadMode"], "full");
    assert_eq!(w["enabled"], true);
    assert_eq!(w["packageId"], Value::Null);
    let secret = w["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&secret["whsec_".len()..])
        .unwrap();
    assert_eq!(raw.len(), 32);

    // Never again: not in GET, list, or update answers, nor stored in the clear.
    let one = get(&app, &format!("/api/webhooks/{id}")).await;
    assert!(one.get("secret").is_none());
    assert_eq!(one["events"], json!(["run.success", "run.failed"]));
    let list = get(&app, "/api/webhooks").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret));
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&app.data_dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().contains(".db") {
            stored.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    assert!(
        !stored.is_empty(),
        "no database file under {:?}",
        app.data_dir
    );
    assert!(!String::from_utf8_lossy(&stored).contains(&secret["whsec_".len()..]));

    let r = app
        .key(Method::PUT, &format!("/api/webhooks/{id}"))
        .json(&json!({"events": ["run.started"], "payloadMode": "summary", "enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["events"], json!(["run.started"]));
    assert_eq!(updated["payloadMode"], "summary");
    assert_eq!(updated["enabled"], false);
    assert!(updated.get("secret").is_none());

    // Bad bodies name the field.
    for (body, code, param) in [
        (
            json!({"url": "ftp://example.com/x", "events": ["run.success"]}),
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "http://example.com/x", "events": ["run.success"]}),
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "https://10.0.0.8/x", "events": ["run.success"]}),
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "https://169.254.169.254/latest", "events": ["run.success"]}),
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "https://metadata.google.internal/", "events": ["run.success"]}),
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "https://user:pw@example.com/", "events": ["run.success"]}),
            "invalid_url",
            "url",
        ),
    ] {
        let (status, e) = create(&app, body.clone()).await;
        assert_eq!(status, 400, "{body} → {e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["param"], param, "{e}");
    }
    let (status, e) = create(&app, json!({"url": "https://example.com/x", "events": []})).await;
    assert_eq!(status, 400);
    assert_eq!(e["code"], "validation_failed");
    assert!(e.to_string().contains("events"), "{e}");
    let (status, e) = create(
        &app,
        json!({"url": "https://example.com/x", "events": ["run.exploded"], "payloadMode": "all", "color": 1}),
    )
    .await;
    assert_eq!(status, 400);
    let text = e.to_string();
    for field in ["events[0]", "payloadMode", "color"] {
        assert!(text.contains(field), "{field} missing from {e}");
    }
    let (status, e) = create(
        &app,
        json!({"url": "https://example.com/x", "events": ["run.success"], "packageId": "@nobody/nothing"}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("packageId"), "{e}");

    // Loopback without the exemption is refused.
    let plain = spawn_app_with(&[]).await;
    let (status, e) = create(
        &plain,
        json!({"url": "http://127.0.0.1:9/in", "events": ["run.success"]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["code"], "invalid_url");

    // At most 20 per application. (Rows 2-19 go straight to the repository: the route allows 10 writes a
    // minute per caller, and those were spent above.)
    let template = app
        .state()
        .infra
        .db
        .get_webhook(&app.app_id, &id)
        .await
        .unwrap()
        .unwrap();
    for i in 2..20 {
        let mut row = template.clone();
        row.id = format!("wh_filler_{i}");
        app.state().infra.db.insert_webhook(&row).await.unwrap();
    }
    let by_admin = |url: &str| {
        app.admin(Method::POST, "/api/webhooks")
            .json(&json!({"url": url, "events": ["run.success"]}))
            .send()
    };
    let r = by_admin("https://example.com/20").await.unwrap();
    assert_eq!(r.status(), 201);
    let r = by_admin("https://example.com/21").await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "webhook_limit_reached");
    assert!(e["detail"].as_str().unwrap().contains("20"), "{e}");

    let r = app
        .key(Method::DELETE, &format!("/api/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .key(Method::GET, &format!("/api/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_500_then_200_gives_two_signed_attempts_and_410_is_permanent() {
    let fake = FakeLlm::start(vec![]).await;
    let app = hook_app(&fake, "1,1,1").await;
    let flaky = WebhookReceiver::start(vec![Reply::Status(500)]).await;
    let gone = WebhookReceiver::start(vec![Reply::Status(410)]).await;
    let started = WebhookReceiver::start(vec![]).await;
    let (_, w1) = create(
        &app,
        json!({"url": flaky.url("/hook"), "events": ["run.success"]}),
    )
    .await;
    let (_, w2) = create(
        &app,
        json!({"url": gone.url("/hook"), "events": ["run.success"]}),
    )
    .await;
    let (_, w3) = create(
        &app,
        json!({"url": started.url("/hook"), "events": ["run.started"], "payloadMode": "summary"}),
    )
    .await;
    let secret = w1["secret"].as_str().unwrap().to_string();

    let run = run_once(&app, &fake).await;
    assert_eq!(run["status"], "success", "{run}");
    let run_id = run["id"].as_str().unwrap();

    // 500 then 200: two attempts of one event, both signed with the published secret.
    let got = flaky.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    for (i, r) in got.iter().enumerate() {
        assert!(
            r.signed_with(&secret),
            "attempt {} not signed with the secret",
            i + 1
        );
        assert!(!r.signed_with(w2["secret"].as_str().unwrap()));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("webhook-attempt"), Some((i + 1).to_string()));
        let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!((ts - chrono::Utc::now().timestamp()).abs() < 120);
    }
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(900));
    let event = got[1].json();
    assert_eq!(event["id"], got[1].header("webhook-id").unwrap().as_str());
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "run.success");
    assert_eq!(event["data"]["object"]["object"], "run");
    assert_eq!(event["data"]["object"]["id"], run_id);
    assert_eq!(event["data"]["object"]["status"], "success");
    assert_eq!(event["data"]["object"]["result"]["output"]["answer"], "ok");

    let rows = wait_deliveries(&app, w1["id"].as_str().unwrap(), 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["attempt"], 1);
    assert_eq!(rows[0]["status"], "retrying");
    assert_eq!(rows[0]["statusCode"], 500);
    assert_eq!(rows[1]["attempt"], 2);
    assert_eq!(rows[1]["status"], "success");
    assert_eq!(rows[1]["statusCode"], 200);
    assert_eq!(rows[1]["eventType"], "run.success");
    assert_eq!(rows[0]["eventId"], rows[1]["eventId"]);
    assert!(rows[1]["latencyMs"].as_i64().is_some());

    // 410: exactly one attempt, recorded as a permanent failure, never retried.
    let rows = wait_deliveries(&app, w2["id"].as_str().unwrap(), 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gone.received().len(), 1);
    let rows_later = deliveries(&app, w2["id"].as_str().unwrap()).await;
    assert_eq!(rows_later.len(), 1, "{rows_later:?}");
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["statusCode"], 410);

    // The started event reached the other webhook alone, in summary form.
    let s = started.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(s.len(), 1);
    let e = s[0].json();
    assert_eq!(e["type"], "run.started");
    assert_eq!(e["data"]["object"]["id"], run_id);
    assert!(e["data"]["object"].get("input").is_none());
    assert!(e["data"]["object"].get("result").is_none());
    assert!(s[0].signed_with(w3["secret"].as_str().unwrap()));
    assert!(flaky
        .received()
        .iter()
        .all(|r| r.json()["type"] == "run.success"));
}

#[tokio::test]
async fn redirects_are_not_followed_and_rotation_signs_with_both_secrets() {
    let fake = FakeLlm::start(vec![]).await;
    let app = hook_app(&fake, "1").await;
    let target = WebhookReceiver::start(vec![]).await;
    let redirecting = WebhookReceiver::start(vec![
        Reply::Redirect(target.url("/elsewhere")),
        Reply::Redirect(target.url("/elsewhere")),
    ])
    .await;
    let (_, r) = create(
        &app,
        json!({"url": redirecting.url("/hook"), "events": ["run.success"]}),
    )
    .await;
    let rid = r["id"].as_str().unwrap().to_string();

    let rotating = WebhookReceiver::start(vec![]).await;
    let (_, w) = create(
        &app,
        json!({"url": rotating.url("/hook"), "events": ["run.success"]}),
    )
    .await;
    let wid = w["id"].as_str().unwrap().to_string();
    let old = w["secret"].as_str().unwrap().to_string();
    let resp = app
        .key(Method::POST, &format!("/api/webhooks/{wid}/rotate-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(rotated["previousSecretExpiresAt"].is_string());

    run_once(&app, &fake).await;

    // Two attempts (the ladder has one retry), both 302, never followed.
    let rows = wait_deliveries(&app, &rid, 2).await;
    for row in &rows {
        assert_eq!(row["statusCode"], 302, "{row}");
        assert!(row["error"].as_str().unwrap().contains("redirect"), "{row}");
    }
    assert_eq!(rows[0]["status"], "retrying");
    assert_eq!(rows[1]["status"], "failed");
    assert_eq!(redirecting.received().len(), 2);
    assert!(target.received().is_empty(), "the redirect was followed");

    // During the rotation window both secrets verify the same delivery.
    let got = rotating.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].signature_count(), 2);
    assert!(got[0].signed_with(&new));
    assert!(got[0].signed_with(&old));

    // Ending the window at once: only the newest secret signs.
    let resp = app
        .key(Method::POST, &format!("/api/webhooks/{wid}/rotate-secret"))
        .json(&json!({"previousSecretExpiresInSeconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let newest = resp.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    run_once(&app, &fake).await;
    let got = rotating.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got[1].signature_count(), 1);
    assert!(got[1].signed_with(&newest));
    assert!(!got[1].signed_with(&new));
    assert!(!got[1].signed_with(&old));

    let resp = app
        .key(Method::POST, &format!("/api/webhooks/{wid}/rotate-secret"))
        .json(&json!({"previousSecretExpiresInSeconds": -5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn a_private_address_is_refused_again_at_delivery() {
    // Created while 127.0.0.1 was exempt; the server then restarts without the exemption.
    let fake = FakeLlm::start(vec![]).await;
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut app = hook_app(&fake, "1,1").await;
    let (code, w) = create(
        &app,
        json!({"url": receiver.url("/hook"), "events": ["run.success"]}),
    )
    .await;
    assert_eq!(code, 201, "{w}");
    let id = w["id"].as_str().unwrap().to_string();
    // The runner still reaches the fake LLM through the exemption of its own host name.
    app.env
        .insert("EGRESS_ALLOW_INTERNAL_HOSTS".into(), "localhost".into());
    app.env.insert(
        "LLM_BASE_URL".into(),
        fake.url().replace("127.0.0.1", "localhost"),
    );
    app.restart().await;

    let run = run_once(&app, &fake).await;
    assert_eq!(run["status"], "success", "{run}");
    let rows = wait_deliveries(&app, &id, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows_later = deliveries(&app, &id).await;
    assert_eq!(
        rows_later.len(),
        1,
        "a blocked address is permanent: {rows_later:?}"
    );
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["statusCode"], Value::Null);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("blocked_address"),
        "{}",
        rows[0]
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn ipv6_forms_embedding_an_internal_ipv4_are_refused() {
    let app = spawn_app_with(&[]).await;
    // SIIT IPv4-translated, NAT64 local-use and Teredo (server and client) forms of internal addresses.
    for url in [
        "https://[::ffff:0:a9fe:a9fe]/hook",
        "https://[::ffff:0:127.0.0.1]/hook",
        "https://[64:ff9b:1::10.0.0.1]/hook",
        "https://[64:ff9b:1:ff::808:808]/hook",
        "https://[2001:0:a9fe:a9fe::]/hook",
        "https://[2001:0:5db8:d822::f5ff:fffe]/hook",
    ] {
        let (status, e) = create(&app, json!({"url": url, "events": ["run.success"]})).await;
        assert_eq!(status, 400, "{url} → {e}");
        assert_eq!(e["code"], "invalid_url", "{url} → {e}");
        assert_eq!(e["param"], "url", "{url} → {e}");
    }
    // The same forms around a public address stay usable.
    for url in [
        "https://[::ffff:0:5db8:d822]/hook",
        "https://[64:ff9b:1::5db8:d822]/hook",
        "https://[2001:0:5db8:d822::a247:27dd]/hook",
    ] {
        let (status, e) = create(&app, json!({"url": url, "events": ["run.success"]})).await;
        assert_eq!(status, 201, "{url} → {e}");
    }
}
