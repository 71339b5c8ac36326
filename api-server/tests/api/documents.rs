//! Documents out of runs: the real runner publishing through the platform's signed URLs at Tier 0
//! (filesystem) and with the S3 test server; tampered, re-purposed and expired URLs; retention; deletion
//! with the application; secret rotation. Uploads are in `uploads.rs`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::people::Browser;
use test_support::services;

use super::runs::{inline, llm_app, start, wait_terminal};

const SECRET: &str = "test-upload-signing-secret";

fn publish(name: &str, content: &str) -> Turn {
    Turn::tool_call(
        "publish_document",
        json!({"name": name, "mediaType": "text/markdown", "content": content}),
    )
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let r = app.key(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// A run publishes a document; it is listed on the run and in `/api/documents`, and its signed URL
/// serves it without an API key; a tampered, re-purposed or expired URL is refused with 403.
async fn published_and_downloaded(extra: &[(&str, &str)]) {
    let llm = FakeLlm::start(vec![
        publish("report.md", "# Report\nAll good."),
        Turn::text("Done."),
    ])
    .await;
    let app = llm_app(&llm, extra).await;
    let run = start(
        &app,
        "/api/runs/inline",
        inline(json!({}), "Write a report"),
    )
    .await;
    let run = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let run_id = run["id"].as_str().unwrap();
    assert_eq!(run["documents"][0]["name"], "report.md", "{run}");
    assert_eq!(run["documents"][0]["size"], 18);

    let docs = get_json(&app, &format!("/api/runs/{run_id}/documents")).await;
    let doc = &docs["data"][0];
    assert_eq!(doc["mediaType"], "text/markdown");
    let url = doc["downloadUrl"].as_str().unwrap().to_string();
    assert!(url.starts_with(&app.address), "{url}");

    // No API key needed.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/markdown");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("report.md"));
    assert_eq!(r.text().await.unwrap(), "# Report\nAll good.");

    // Tampered signature, another object, another method, an expired URL.
    let sig_at = url.find("signature=").unwrap() + "signature=".len();
    let mut tampered = url.clone();
    let flipped = if &url[sig_at..sig_at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(sig_at..sig_at + 1, flipped);
    let id = doc["id"].as_str().unwrap();
    let other = url.replace(id, "doc_00000000-0000-0000-0000-000000000000");
    for bad in [&tampered, &other] {
        let r = app.client.get(bad).send().await.unwrap();
        assert_eq!(r.status(), 403, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "invalid_signature", "{body}");
    }
    let r = app.client.put(&url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 403, "a GET URL used for a PUT");
    let past = chrono::Utc::now().timestamp() - 1;
    let q = appstrate::documents::signing::query(SECRET.as_bytes(), "GET", id, past, None);
    let r = app
        .client
        .get(app.url(&format!("/api/documents/_content?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "signature_expired");
    assert!(body["detail"].as_str().unwrap().contains("expired"));

    // Listing with filters, the API-key download, and deletion.
    let list = get_json(&app, &format!("/api/documents?runId={run_id}")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let none = get_json(&app, "/api/documents?mediaType=application/pdf").await;
    assert!(none["data"].as_array().unwrap().is_empty());
    let r = app
        .key(Method::GET, &format!("/api/documents/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "# Report\nAll good.");
    // Without credentials the route is closed; only the signed URL opens the content.
    let r = app
        .client
        .get(app.url(&format!("/api/documents/{id}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .key(Method::DELETE, &format!("/api/documents/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn documents_tier0_filesystem() {
    published_and_downloaded(&[]).await;
}

#[tokio::test]
async fn documents_s3() {
    let target = test_support::require!(services::s3_bucket());
    let env = target.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    published_and_downloaded(&pairs).await;
}

/// Retention: a document past `DOCUMENT_RETENTION_DAYS` goes, and a run deleted by run retention takes
/// its documents' bytes with it.
#[tokio::test]
async fn retention_deletes_old_documents_and_those_of_deleted_runs() {
    let llm = FakeLlm::start(vec![publish("a.md", "alpha"), Turn::text("ok")]).await;
    let app = llm_app(&llm, &[]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let run = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    let state = app.state();
    let db = &state.infra.db;
    let storage = &state.infra.storage;
    let doc_id = run["documents"][0]["id"].as_str().unwrap().to_string();
    let doc = db.get_document(&doc_id).await.unwrap().unwrap();
    assert!(storage.get(&doc.storage_key).await.unwrap().is_some());

    // An old run (finished long ago) with a document: run retention removes both.
    let mut old = db
        .get_run(run["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    old.id = format!("run_{}", uuid::Uuid::new_v4());
    old.created_at = chrono::Utc::now() - chrono::Duration::days(400);
    db.insert_run(&old, 50).await.unwrap();
    let mut old_doc = doc.clone();
    old_doc.id = format!("doc_{}", uuid::Uuid::new_v4());
    old_doc.run_id = old.id.clone();
    old_doc.storage_key = format!("runs/{}/documents/{}", old.id, old_doc.id);
    db.insert_document_capped(&old_doc, 10)
        .await
        .unwrap()
        .unwrap();
    storage
        .put(&old_doc.storage_key, Bytes::from_static(b"old"))
        .await
        .unwrap();
    let leftovers = appstrate::retention::Leftovers {
        data_dir: &state.config.data_dir,
        storage: Some(storage.as_ref()),
    };
    let report = appstrate::retention::sweep(
        db.as_ref(),
        &state.config.retention,
        leftovers,
        None,
        Duration::ZERO,
        || false,
    )
    .await
    .unwrap();
    assert_eq!(report.deleted.runs, 1);
    assert!(db.get_document(&old_doc.id).await.unwrap().is_none());
    assert!(storage.get(&old_doc.storage_key).await.unwrap().is_none());
    // The recent run's document is untouched.
    assert!(storage.get(&doc.storage_key).await.unwrap().is_some());

    // A document older than DOCUMENT_RETENTION_DAYS (30) goes with the document sweep.
    let mut aged = doc.clone();
    aged.id = format!("doc_{}", uuid::Uuid::new_v4());
    aged.created_at = chrono::Utc::now() - chrono::Duration::days(31);
    aged.storage_key = format!("runs/{}/documents/{}", doc.run_id, aged.id);
    db.insert_document_capped(&aged, 10).await.unwrap().unwrap();
    storage
        .put(&aged.storage_key, Bytes::from_static(b"aged"))
        .await
        .unwrap();
    let swept = appstrate::documents::sweep(state, 100).await.unwrap();
    assert_eq!(swept.documents, 1);
    assert!(storage.get(&aged.storage_key).await.unwrap().is_none());
    assert!(db.get_document(&doc.id).await.unwrap().is_some());
}

/// Rotating `UPLOAD_SIGNING_SECRET` invalidates outstanding URLs and leaves sessions alone; rotating the
/// session secret leaves signed URLs alone.
#[tokio::test]
async fn rotating_the_upload_secret_invalidates_urls_not_sessions() {
    let llm = FakeLlm::start(vec![publish("r.md", "rotate"), Turn::text("ok")]).await;
    let mut app = llm_app(&llm, &[]).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "x")).await;
    let run = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    let docs = get_json(
        &app,
        &format!("/api/runs/{}/documents", run["id"].as_str().unwrap()),
    )
    .await;
    let url = docs["data"][0]["downloadUrl"].as_str().unwrap().to_string();
    let mut browser = Browser::new(&app, "rotate@example.com");
    browser.sign_up().await;
    assert_eq!(browser.get("/api/auth/get-session", &[]).await.0, 200);

    // The session secret rotates: the URL still works (the session does not, by design of sessions).
    app.restart_with(&[("BETTER_AUTH_SECRET", "another-better-auth-secret")], &[])
        .await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    // Back to the first session secret, then the upload secret rotates.
    app.restart_with(
        &[
            ("BETTER_AUTH_SECRET", "test-better-auth-secret"),
            ("UPLOAD_SIGNING_SECRET", "a-rotated-upload-signing-secret"),
        ],
        &[],
    )
    .await;
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_signature");
    assert!(body["detail"].as_str().unwrap().contains("rotated"));
    let (status, session) = browser.get("/api/auth/get-session", &[]).await;
    assert_eq!(status, 200, "the session survives: {session}");
    // A freshly signed URL works with the new secret.
    let docs = get_json(
        &app,
        &format!("/api/runs/{}/documents", run["id"].as_str().unwrap()),
    )
    .await;
    let fresh = docs["data"][0]["downloadUrl"].as_str().unwrap();
    assert_eq!(app.client.get(fresh).send().await.unwrap().status(), 200);
}

/// Deleting an application deletes the bytes of its runs' documents and of its uploads.
#[tokio::test]
async fn deleting_an_application_deletes_its_documents_and_uploads() {
    let llm = FakeLlm::start(vec![publish("b.md", "of app B"), Turn::text("ok")]).await;
    let app = llm_app(&llm, &[]).await;
    let b: Value = app
        .client
        .post(app.url("/api/applications"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"name": "B"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b = b["id"].as_str().unwrap().to_string();
    let as_b = |m: Method, path: &str| {
        app.client
            .request(m, app.url(path))
            .bearer_auth(&app.admin_token)
            .header("X-App-Id", &b)
    };
    let run: Value = as_b(Method::POST, "/api/runs/inline")
        .json(&inline(json!({}), "x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["id"].as_str().unwrap();
    let mut done = Value::Null;
    for _ in 0..10 {
        done = as_b(Method::GET, &format!("/api/runs/{id}?wait=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done["status"] == "success" {
            break;
        }
    }
    assert_eq!(done["status"], "success", "{done}");
    let upload: Value = as_b(Method::POST, "/api/uploads")
        .json(&json!({"name": "u.txt", "mediaType": "text/plain", "size": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = app
        .client
        .put(upload["uploadUrl"].as_str().unwrap())
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state = app.state();
    let doc = state
        .infra
        .db
        .get_document(done["documents"][0]["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let upload_key = format!("uploads/{b}/{}", upload["id"].as_str().unwrap());
    assert!(state
        .infra
        .storage
        .get(&doc.storage_key)
        .await
        .unwrap()
        .is_some());
    assert!(state
        .infra
        .storage
        .get(&upload_key)
        .await
        .unwrap()
        .is_some());

    let r = app
        .client
        .delete(app.url(&format!("/api/applications/{b}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(state
        .infra
        .storage
        .get(&doc.storage_key)
        .await
        .unwrap()
        .is_none());
    assert!(state
        .infra
        .storage
        .get(&upload_key)
        .await
        .unwrap()
        .is_none());
}
