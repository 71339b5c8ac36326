//! Pub/sub lag: the fan-out is partitioned per organization, and every subscriber (SSE streams,
//! long-polls, the run-cancel listener) recovers from a lag by re-reading the database. A stalled
//! subscriber is made by publishing in a tight loop: an in-process publish never yields, so on this
//! single-threaded test runtime no subscriber runs until the burst is over.

use std::time::{Duration, Instant};

use appstrate::infra::pubsub::Channel;
use appstrate::runs::verdict::Outcome;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::TestApp;

use crate::runs::llm_app;

fn inline(name: &str) -> Value {
    json!({
        "manifest": {"schema_version": "0.1", "name": name, "version": "1.0.0", "type": "agent",
                     "display_name": "Lag"},
        "prompt": "x",
    })
}

async fn start_run(app: &TestApp, key: &str, name: &str) -> String {
    let r = app
        .client
        .post(app.url("/api/runs/inline"))
        .bearer_auth(key)
        .json(&inline(name))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn runner_pid(app: &TestApp, run_id: &str) -> i32 {
    let file = app.data_dir.join(format!("runs/{run_id}/runner.pid"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "runner never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) != Some("Z"))
        .unwrap_or(false)
}

/// An SSE response read frame by frame.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(app: &TestApp, path: &str) -> Sse {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next `(event, data)`, or `None` once the stream has closed.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let event = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("")
                    .to_string();
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(|d| serde_json::from_str(d).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                return Some((event, data));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk())
                .await
                .expect("a frame within 30 s")
                .unwrap()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// 1,100 frames of one organization's runs to a stalled subscriber: the SSE streams of another
/// organization are on another channel, see every frame of their own run and its terminal update.
#[tokio::test]
async fn a_burst_in_one_org_leaves_another_orgs_streams_without_a_gap() {
    let fake = FakeLlm::start(vec![
        Turn::tool_call("log", json!({"level": "info", "message": "step one"})).with_delay(800),
        Turn::tool_call("output", json!({"data": {"ok": true}})),
    ])
    .await;
    let app = llm_app(&fake, &[]).await;
    let other = appstrate::cli::bootstrap_json(app.state().infra.db.as_ref(), "Other", "Other")
        .await
        .unwrap();
    let key = other["apiKey"].as_str().unwrap().to_string();
    let other_app = other["applicationId"].as_str().unwrap().to_string();
    assert_ne!(other["orgId"].as_str().unwrap(), app.org_id);

    let mut all = Sse::open(&app, &format!("/api/realtime/runs?token={key}")).await;
    assert_eq!(all.next().await.unwrap().0, "ping");
    let id = start_run(&app, &key, "@lag/quiet").await;
    let mut one = Sse::open(&app, &format!("/api/realtime/runs/{id}?token={key}")).await;
    assert_eq!(one.next().await.unwrap().0, "ping");
    assert_eq!(one.next().await.unwrap().0, "run_update");

    // The busy organization's burst, while the other one's run waits on its model.
    let pubsub = app.state().infra.pubsub.clone();
    let busy = Channel::run_events(&app.org_id);
    let _stalled = pubsub.subscribe(&busy).await.unwrap();
    for i in 0..1100 {
        let frame = json!({"event": "run_log", "runId": format!("run_busy_{i}"),
            "applicationId": app.app_id, "endUserId": null, "status": "running", "terminal": false,
            "data": {"message": "busy"}});
        pubsub.publish(&busy, frame.to_string()).await.unwrap();
    }

    let mut seen = Vec::new();
    while let Some((event, data)) = one.next().await {
        seen.push((event, data));
    }
    let names: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"run_log"), "{names:?}");
    let (last, data) = seen.last().unwrap();
    assert_eq!(last, "run_update", "{names:?}");
    assert_eq!(data["status"], "success");

    // The application-wide stream saw the same run through to its end, and nothing of the burst.
    let mut statuses = Vec::new();
    loop {
        let (event, data) = all.next().await.expect("the stream stays open");
        if event == "run_update" {
            assert_eq!(data["applicationId"], other_app.as_str());
            statuses.push(data["status"].as_str().unwrap().to_string());
            if data["status"] == "success" {
                break;
            }
        }
        assert_ne!(data["message"], "busy", "a frame of the other organization");
    }
    assert!(statuses.contains(&"running".to_string()), "{statuses:?}");
}

/// The run-cancel listener misses a cancellation (1,100 later frames pushed it out of its buffer): it
/// re-reads the runs it holds from the database and still stops the cancelled one.
#[tokio::test]
async fn a_cancel_missed_in_a_lag_still_stops_its_run() {
    let fake = FakeLlm::start(vec![Turn::text("slow").with_delay(120_000)]).await;
    let app = llm_app(&fake, &[]).await;
    let id = start_run(&app, &app.api_key, "@lag/cancelled").await;
    let pid = runner_pid(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // As a sibling instance cancels: publish the run id, then finalize. The burst comes in between.
    let pubsub = app.state().infra.pubsub.clone();
    let cancel = Channel::run_cancel();
    pubsub.publish(&cancel, id.clone()).await.unwrap();
    for i in 0..1100 {
        pubsub
            .publish(&cancel, format!("run_elsewhere_{i}"))
            .await
            .unwrap();
    }
    let t = Instant::now();
    assert!(appstrate::runs::finalize_run(
        app.state(),
        &id,
        Outcome::synthetic("cancelled", "Cancelled by user")
    )
    .await
    .unwrap());
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the cancelled run's runner is still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run: Value = app
        .key(Method::GET, &format!("/api/runs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "cancelled");
}
