//! Uploads into runs: a 50 MiB upload streamed with bounded memory, used as a run input and visible in
//! the run's workspace; an oversized upload refused while streaming; a replayed URL; expiry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{FakeLlm, Turn};

use super::memory::create_agent;
use super::runs::{llm_app, start, wait_terminal};

async fn get_json(app: &TestApp, path: &str) -> Value {
    let r = app.key(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

pub(crate) async fn create_upload(app: &TestApp, name: &str, size: u64) -> Value {
    let r = app
        .key(Method::POST, "/api/uploads")
        .json(&json!({"name": name, "mediaType": "text/csv", "size": size}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

/// `len` bytes in 1 MiB chunks, produced as they are sent; `sent` counts what the client produced.
fn generated(len: u64, sent: Arc<AtomicU64>) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    let stream = futures::stream::unfold(0u64, move |done| {
        let chunk = chunk.clone();
        let sent = sent.clone();
        async move {
            if done >= len {
                return None;
            }
            let n = (len - done).min(chunk.len() as u64);
            sent.fetch_add(n, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(chunk.slice(..n as usize)), done + n))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A 50 MiB upload is streamed to storage (the process's peak RSS grows far less than the file), used as a
/// run input, and appears in the run's workspace (the agent publishes it back from there).
#[tokio::test]
async fn a_50_mib_upload_streams_with_bounded_memory_and_reaches_the_workspace() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let llm = FakeLlm::start(vec![
        Turn::tool_call(
            "publish_document",
            json!({"name": "copy.csv", "mediaType": "text/csv", "path": "data.csv"}),
        ),
        Turn::text("ok"),
    ])
    .await;
    let app = llm_app(&llm, &[("DOCUMENT_MAX_BYTES", "104857600")]).await;
    let upload = create_upload(&app, "data.csv", SIZE).await;
    let url = upload["uploadUrl"].as_str().unwrap().to_string();
    assert_eq!(upload["status"], "pending");

    let base = rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let r = app
        .client
        .put(&url)
        .header("content-length", SIZE.to_string())
        .body(generated(SIZE, sent))
        .send()
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(r.status(), 200);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["status"], "ready");
    assert_eq!(stored["size"], SIZE);
    let delta_mib = (peak.load(Ordering::Relaxed).saturating_sub(base)) / 1024;
    println!("50 MiB upload: peak RSS delta {delta_mib} MiB (client and server in this process)");
    assert!(
        delta_mib < 40,
        "peak RSS grew by {delta_mib} MiB for a 50 MiB upload: the body is being buffered"
    );

    // A replayed URL is refused.
    let r = app.client.put(&url).body("again").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "url_already_used");

    let agent = create_agent(
        &app,
        "reader",
        json!({"input": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "upload"}}}}}),
    )
    .await;
    let id = upload["id"].as_str().unwrap();
    let run = start(
        &app,
        &format!("/api/agents/{agent}/run"),
        json!({"input": {"file": id}}),
    )
    .await;
    let run = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let first = llm.requests()[0].body_text();
    assert!(
        first.contains("data.csv (52428800 bytes, text/csv)"),
        "{}",
        &first[..first.len().min(2000)]
    );
    // Published back from the workspace: the same 50 MiB.
    assert_eq!(run["documents"][0]["name"], "copy.csv", "{run}");
    assert_eq!(run["documents"][0]["size"], SIZE);
    let docs = get_json(
        &app,
        &format!("/api/runs/{}/documents", run["id"].as_str().unwrap()),
    )
    .await;
    let mut r = app
        .client
        .get(docs["data"][0]["downloadUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let mut n = 0u64;
    while let Some(c) = r.chunk().await.unwrap() {
        assert!(c.iter().all(|b| *b == b'x'));
        n += c.len() as u64;
    }
    assert_eq!(n, SIZE);

    // An upload serves one run.
    let r = app
        .key(Method::POST, &format!("/api/agents/{agent}/run"))
        .json(&json!({"input": {"file": id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "input.file", "{body}");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("already used"));
}

/// More bytes than declared are refused while streaming: the server stops reading long before the client
/// has sent everything, and the upload can be sent again.
#[tokio::test]
async fn an_oversized_upload_is_refused_while_streaming() {
    let llm = FakeLlm::start(Vec::<Turn>::new()).await;
    let app = llm_app(&llm, &[]).await;
    let upload = create_upload(&app, "small.csv", 1024 * 1024).await;
    let url = upload["uploadUrl"].as_str().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    // No Content-Length (chunked): the limit is enforced on the bytes themselves.
    let res = app
        .client
        .put(url)
        .body(generated(512 * 1024 * 1024, sent.clone()))
        .send()
        .await;
    match res {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "payload_too_large");
        }
        // The server may close the connection while the client is still sending.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    let produced = sent.load(Ordering::SeqCst);
    assert!(
        produced < 64 * 1024 * 1024,
        "the client produced {produced} bytes before the refusal"
    );
    // Declared too large up front: refused before reading.
    let r = app
        .client
        .put(url)
        .header("content-length", (2 * 1024 * 1024).to_string())
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The upload is still waiting for its bytes.
    let r = app
        .client
        .put(url)
        .body(vec![b'y'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Uploads expire: the URL is refused afterwards and the upload is deleted by the sweep.
#[tokio::test]
async fn unused_uploads_expire_and_are_deleted() {
    let llm = FakeLlm::start(Vec::<Turn>::new()).await;
    let app = llm_app(&llm, &[("UPLOAD_EXPIRY_SECONDS", "1")]).await;
    let upload = create_upload(&app, "late.csv", 10).await;
    let id = upload["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = app
        .client
        .put(upload["uploadUrl"].as_str().unwrap())
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "signature_expired");
    let swept = appstrate::documents::sweep(app.state(), 100).await.unwrap();
    assert_eq!(swept.uploads, 1);
    assert!(app.state().infra.db.get_upload(id).await.unwrap().is_none());
}
