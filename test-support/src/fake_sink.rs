//! A loopback event sink for the runner's own tests (§12): it checks Standard-Webhooks signatures and
//! timestamps, validates CloudEvents, applies the sequence rules (persisted / buffered / replay),
//! serves the run bundle at the workspace URL, and records events, heartbeats and the finalize body.

use crate::fake_upstream::RecordedRequest;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// `|now − webhook-timestamp|` allowed, as the platform's default.
pub const TIMESTAMP_TOLERANCE_SECONDS: i64 = 300;

/// Builds a ZIP from `(path, bytes)` entries, e.g. a run bundle with `manifest.json` and `prompt.md`.
pub fn bundle_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body) in entries {
        w.start_file(
            *name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .expect("zip entry");
        w.write_all(body).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

/// Checks the Standard-Webhooks headers of `req` against `secret`; `Err` names the problem the way
/// the platform's error codes do.
pub fn verify_signature(secret: &str, req: &RecordedRequest) -> Result<(), String> {
    let (Some(id), Some(ts), Some(sigs)) = (
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
    ) else {
        return Err("missing_signature_headers".into());
    };
    let ts: i64 = ts.parse().map_err(|_| "invalid_timestamp".to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECONDS {
        return Err("timestamp_out_of_tolerance".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&req.body);
    let expected = mac.finalize().into_bytes();
    let ok = sigs.split(' ').any(|entry| {
        let Some(b64) = entry.strip_prefix("v1,") else {
            return false;
        };
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(raw) => {
                let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                m.update(format!("{id}.{ts}.").as_bytes());
                m.update(&req.body);
                raw.len() == expected.len() && m.verify_slice(&raw).is_ok()
            }
            Err(_) => false,
        }
    });
    if ok {
        Ok(())
    } else {
        Err("invalid_signature".into())
    }
}

/// Problems with a CloudEvent body (§12.3); empty when it is valid for `run_id`.
pub fn cloud_event_errors(ev: &Value, run_id: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if ev["specversion"] != "1.0" {
        errs.push("specversion must be \"1.0\"".into());
    }
    if ev["type"].as_str().is_none_or(|s| s.is_empty()) {
        errs.push("type must be a non-empty string".into());
    }
    if ev["source"] != json!(format!("/afps/runs/{run_id}")) {
        errs.push(format!("source must be /afps/runs/{run_id}"));
    }
    if ev["id"].as_str().is_none_or(|s| s.is_empty()) {
        errs.push("id must be a non-empty string".into());
    }
    let time_ok = ev["time"]
        .as_str()
        .is_some_and(|t| t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'));
    if !time_ok {
        errs.push("time must be RFC 3339 UTC".into());
    }
    if ev["datacontenttype"] != "application/json" {
        errs.push("datacontenttype must be application/json".into());
    }
    if !ev["data"].is_object() {
        errs.push("data must be an object".into());
    }
    if ev["sequence"].as_u64().is_none_or(|s| s < 1) {
        errs.push("sequence must be an integer >= 1".into());
    }
    errs
}

#[derive(Default)]
struct SinkState {
    run_id: String,
    secret: String,
    bundle: Vec<u8>,
    requests: Vec<RecordedRequest>,
    /// Events in persisted (sequence) order.
    persisted: Vec<Value>,
    /// Every accepted POST to /events with its outcome, in arrival order.
    received: Vec<(Value, &'static str)>,
    buffer: BTreeMap<u64, Value>,
    last_sequence: u64,
    seen_ids: HashSet<String>,
    heartbeats: usize,
    heartbeat_attempts: usize,
    heartbeat_status: Option<u16>,
    bundle_fetches: usize,
    finalize: Option<Value>,
    finalize_attempts: usize,
    rejections: Vec<String>,
    closed: bool,
    fail_events: usize,
    finalize_status: Option<u16>,
    bundle_status: Option<u16>,
}

/// The fake sink for one run. Dropping it stops the server.
pub struct FakeSink {
    addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    task: JoinHandle<()>,
}

impl FakeSink {
    /// Starts on `127.0.0.1:0` for `run_id`, verifying with `secret` and serving `bundle` (ZIP bytes).
    pub async fn start(run_id: &str, secret: &str, bundle: Vec<u8>) -> FakeSink {
        let state = Arc::new(Mutex::new(SinkState {
            run_id: run_id.into(),
            secret: secret.into(),
            bundle,
            ..SinkState::default()
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSink { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn run_path(&self) -> String {
        let run_id = self.state.lock().unwrap().run_id.clone();
        format!("{}/api/runs/{run_id}", self.url())
    }

    /// `APPSTRATE_SINK_URL`
    pub fn events_url(&self) -> String {
        format!("{}/events", self.run_path())
    }

    /// `APPSTRATE_SINK_FINALIZE_URL`
    pub fn finalize_url(&self) -> String {
        format!("{}/events/finalize", self.run_path())
    }

    /// `APPSTRATE_WORKSPACE_URL`
    pub fn workspace_url(&self) -> String {
        format!("{}/workspace", self.run_path())
    }

    /// The sink part of the runner's environment: run id, URLs and secret.
    pub fn runner_env(&self) -> Vec<(String, String)> {
        let s = self.state.lock().unwrap();
        vec![
            ("AGENT_RUN_ID".into(), s.run_id.clone()),
            ("APPSTRATE_SINK_SECRET".into(), s.secret.clone()),
            (
                "APPSTRATE_SINK_URL".into(),
                format!("http://{}/api/runs/{}/events", self.addr, s.run_id),
            ),
            (
                "APPSTRATE_SINK_FINALIZE_URL".into(),
                format!("http://{}/api/runs/{}/events/finalize", self.addr, s.run_id),
            ),
            (
                "APPSTRATE_WORKSPACE_URL".into(),
                format!("http://{}/api/runs/{}/workspace", self.addr, s.run_id),
            ),
        ]
    }

    /// Persisted events, in sequence order.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().persisted.clone()
    }

    /// Persisted events of one CloudEvent `type`.
    pub fn events_of(&self, event_type: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == event_type)
            .collect()
    }

    /// Every signed, well-formed event POST with its outcome (`persisted`, `buffered`, `replay`).
    pub fn received(&self) -> Vec<(Value, &'static str)> {
        self.state.lock().unwrap().received.clone()
    }

    /// Every request that reached the sink, valid or not.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn heartbeats(&self) -> usize {
        self.state.lock().unwrap().heartbeats
    }

    /// Signed heartbeat requests, accepted or not.
    pub fn heartbeat_attempts(&self) -> usize {
        self.state.lock().unwrap().heartbeat_attempts
    }

    /// Heartbeats get `status` (e.g. 410) while events and finalize go on as usual.
    pub fn set_heartbeat_status(&self, status: u16) {
        self.state.lock().unwrap().heartbeat_status = Some(status);
    }

    pub fn bundle_fetches(&self) -> usize {
        self.state.lock().unwrap().bundle_fetches
    }

    /// The accepted finalize body.
    pub fn finalize(&self) -> Option<Value> {
        self.state.lock().unwrap().finalize.clone()
    }

    pub fn finalize_attempts(&self) -> usize {
        self.state.lock().unwrap().finalize_attempts
    }

    /// Requests refused for a bad signature, timestamp or event shape (the reason each).
    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }

    /// The next `n` event POSTs get 503 (a transient failure the runner must retry).
    pub fn fail_next_events(&self, n: usize) {
        self.state.lock().unwrap().fail_events = n;
    }

    /// Every finalize gets `status` (e.g. 500: undeliverable; 410: closed).
    pub fn set_finalize_status(&self, status: u16) {
        self.state.lock().unwrap().finalize_status = Some(status);
    }

    /// The workspace URL answers `status` instead of the bundle.
    pub fn set_bundle_status(&self, status: u16) {
        self.state.lock().unwrap().bundle_status = Some(status);
    }

    /// Closes the sink: every later route answers 410 (as after a cancel).
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
    }

    /// Waits until `pred` holds for the persisted events, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.events()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn problem(status: u16, code: &str) -> Response {
    json_response(status, json!({"error": code, "code": code}))
}

async fn handle(State(state): State<Arc<Mutex<SinkState>>>, req: Request) -> Response {
    let rec = RecordedRequest::capture(req).await;
    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    s.requests.push(rec.clone());
    let base = format!("/api/runs/{}", s.run_id);
    let Some(route) = rec.path.strip_prefix(&base) else {
        return problem(404, "run_not_found");
    };
    let route = route.to_string();
    if !matches!(
        (rec.method.as_str(), route.as_str()),
        ("GET", "/workspace")
            | ("POST", "/events")
            | ("POST", "/events/heartbeat")
            | ("POST", "/events/finalize")
    ) {
        return problem(404, "not_found");
    }
    let id = rec.header("webhook-id").unwrap_or_default().to_string();
    if s.closed {
        // A replayed webhook-id still answers 200 after close.
        if route == "/events" && s.seen_ids.contains(&id) {
            return json_response(200, json!({"ok": true, "outcome": "replay"}));
        }
        return problem(410, "run_sink_closed");
    }
    if let Err(why) = verify_signature(&s.secret, &rec) {
        s.rejections
            .push(format!("{} {}: {why}", rec.method, rec.path));
        return problem(401, &why);
    }
    match route.as_str() {
        "/workspace" => {
            s.bundle_fetches += 1;
            if !rec.body.is_empty() {
                s.rejections.push("GET /workspace with a body".into());
            }
            if let Some(st) = s.bundle_status {
                return problem(st, "bundle_unavailable");
            }
            Response::builder()
                .status(200)
                .header("content-type", "application/zip")
                .body(Body::from(s.bundle.clone()))
                .unwrap()
        }
        "/events/heartbeat" => {
            s.heartbeat_attempts += 1;
            if let Some(st) = s.heartbeat_status {
                return problem(st, "scripted_failure");
            }
            if !rec.json().is_object() {
                s.rejections
                    .push("heartbeat body is not a JSON object".into());
                return problem(400, "invalid_request");
            }
            s.heartbeats += 1;
            json_response(200, json!({"ok": true}))
        }
        "/events/finalize" => {
            s.finalize_attempts += 1;
            if let Some(st) = s.finalize_status {
                if st == 410 {
                    s.closed = true;
                }
                return problem(st, "scripted_failure");
            }
            let body = rec.json();
            if !body.is_object() {
                s.rejections
                    .push("finalize body is not a JSON object".into());
                return problem(400, "invalid_request");
            }
            // Drain the buffer in order, accepting gaps.
            let buffered: Vec<Value> = std::mem::take(&mut s.buffer).into_values().collect();
            s.persisted.extend(buffered);
            let status = body["status"].as_str().unwrap_or("success").to_string();
            s.finalize = Some(body);
            s.closed = true;
            json_response(200, json!({"ok": true, "status": status}))
        }
        _ => {
            if s.fail_events > 0 {
                s.fail_events -= 1;
                return problem(503, "scripted_unavailable");
            }
            let ev = rec.json();
            let errs = cloud_event_errors(&ev, &s.run_id);
            if !errs.is_empty() {
                s.rejections
                    .push(format!("invalid_event: {}", errs.join(", ")));
                return json_response(400, json!({"error": "invalid_event", "errors": errs}));
            }
            let seq = ev["sequence"].as_u64().unwrap();
            if !s.seen_ids.insert(id) {
                s.received.push((ev, "replay"));
                return json_response(
                    200,
                    json!({"ok": true, "outcome": "replay", "sequence": seq}),
                );
            }
            let outcome = if seq <= s.last_sequence {
                "replay"
            } else if seq == s.last_sequence + 1 {
                s.persisted.push(ev.clone());
                s.last_sequence = seq;
                while let Some(next) = s.buffer.remove(&(s.last_sequence + 1)) {
                    s.persisted.push(next);
                    s.last_sequence += 1;
                }
                "persisted"
            } else {
                s.buffer.insert(seq, ev.clone());
                "buffered"
            };
            s.received.push((ev, outcome));
            json_response(
                200,
                json!({"ok": true, "outcome": outcome, "sequence": seq}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, id: &str, ts: i64, body: &[u8], sig_prefix: &str) -> RecordedRequest {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        RecordedRequest {
            method: "POST".into(),
            path: "/".into(),
            query: None,
            headers: vec![
                ("webhook-id".into(), id.into()),
                ("webhook-timestamp".into(), ts.to_string()),
                ("webhook-signature".into(), format!("{sig_prefix}v1,{sig}")),
            ],
            body: body.to_vec(),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn signature_verification() {
        let secret = "s".repeat(32);
        assert_eq!(
            verify_signature(&secret, &signed(&secret, "m1", now(), b"{}", "")),
            Ok(())
        );
        // Several entries; other versions are skipped.
        let multi = signed(&secret, "m1", now(), b"{}", "v2,abc v1,Zm9v ");
        assert_eq!(verify_signature(&secret, &multi), Ok(()));
        let other_key = signed("k".repeat(32).as_str(), "m1", now(), b"{}", "");
        assert_eq!(
            verify_signature(&secret, &other_key).unwrap_err(),
            "invalid_signature"
        );
        let stale = signed(&secret, "m1", now() - 301, b"{}", "");
        assert_eq!(
            verify_signature(&secret, &stale).unwrap_err(),
            "timestamp_out_of_tolerance"
        );
        let mut missing = signed(&secret, "m1", now(), b"{}", "");
        missing.headers.pop();
        assert_eq!(
            verify_signature(&secret, &missing).unwrap_err(),
            "missing_signature_headers"
        );
    }

    #[test]
    fn cloud_event_shape() {
        let good = json!({"specversion": "1.0", "type": "log.written", "source": "/afps/runs/r1",
            "id": "e1", "time": "2026-01-01T00:00:00.000Z", "datacontenttype": "application/json",
            "data": {}, "sequence": 1});
        assert!(cloud_event_errors(&good, "r1").is_empty());
        assert_eq!(cloud_event_errors(&good, "r2").len(), 1);
        let mut bad = good.clone();
        bad["sequence"] = json!(0);
        bad["data"] = json!([]);
        bad["time"] = json!("yesterday");
        assert_eq!(cloud_event_errors(&bad, "r1").len(), 3);
    }

    #[test]
    fn bundle_zip_round_trips() {
        let z = bundle_zip(&[("manifest.json", b"{}"), ("prompt.md", b"hi")]);
        let mut a = zip::ZipArchive::new(std::io::Cursor::new(z)).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.by_name("prompt.md").unwrap().size(), 2);
    }
}
