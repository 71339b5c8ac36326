//! `/mcp/{name}` (issue 16): the run token, unknown servers, a stdio server that cannot start, and a
//! remote server reached with the integration's header instead of the run token.

use super::*;

const ENV_CANARY: &str = "env-CANARY-0b7d41";

async fn rpc(client: &reqwest::Client, url: &str, body: Value) -> (StatusCode, Value) {
    let r = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    let text = r.text().await.unwrap();
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .unwrap_or_else(|| serde_json::from_str(&text).unwrap_or(Value::String(text)));
    (status, json)
}

#[tokio::test]
async fn mcp_routes_check_the_token_and_report_a_server_that_cannot_start() {
    let sc = start().await;
    let url = |name: &str| format!("{}/mcp/{name}", sc.api_url());
    let (status, _) = rpc(&http(), &url("broken"), json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let mut cfg = base_config("https://api.openai.com/v1", json!([]), &[]);
    cfg.mcp_servers = vec![serde_json::from_value(json!({
        "name": "broken", "id": "@tests/broken",
        "command": "/nonexistent/mcp-server", "env": {"API_TOKEN": ENV_CANARY},
    }))
    .unwrap()];
    sc.configure(cfg).unwrap();

    let (status, body) = rpc(&bare(), &url("broken"), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = rpc(&http(), &url("nope"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "unknown_mcp_server");
    let evil = http()
        .post(url("broken"))
        .header("host", "evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);

    let (status, init) = rpc(
        &http(),
        &url("broken"),
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{init}");
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "appstrate-sidecar/broken"
    );
    let (_, list) = rpc(
        &http(),
        &url("broken"),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let message = list["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("MCP server broken (@tests/broken) is unavailable: cannot start `/nonexistent/mcp-server`"),
        "{list}"
    );
    assert!(!list.to_string().contains(ENV_CANARY));
    sc.shutdown().await;
}

#[tokio::test]
async fn a_remote_mcp_server_gets_the_integration_header_and_never_the_run_token() {
    let rec = Recorder::default();
    let r2 = rec.clone();
    let addr = serve(Router::new().route(
        "/mcp",
        any(move |req: Request| {
            let rec = r2.clone();
            async move {
                rec.record(req).await;
                (
                    [
                        ("content-type", "application/json"),
                        ("mcp-session-id", "s-1"),
                    ],
                    "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
                )
                    .into_response()
            }
        }),
    ))
    .await;
    let sc = start().await;
    let mut cfg = base_config(
        "https://api.openai.com/v1",
        json!([integration(
            "@tests/remote",
            &[format!("http://127.0.0.1:{}/**", addr.port())],
            false,
            "Authorization",
            "Bearer remote-CANARY"
        )]),
        &["127.0.0.1"],
    );
    cfg.mcp_servers = vec![serde_json::from_value(json!({
        "name": "remote", "id": "@tests/remote-mcp",
        "url": format!("http://127.0.0.1:{}/mcp", addr.port()),
        "integration": "@tests/remote",
    }))
    .unwrap()];
    sc.configure(cfg).unwrap();
    let resp = http()
        .post(format!("{}/mcp/remote", sc.api_url()))
        .header("content-type", "application/json")
        .header("mcp-session-id", "s-1")
        .header("x-secret-extra", "nope")
        .body("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["mcp-session-id"], "s-1");
    let seen = rec.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["authorization"], "Bearer remote-CANARY");
    assert_eq!(seen.headers["mcp-session-id"], "s-1");
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert!(seen.headers.get("x-secret-extra").is_none());
    assert!(!format!("{:?}", seen.headers).contains(RUN_TOKEN));
    assert_eq!(
        seen.body,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}"
    );
    sc.shutdown().await;
}

/// Whether a process still runs (a zombie has exited).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_some_and(|st| st != "Z"))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_server_that_hangs_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("grandchild");
    let sc = start_with(Timeouts {
        mcp_start: Duration::from_secs(1),
        ..Timeouts::default()
    })
    .await;
    let mut cfg = base_config("https://api.openai.com/v1", json!([]), &[]);
    cfg.mcp_servers = vec![serde_json::from_value(json!({
        "name": "hangs", "id": "@tests/hangs", "command": "/bin/sh",
        "args": ["-c", format!("sleep 300 & echo $! > {}; exec sleep 300", marker.display())],
    }))
    .unwrap()];
    sc.configure(cfg).unwrap();
    let (_, list) = rpc(
        &http(),
        &format!("{}/mcp/hangs", sc.api_url()),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert!(
        list.to_string()
            .contains("did not complete the MCP handshake within 1 s"),
        "{list}"
    );
    let grandchild: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(grandchild) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !running(grandchild),
        "the server's child {grandchild} survived"
    );
    sc.shutdown().await;
}
