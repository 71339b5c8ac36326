//! The runner event sink (§12), driven by hand-signed requests against a run whose workload stays silent.

use std::os::unix::fs::PermissionsExt;

use appstrate::runs::sink::sign;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::spawn_app_with;

struct Signed {
    app: TestApp,
    run_id: String,
    secret: String,
    _llm: FakeLlm,
    _dir: tempfile::TempDir,
}

/// A run whose "runner" is a script that sleeps, so only the test talks to the sink.
async fn silent_run() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silent-runner");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let llm = FakeLlm::start(Vec::<Turn>::new()).await;
    let url = llm.url();
    let app = spawn_app_with(&[
        ("RUNNER_BIN", script.to_str().unwrap()),
        ("LLM_BASE_URL", &url),
        ("LLM_API_KEY", "sk-test"),
        ("LLM_MODEL", "m"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
    ])
    .await;
    let manifest = json!({"schema_version": "0.1", "name": "@tests/sink", "version": "1.0.0", "type": "agent", "display_name": "Sink"});
    let run: Value = app
        .key(Method::POST, "/api/runs/inline")
        .json(&json!({"manifest": manifest, "prompt": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_str().unwrap().to_string();
    let row = app
        .state()
        .infra
        .db
        .get_run(&run_id)
        .await
        .unwrap()
        .unwrap();
    let secret = String::from_utf8(
        app.state()
            .keyring
            .decrypt(&row.sink_secret_encrypted)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(secret.len(), 43);
    Signed {
        app,
        run_id,
        secret,
        _llm: llm,
        _dir: dir,
    }
}

fn event(run_id: &str, seq: i64, message: &str) -> Value {
    json!({"specversion": "1.0", "type": "appstrate.progress", "source": format!("/afps/runs/{run_id}"),
           "id": format!("evt-{seq}"), "time": "2026-11-23T00:00:00Z", "datacontenttype": "application/json",
           "data": {"message": message}, "sequence": seq})
}

impl Signed {
    async fn post(
        &self,
        path: &str,
        body: &Value,
        id: &str,
        ts: i64,
        key: Option<&str>,
    ) -> (u16, Value) {
        let raw = body.to_string();
        let sig = sign(
            key.unwrap_or(&self.secret).as_bytes(),
            id,
            ts,
            raw.as_bytes(),
        );
        let r = self
            .app
            .client
            .post(self.app.url(&format!("/api/runs/{}{path}", self.run_id)))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", format!("v1,{sig}"))
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn signatures_ordering_replay_and_single_finalize() {
    let s = silent_run().await;
    let id = s.run_id.clone();

    // Bad signature, stale timestamp, missing headers.
    let (code, b) = s
        .post(
            "/events",
            &event(&id, 1, "one"),
            "w1",
            now(),
            Some("wrong-key"),
        )
        .await;
    assert_eq!(
        (code, b["code"].as_str().unwrap()),
        (401, "invalid_signature")
    );
    let (code, b) = s
        .post("/events", &event(&id, 1, "one"), "w1", now() - 301, None)
        .await;
    assert_eq!(
        (code, b["code"].as_str().unwrap()),
        (401, "timestamp_out_of_tolerance")
    );
    let r = s
        .app
        .client
        .post(s.app.url(&format!("/api/runs/{id}/events")))
        .json(&event(&id, 1, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "missing_signature_headers"
    );
    let (code, _) = s
        .post("/events", &event(&id, 1, "x"), "w0", now(), None)
        .await;
    assert_eq!(code, 200);
    // Unknown run.
    let r = s
        .app
        .client
        .post(s.app.url("/api/runs/run_missing/events"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "run_not_found");

    // Sequences 3, 2 after 1: buffered, then persisted in order (drain).
    let (_, b) = s
        .post("/events", &event(&id, 3, "three"), "w3", now(), None)
        .await;
    assert_eq!(b["outcome"], "buffered");
    let (_, b) = s
        .post("/events", &event(&id, 2, "two"), "w2", now(), None)
        .await;
    assert_eq!(b["outcome"], "persisted");
    // A repeated webhook-id and an old sequence are replays.
    let (_, b) = s
        .post("/events", &event(&id, 2, "two"), "w2", now(), None)
        .await;
    assert_eq!(b["outcome"], "replay");
    let (_, b) = s
        .post("/events", &event(&id, 1, "again"), "w-new", now(), None)
        .await;
    assert_eq!(b["outcome"], "replay");
    // An invalid CloudEvent.
    let mut bad = event(&id, 4, "x");
    bad["specversion"] = json!("0.3");
    let (code, b) = s.post("/events", &bad, "w-bad", now(), None).await;
    assert_eq!((code, b["code"].as_str().unwrap()), (400, "invalid_event"));
    // Unknown event types advance the sequence without a log row.
    let mut other = event(&id, 4, "x");
    other["type"] = json!("something.else");
    let (_, b) = s.post("/events", &other, "w4", now(), None).await;
    assert_eq!(b["outcome"], "ignored");
    let (code, _) = s
        .post("/events/heartbeat", &json!({}), "hb1", now(), None)
        .await;
    assert_eq!(code, 200);

    let logs: Value = s
        .app
        .key(Method::GET, &format!("/api/runs/{id}/logs?level=info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let progress: Vec<&str> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["event"] == "progress")
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(progress, vec!["x", "two", "three"]);

    // An early event is buffered, then finalize drains it (accepting the gap) and closes the sink.
    let (_, b) = s
        .post("/events", &event(&id, 9, "nine"), "w9", now(), None)
        .await;
    assert_eq!(b["outcome"], "buffered");
    let metric = json!({"specversion": "1.0", "type": "appstrate.metric", "source": format!("/afps/runs/{id}"),
        "id": "m", "time": "2026-11-23T00:00:00Z", "datacontenttype": "application/json",
        "data": {"usage": {"input_tokens": 12, "output_tokens": 3}}, "sequence": 5});
    let (_, b) = s.post("/events", &metric, "w5", now(), None).await;
    assert_eq!(b["outcome"], "persisted");
    let fin = json!({"status": "success", "text": "done", "usage": {"input_tokens": 12, "output_tokens": 3}});
    let (code, b) = s.post("/events/finalize", &fin, "f1", now(), None).await;
    assert_eq!((code, b["status"].as_str().unwrap()), (200, "success"));
    // A second finalize with another id: the sink is closed. A replayed finalize id is still 200.
    let (code, b) = s
        .post(
            "/events/finalize",
            &json!({"status": "failed"}),
            "f2",
            now(),
            None,
        )
        .await;
    assert_eq!(
        (code, b["code"].as_str().unwrap()),
        (410, "run_sink_closed")
    );
    let (code, b) = s.post("/events/finalize", &fin, "f1", now(), None).await;
    assert_eq!((code, b["outcome"].as_str().unwrap()), (200, "replay"));
    let (code, _) = s
        .post("/events", &event(&id, 10, "late"), "w10", now(), None)
        .await;
    assert_eq!(code, 410);

    let run: Value = s
        .app
        .key(Method::GET, &format!("/api/runs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "success");
    assert_eq!(run["result"]["text"], "done");
    assert_eq!(run["token_usage"]["input_tokens"], 12);
    let logs: Value = s
        .app
        .key(Method::GET, &format!("/api/runs/{id}/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["message"] == "nine"));
    let completed = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["message"] == "run completed")
        .count();
    assert_eq!(completed, 1, "one terminal write");
}

/// A long-poll whose pub/sub subscription falls behind still answers (it re-reads the run) instead of
/// dropping the connection.
#[tokio::test]
async fn long_poll_survives_a_dropped_subscription() {
    use appstrate::infra::pubsub::Channel;
    let s = silent_run().await;
    let waiter = {
        let client = s.app.client.clone();
        let url = s.app.url(&format!("/api/runs/{}?wait=20", s.run_id));
        let key = s.app.api_key.clone();
        tokio::spawn(async move { client.get(url).bearer_auth(key).send().await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Flood the organization's channel past its capacity so the waiter's subscription lags.
    for i in 0..3000 {
        s.app
            .state()
            .infra
            .pubsub
            .publish(
                &Channel::run_events(&s.app.org_id),
                format!("{{\"n\":{i}}}"),
            )
            .await
            .unwrap();
    }
    let fin = json!({"status": "failed", "error": {"message": "stopped by the test"}});
    let (code, _) = s.post("/events/finalize", &fin, "fin", now(), None).await;
    assert_eq!(code, 200);
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the long-poll answers")
        .unwrap()
        .expect("an answer, not a dropped connection");
    assert_eq!(r.status(), 200);
    let run: Value = r.json().await.unwrap();
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"], "stopped by the test");
}

/// Timestamps at the ends of i64 (and past them) are refused with 401, not a panic: the server keeps
/// answering and a well-timed event is still accepted.
#[tokio::test]
async fn extreme_timestamps_are_refused_not_a_panic() {
    let s = silent_run().await;
    let id = s.run_id.clone();
    for ts in [i64::MIN, i64::MAX, i64::MIN + 1] {
        let (code, b) = s
            .post("/events", &event(&id, 1, "x"), "w-extreme", ts, None)
            .await;
        assert_eq!(
            (code, b["code"].as_str().unwrap_or("")),
            (401, "timestamp_out_of_tolerance"),
            "webhook-timestamp {ts}: {b}"
        );
    }
    for raw in [
        "-9223372036854775808",
        "99999999999999999999999",
        "1e18",
        "",
    ] {
        let r = s
            .app
            .client
            .post(s.app.url(&format!("/api/runs/{id}/events")))
            .header("webhook-id", "w-raw")
            .header("webhook-timestamp", raw)
            .header("webhook-signature", "v1,AAAA")
            .json(&event(&id, 1, "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "webhook-timestamp {raw:?}");
        let b: Value = r.json().await.unwrap();
        assert!(
            ["timestamp_out_of_tolerance", "invalid_timestamp"]
                .contains(&b["code"].as_str().unwrap()),
            "{raw:?}: {b}"
        );
    }
    let (code, b) = s
        .post("/events", &event(&id, 1, "fine"), "w-ok", now(), None)
        .await;
    assert_eq!((code, b["outcome"].as_str().unwrap()), (200, "persisted"));
}

/// `GET /logs?since=` walks every row exactly once, oldest first, with `hasMore` and a `Link` to the
/// next page.
#[tokio::test]
async fn logs_cursor_walks_every_row_once() {
    let s = silent_run().await;
    let id = s.run_id.clone();
    for seq in 1..=23 {
        let (code, _) = s
            .post(
                "/events",
                &event(&id, seq, &format!("m{seq}")),
                &format!("w{seq}"),
                now(),
                None,
            )
            .await;
        assert_eq!(code, 200);
    }
    let get = |q: String| {
        let app = &s.app;
        let id = id.clone();
        async move {
            let r = app
                .key(Method::GET, &format!("/api/runs/{id}/logs{q}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let link = r
                .headers()
                .get("link")
                .map(|v| v.to_str().unwrap().to_string());
            (r.json::<Value>().await.unwrap(), link)
        }
    };
    let (all, _) = get(String::new()).await;
    let all: Vec<i64> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect();
    assert!(all.len() >= 23, "{all:?}");

    let mut walked = Vec::new();
    let mut messages = Vec::new();
    let mut since = String::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 50, "the cursor does not advance");
        let (page, link) = get(format!("?limit=5{since}")).await;
        let rows = page["data"].as_array().unwrap();
        assert!(rows.len() <= 5);
        for l in rows {
            walked.push(l["id"].as_i64().unwrap());
            if l["event"] == "progress" {
                messages.push(l["message"].as_str().unwrap().to_string());
            }
        }
        if page["hasMore"] != true {
            break;
        }
        let last = walked.last().unwrap();
        assert!(
            link.as_deref().unwrap().contains(&format!("since={last}")),
            "{link:?}"
        );
        since = format!("&since={last}");
    }
    assert_eq!(walked, all, "every row once, in order");
    let mut sorted = walked.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), walked.len(), "no duplicates");
    let expected: Vec<String> = (1..=23).map(|i| format!("m{i}")).collect();
    assert_eq!(messages, expected);
    // Past the end: an empty page without more.
    let (page, _) = get(format!("?since={}", walked.last().unwrap())).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);
    assert_eq!(page["hasMore"], false);
}
