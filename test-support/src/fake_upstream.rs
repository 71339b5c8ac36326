//! A loopback HTTP server standing in for a third-party API: records every request (method, path,
//! headers, body) and answers with configurable responses, including redirects.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// One request as a fake server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub(crate) async fn capture(req: Request) -> RecordedRequest {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        }
    }
}

/// A canned answer.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl UpstreamResponse {
    pub fn json(status: u16, body: Value) -> Self {
        UpstreamResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        UpstreamResponse {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A redirect (`status` 301/302/303/307/308) to `location`, absolute or relative.
    pub fn redirect(status: u16, location: impl Into<String>) -> Self {
        UpstreamResponse {
            status,
            headers: vec![("location".into(), location.into())],
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    fn to_response(&self) -> Response {
        let mut resp = Response::new(Body::from(self.body.clone()));
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                resp.headers_mut().append(k, v);
            }
        }
        resp
    }
}

#[derive(Default)]
struct UpstreamState {
    routes: Mutex<HashMap<String, UpstreamResponse>>,
    default: Mutex<Option<UpstreamResponse>>,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// The fake API. Every path answers the default (`200 {"ok":true}`) unless [`FakeUpstream::on`] set one.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> FakeUpstream {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `resp` for every request to exactly `path` (any method).
    pub fn on(&self, path: &str, resp: UpstreamResponse) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), resp);
    }

    /// Replaces the answer for paths without their own.
    pub fn set_default(&self, resp: UpstreamResponse) {
        *self.state.default.lock().unwrap() = Some(resp);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(state): State<Arc<UpstreamState>>, req: Request) -> Response {
    let rec = RecordedRequest::capture(req).await;
    let resp = state
        .routes
        .lock()
        .unwrap()
        .get(&rec.path)
        .cloned()
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or_else(|| UpstreamResponse::json(200, serde_json::json!({"ok": true})));
    state.requests.lock().unwrap().push(rec);
    resp.to_response()
}
