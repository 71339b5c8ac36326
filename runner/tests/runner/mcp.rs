//! MCP servers (issue 16): the real runner, a real in-process sidecar that launches the
//! `fake-mcp-stdio` server (or forwards to the Streamable HTTP fake), and the scripted fake LLM.

use super::*;
use sidecar::{Sidecar, SidecarOptions, Timeouts};
use test_support::fake_mcp::{digest, stdio_bin, FakeMcpHttp};

const RUN_TOKEN: &str = "sct_mcp-runner-token-0123456789abcdef";
const CANARY: &str = "mcp-cred-CANARY-5f1e2d";

struct McpRun {
    s: Setup,
    sc: sidecar::RunningSidecar,
    workspace: tempfile::TempDir,
}

/// A run whose model calls go through a sidecar configured with `servers` (and `integrations`).
async fn mcp_run(
    turns: Vec<Turn>,
    servers: Value,
    integrations: Value,
    timeouts: Timeouts,
) -> Result<McpRun, sidecar::ConfigureError> {
    let mut s = setup(briefing_bundle(), turns).await;
    let workspace = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(SidecarOptions::loopback().with_timeouts(timeouts))
        .await
        .unwrap();
    let cfg: sidecar::SidecarConfig = serde_json::from_value(json!({
        "runId": "run_mcp",
        "runToken": RUN_TOKEN,
        "platformUrl": "http://127.0.0.1:9",
        "llm": {"provider": "openai", "baseUrl": s.llm.url(), "apiKey": "sk-real-key"},
        "allowInternalHosts": ["127.0.0.1"],
        "integrations": integrations,
        "mcpServers": servers,
        "workspaceDir": workspace.path().to_string_lossy(),
    }))
    .unwrap();
    sc.configure(cfg)?;
    // What the platform tells the runner: names and ids only.
    let listed: Vec<Value> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|v| json!({"name": v["name"], "id": v["id"]}))
        .collect();
    s.set("AGENT_MCP_SERVERS", &Value::Array(listed).to_string());
    let proxy = sc
        .proxy_url()
        .replace("http://", &format!("http://run:{RUN_TOKEN}@"));
    for (k, v) in [
        ("SIDECAR_URL", sc.api_url()),
        ("MODEL_BASE_URL", format!("{}/llm/openai", sc.api_url())),
        ("MODEL_API_KEY", RUN_TOKEN.to_string()),
        ("HTTP_PROXY", proxy.clone()),
        ("HTTPS_PROXY", proxy),
        (
            "WORKSPACE_DIR",
            workspace.path().to_string_lossy().into_owned(),
        ),
    ] {
        s.set(k, &v);
    }
    Ok(McpRun { s, sc, workspace })
}

fn stdio_server(name: &str, args: &[&str]) -> Value {
    json!({
        "name": name, "id": "@tests/fake-mcp",
        "command": stdio_bin().to_string_lossy(),
        "args": args,
        "env": {"API_TOKEN": CANARY},
        "shareWorkspace": true, "workspaceAccess": "read-write",
    })
}

/// Every file under `dir`, recursively, as text.
fn files_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_calls_a_stdio_mcp_server_and_the_credential_stays_in_the_sidecar() {
    let turns = vec![
        Turn::tool_call("fake__echo", json!({"text": "hello mcp"})),
        Turn::tool_call(
            "fake__write_file",
            json!({"path": "notes/from-mcp.txt", "content": "written by the MCP server"}),
        ),
        Turn::tool_call("fake__credential_digest", json!({})),
        Turn::text("Briefing: done with MCP."),
    ];
    let r = mcp_run(
        turns,
        json!([stdio_server("fake", &["--stdio"])]),
        json!([]),
        Timeouts::default(),
    )
    .await
    .unwrap();
    let (code, stderr) = r.s.run().await;
    assert_eq!(code, 0, "{stderr}");
    let fin = r.s.finalize();
    assert_eq!(fin["status"], "success", "{fin}");
    r.s.assert_clean_event_stream();

    // Listed at start, offered with their schemas.
    let ready =
        r.s.sink
            .events_of("appstrate.progress")
            .into_iter()
            .find(|e| e["data"]["message"] == "mcp servers ready")
            .expect("mcp servers ready event");
    assert_eq!(ready["data"]["data"]["servers"][0]["tools"], 3, "{ready}");
    let reqs = r.s.llm.requests();
    assert_eq!(reqs.len(), 4);
    let offered = offered_tools(&reqs[0]);
    for t in ["fake__echo", "fake__write_file", "fake__credential_digest"] {
        assert!(offered.contains(&t.to_string()), "{offered:?}");
    }
    let tools = reqs[0].json()["tools"].clone();
    let echo = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "fake__echo")
        .unwrap();
    assert_eq!(
        echo["function"]["parameters"]["properties"]["text"]["type"], "string",
        "{echo}"
    );
    // The model saw each result.
    assert!(reqs[1].body_text().contains("echo: hello mcp"));
    assert!(reqs[2]
        .body_text()
        .contains("wrote 25 bytes to notes/from-mcp.txt"));
    let third = reqs[3].body_text();
    assert!(third.contains(&digest(CANARY)), "{third}");
    // The agent sees the server's file in the shared workspace.
    assert_eq!(
        std::fs::read_to_string(r.workspace.path().join("notes/from-mcp.txt")).unwrap(),
        "written by the MCP server"
    );
    // Each call is a run log event, with the result truncated.
    let calls: Vec<Value> =
        r.s.sink
            .events_of("appstrate.progress")
            .into_iter()
            .filter(|e| {
                e["data"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("mcp fake ")
            })
            .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0]["data"]["data"]["result"], "echo: hello mcp");
    // The credential is nowhere but in the server's environment.
    let everything = format!(
        "{}{}{:?}{}",
        serde_json::to_string(&r.s.sink.events()).unwrap(),
        stderr,
        r.s.env,
        files_text(r.workspace.path())
    );
    assert!(!everything.contains(CANARY));
    for req in &reqs {
        assert!(!req.body_text().contains(CANARY));
    }
    r.sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_that_fails_or_hangs_fails_the_run_naming_it() {
    for (args, needle) in [
        (vec!["--fail-start"], "failing on purpose"),
        (
            vec!["--hang"],
            "did not complete the MCP handshake within 1 s",
        ),
    ] {
        let r = mcp_run(
            vec![Turn::text("never asked")],
            json!([stdio_server("broken", &args)]),
            json!([]),
            Timeouts {
                mcp_start: Duration::from_secs(1),
                ..Timeouts::default()
            },
        )
        .await
        .unwrap();
        let started = Instant::now();
        let (code, stderr) = r.s.run().await;
        assert_eq!(code, 0, "{stderr}");
        let fin = r.s.finalize();
        assert_eq!(fin["status"], "failed", "{fin}");
        assert_eq!(fin["error"]["code"], "mcp_unavailable", "{fin}");
        let message = fin["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("MCP server `broken` (@tests/fake-mcp)"),
            "{message}"
        );
        assert!(message.contains(needle), "{message}");
        assert!(!message.contains(CANARY));
        assert!(r.s.llm.requests().is_empty(), "the model is not called");
        assert!(started.elapsed() < Duration::from_secs(20));
        r.sc.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_mcp_server_gets_the_integration_header_through_the_sidecar() {
    let remote_secret = "Bearer remote-CANARY-77";
    let fake = FakeMcpHttp::start("authorization", remote_secret).await;
    let integration = json!([{
        "id": "@tests/remote", "authKey": "primary",
        "authorizedUris": [format!("http://127.0.0.1:{}/**", fake.addr().port())],
        "header": {"name": "Authorization", "value": remote_secret},
    }]);
    let r = mcp_run(
        vec![
            Turn::tool_call("remote__echo", json!({"text": "over http"})),
            Turn::text("Briefing: remote done."),
        ],
        json!([{"name": "remote", "id": "@tests/remote-mcp", "url": fake.url(),
                "integration": "@tests/remote#primary"}]),
        integration.clone(),
        Timeouts::default(),
    )
    .await
    .unwrap();
    let (code, stderr) = r.s.run().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r.s.finalize()["status"], "success", "{}", r.s.finalize());
    assert!(r.s.llm.requests()[1]
        .body_text()
        .contains("echo: over http"));
    // Every request reached the server with the injected header, and the run token never did.
    let seen = fake.header_values();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|v| v == remote_secret), "{seen:?}");
    assert_eq!(fake.refused(), 0);
    let events = serde_json::to_string(&r.s.sink.events()).unwrap();
    assert!(!events.contains("remote-CANARY"));
    r.sc.shutdown().await;

    // An address outside the integration's allowlist, or a blocked one, is refused at configure.
    for (url, needle) in [
        (
            "http://127.0.0.1:1/mcp",
            "is not in authorizedUris of @tests/remote",
        ),
        ("https://169.254.169.254/mcp", "is blocked"),
    ] {
        let err = mcp_run(
            vec![],
            json!([{"name": "remote", "id": "@tests/remote-mcp", "url": url,
                    "integration": "@tests/remote#primary"}]),
            integration.clone(),
            Timeouts::default(),
        )
        .await
        .err()
        .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("mcpServers[0].url") && msg.contains(needle),
            "{url}: {msg}"
        );
    }
}
