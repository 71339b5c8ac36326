//! The `appstrate-operator` binary against a minimal in-process API server: it elects itself
//! through the Lease, serves `/healthz`, `/readyz` and `/metrics`, and on SIGTERM stops the
//! controller, releases the Lease and exits 0.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct FakeApi {
    lease: Arc<Mutex<Option<Value>>>,
    /// `User-Agent` and query of every Lease write.
    writes: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeApi {
    fn record(&self, headers: &axum::http::HeaderMap, uri: &Uri) {
        let agent = headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let query = uri.query().unwrap_or_default().to_string();
        self.writes.lock().unwrap().push((agent, query));
    }
}

fn not_found() -> Response {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    (StatusCode::NOT_FOUND, Json(status)).into_response()
}

/// Lists answer empty; watches stay open without events.
async fn list_or_watch(uri: Uri) -> Response {
    if uri.query().unwrap_or_default().contains("watch=") {
        let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        return Response::new(Body::from_stream(never));
    }
    Json(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})).into_response()
}

async fn get_lease(
    State(api): State<FakeApi>,
    Path((_ns, _name)): Path<(String, String)>,
) -> Response {
    match api.lease.lock().unwrap().clone() {
        Some(l) => Json(l).into_response(),
        None => not_found(),
    }
}

fn stored(mut lease: Value, rv: u64) -> Value {
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["resourceVersion"] = json!(rv.to_string());
    lease
}

async fn create_lease(
    State(api): State<FakeApi>,
    headers: axum::http::HeaderMap,
    uri: Uri,
    Json(lease): Json<Value>,
) -> Response {
    api.record(&headers, &uri);
    let lease = stored(lease, 1);
    *api.lease.lock().unwrap() = Some(lease.clone());
    (StatusCode::CREATED, Json(lease)).into_response()
}

async fn replace_lease(
    State(api): State<FakeApi>,
    headers: axum::http::HeaderMap,
    uri: Uri,
    Json(lease): Json<Value>,
) -> Response {
    api.record(&headers, &uri);
    let mut slot = api.lease.lock().unwrap();
    let rv = slot
        .as_ref()
        .and_then(|l| {
            l["metadata"]["resourceVersion"]
                .as_str()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let lease = stored(lease, rv + 1);
    *slot = Some(lease.clone());
    Json(lease).into_response()
}

async fn start_fake_api() -> (SocketAddr, FakeApi) {
    let api = FakeApi::default();
    let app = Router::new()
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            axum::routing::post(create_lease),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(get_lease).put(replace_lease),
        )
        .fallback(list_or_watch)
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, api)
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    Some((code, out))
}

fn holder(api: &FakeApi) -> Option<String> {
    api.lease.lock().unwrap().as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

fn kubeconfig(addr: SocketAddr, tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "appstrate-operator-test-{}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{addr}\"}}\n\
             contexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n\
             users:\n- name: fake\n  user: {{token: fake}}\n"
        ),
    )
    .unwrap();
    path
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Operator {
    child: std::process::Child,
    port: u16,
    /// Drains stderr as it is written: a full pipe would block the operator's logging and its exit.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Operator {
    fn spawn(kubeconfig: &std::path::Path, identity: &str) -> Operator {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_appstrate-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("METRICS_PORT", port.to_string())
            .env("POD_NAMESPACE", "ops")
            .env("POD_NAME", identity)
            .env("LEADER_ELECTION", "true")
            .env("LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("operator starts");
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            use std::io::Read;
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        });
        Operator {
            child,
            port,
            stderr: Some(stderr),
        }
    }

    async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = http_get(self.port, "/readyz").await {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "operator never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and returns the exit status (and stderr) once the process is gone.
    async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: plain kill(2) on the child this test spawned.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("operator did not stop within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (exit, stderr)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_holder(api: &FakeApi, expected: Option<&str>) {
    let start = Instant::now();
    while holder(api).as_deref() != expected {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "Lease holder {:?}, expected {expected:?}",
            holder(api)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operator_binary_elects_itself_serves_health_and_stops_on_sigterm() {
    let (addr, api) = start_fake_api().await;
    let config = kubeconfig(addr, "single");
    let op = Operator::spawn(&config, "operator-0");
    op.wait_ready().await;
    assert_eq!(
        holder(&api).as_deref(),
        Some("operator-0"),
        "leader through the Lease"
    );
    let (code, _) = http_get(op.port, "/healthz")
        .await
        .expect("/healthz answers");
    assert_eq!(code, 200);
    let (code, metrics) = http_get(op.port, "/metrics")
        .await
        .expect("/metrics answers");
    assert_eq!(code, 200);
    for name in [
        "appstrate_operator_reconcile",
        "appstrate_operator_reconcile_duration_seconds",
        "appstrate_operator_reconcile_errors",
        "appstrate_operator_instances{phase=\"Ready\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    let (exit, stderr) = op.terminate().await;
    assert!(exit.success(), "exit {exit:?}\n{stderr}");
    assert_eq!(holder(&api), None, "Lease released on shutdown");
    // Every write names the operator: as field manager, and in the User-Agent the API server
    // falls back on for writes without one.
    let writes = api.writes.lock().unwrap().clone();
    assert!(!writes.is_empty());
    for (agent, query) in writes {
        assert_eq!(agent, operator::user_agent());
        assert!(
            query
                .split('&')
                .any(|p| p == "fieldManager=appstrate-operator"),
            "{query}"
        );
    }
    let _ = std::fs::remove_dir_all(config.parent().unwrap_or(&config));
}

#[tokio::test]
async fn second_replica_waits_then_takes_over_when_the_leader_stops() {
    let (addr, api) = start_fake_api().await;
    let config = kubeconfig(addr, "pair");
    let a = Operator::spawn(&config, "operator-a");
    a.wait_ready().await;
    wait_holder(&api, Some("operator-a")).await;
    let b = Operator::spawn(&config, "operator-b");
    b.wait_ready().await;
    // B keeps retrying for a while without taking the Lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&api).as_deref(), Some("operator-a"));

    let (exit, stderr) = a.terminate().await;
    assert!(exit.success(), "{stderr}");
    wait_holder(&api, Some("operator-b")).await;
    let (exit, stderr) = b.terminate().await;
    assert!(exit.success(), "{stderr}");
    wait_holder(&api, None).await;
    let _ = std::fs::remove_dir_all(config.parent().unwrap_or(&config));
}
