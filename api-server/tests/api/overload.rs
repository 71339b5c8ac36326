//! Denial-of-service bounds: metrics label cardinality, connection limits and timeouts, SSE stream caps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use test_support::{spawn_app, spawn_app_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

async fn metrics(app: &test_support::TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn request_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("appstrate_http_requests_total{"))
        .map(|l| l.rsplit_once(' ').map_or(l, |(series, _)| series))
        .collect()
}

/// Unknown HTTP methods are counted under `method="other"` and unmatched paths under one route label,
/// so 300 requests with random methods and paths do not add series to `/metrics`.
#[tokio::test]
async fn random_methods_and_paths_do_not_grow_metrics() {
    let app = spawn_app().await;
    let send = |method: String, path: String| {
        let req = app.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(&path),
        );
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // One of each shape first, so every series the loop below can touch exists.
    send("XWARMUP".into(), "/health".into()).await;
    send("XWARMUP".into(), "/nowhere/warmup".into()).await;
    send("XWARMUP".into(), "/api/nowhere/warmup".into()).await;
    // The first fetch adds the `GET /metrics` series itself.
    metrics(&app).await;
    let before = metrics(&app).await;
    let series_before = request_series(&before).len();

    for i in 0..300u32 {
        let method = format!("X{:08X}", rand_u32(i));
        let path = match i % 3 {
            0 => "/health".to_string(),
            1 => format!("/nowhere/{i}"),
            _ => format!("/api/nowhere/{i}"),
        };
        let status = send(method, path).await;
        assert!(status >= 400, "{status}");
    }

    let after = metrics(&app).await;
    let series_after = request_series(&after);
    assert_eq!(series_after.len(), series_before, "{after}");
    assert!(!after.contains("XWARMUP") && !after.contains("method=\"X"));
    assert!(
        series_after.iter().any(|s| s.contains("method=\"other\"")),
        "{after}"
    );
    assert!(
        series_after
            .iter()
            .filter(|s| s.contains("method=\"other\""))
            .all(|s| s.contains("route=\"unmatched\"") || s.contains("route=\"/health\"")),
        "{after}"
    );
    assert!(
        after.len() < before.len() + 512,
        "metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

fn rand_u32(seed: u32) -> u32 {
    // A fixed permutation is enough: every method differs.
    seed.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995
}

async fn connect(app: &test_support::TestApp) -> TcpStream {
    TcpStream::connect(("127.0.0.1", app.port)).await.unwrap()
}

/// Reads until the server closes the connection (or `limit` passes: `None`).
async fn read_to_close(stream: &mut OwnedReadHalf, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one complete response (head and `content-length` body) without waiting for the close.
async fn read_response(stream: &mut OwnedReadHalf) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if out.len() >= head_end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a complete response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

/// A client that trickles its request headers (slowloris) gets 408 and is disconnected once the
/// header-read timeout has passed, however steadily it keeps sending.
#[tokio::test]
async fn trickled_headers_get_408_after_the_header_timeout() {
    let app = spawn_app_with(&[("HTTP_HEADER_READ_TIMEOUT_SECONDS", "1")]).await;
    let (mut rd, mut wr) = connect(&app).await.into_split();
    let started = Instant::now();
    wr.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let trickle = {
        let answered = answered.clone();
        tokio::spawn(async move {
            // One header byte every 100 ms: never a complete head.
            while !answered.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(8) {
                if wr.write_all(b"X").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut first = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(6), rd.read_exact(&mut first))
        .await
        .expect("the server answers a trickling client")
        .unwrap();
    answered.store(true, Ordering::SeqCst);
    assert_eq!(&first, b"HTTP/1.1 408");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    let rest = read_to_close(&mut rd, Duration::from_secs(5))
        .await
        .expect("the connection is closed after the 408");
    assert!(rest.contains("\"code\":\"request_timeout\""), "{rest}");
    trickle.await.unwrap();

    // A client that connects and sends nothing is disconnected too (without an answer).
    let (mut rd, _wr) = connect(&app).await.into_split();
    let silent = read_to_close(&mut rd, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed");
    assert_eq!(silent, "");
}

/// An idle keep-alive connection is closed after the keep-alive timeout; a request in progress (an SSE
/// stream, silent for longer than both timeouts) is not cut.
#[tokio::test]
async fn idle_keep_alive_connections_close_but_slow_responses_do_not() {
    let app = spawn_app_with(&[
        ("HTTP_KEEPALIVE_TIMEOUT_SECONDS", "1"),
        ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    let (mut rd, mut wr) = connect(&app).await.into_split();
    wr.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut rd).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let idle = Instant::now();
    let rest = read_to_close(&mut rd, Duration::from_secs(6))
        .await
        .expect("the idle connection is closed");
    assert_eq!(rest, "");
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle.elapsed()
    );

    let mut stream = app
        .client
        .get(app.url(&format!("/api/realtime/runs?token={}", app.api_key)))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let ping = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&ping).contains("event: ping"));
    // Nothing to send for 2.5 s: the stream stays open.
    let next = tokio::time::timeout(Duration::from_millis(2500), stream.chunk()).await;
    assert!(next.is_err(), "the stream was closed: {next:?}");
}

/// With `HTTP_MAX_CONNECTIONS=3`, a fourth connection is answered 503 and closed; once one closes, a new
/// connection is served again.
#[tokio::test]
async fn connections_past_the_maximum_get_503() {
    let app = spawn_app_with(&[("HTTP_MAX_CONNECTIONS", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (mut rd, mut wr) = connect(&app).await.into_split();
        wr.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let res = read_response(&mut rd).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        held.push((rd, wr));
    }
    let (mut rd, mut wr) = connect(&app).await.into_split();
    let _ = wr
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let res = read_to_close(&mut rd, Duration::from_secs(5))
        .await
        .expect("the refused connection is closed");
    assert!(res.starts_with("HTTP/1.1 503"), "{res}");
    assert!(res.to_ascii_lowercase().contains("retry-after: 1"), "{res}");
    assert!(res.contains("\"code\":\"connection_limit\""), "{res}");

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut rd, mut wr) = connect(&app).await.into_split();
        let _ = wr
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await;
        let res = read_to_close(&mut rd, Duration::from_secs(5))
            .await
            .unwrap();
        if res.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed slot was never reused: {res}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// At most 10 SSE streams per identity are open at once; the 11th gets 429 `too_many_streams` with
/// `Retry-After` and the rate-limit headers, and a slot frees when a stream closes.
#[tokio::test]
async fn sse_streams_are_capped_per_identity() {
    let app = spawn_app().await;
    let url = |path: &str| app.url(&format!("{path}?token={}", app.api_key));
    let mut open = Vec::new();
    for _ in 0..10 {
        let r = app
            .client
            .get(url("/api/realtime/runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = app
        .client
        .get(url("/api/realtime/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    assert_eq!(h["retry-after"], "5");
    assert_eq!(h["ratelimit"], "limit=10, remaining=0, reset=5");
    assert_eq!(h["ratelimit-policy"], "10");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams");

    // Another identity (the admin token) has its own budget.
    let r = app
        .client
        .get(app.url(&format!(
            "/api/realtime/runs?token={}&appId={}",
            app.admin_token, app.app_id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app
            .client
            .get(url("/api/realtime/runs"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            Instant::now() < deadline,
            "a closed stream never freed its slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
