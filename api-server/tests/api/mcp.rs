//! MCP servers end to end (issue 16): an `mcp-server` package imported next to an agent that lists it
//! in `dependencies.mcp_servers`; the process adapter unpacks it, the in-process sidecar launches it
//! with the companion integration's credential, and the real runner calls its tools.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::fake_mcp::{digest, stdio_bin};
use test_support::TestApp;

use crate::runs::{llm_app, start, wait_terminal};
use appstrate::packages::afps::build_zip;

async fn import(app: &TestApp, bytes: Vec<u8>) -> (u16, Value) {
    let r = app
        .key(Method::POST, "/api/packages/import")
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn integration() -> Value {
    json!({
        "schema_version": "0.1", "name": "@tests/fakeapi", "version": "1.0.0", "type": "integration",
        "display_name": "Fake API",
        "auths": {"main": {
            "type": "api_key",
            "authorized_uris": ["https://api.fake.example/**"],
            "credentials": {"schema": {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}},
            "delivery": {"http": {"in": "header", "name": "Authorization", "prefix": "Token", "value": "{$credential.token}"}}
        }}
    })
}

/// The stdio fake as an `mcp-server` package: a script entry point that execs the test binary.
fn server_package() -> Vec<u8> {
    let manifest = json!({
        "schema_version": "0.1", "name": "@tests/fake-mcp", "version": "1.0.0", "type": "mcp-server",
        "display_name": "Fake MCP", "description": "Echoes and writes files",
        "server": {"type": "binary", "entry_point": "server/run.sh",
                   "mcp_config": {"command": "${__dirname}/server/run.sh", "args": ["--stdio"],
                                  "env": {"API_TOKEN": "{$credential.token}"}}},
        "tools": [{"name": "echo", "description": "Echo"},
                  {"name": "write_file", "description": "Write a file"},
                  {"name": "credential_digest", "description": "Credential digest"}],
        "dependencies": {"integrations": {"@tests/fakeapi": "^1"}},
        "_meta": {"dev.appstrate/workspace": {"mount": "/workspace", "access": "read-write"}}
    });
    let script = format!("#!/bin/sh\nexec '{}' \"$@\"\n", stdio_bin().display());
    build_zip(&[
        ("manifest.json", manifest.to_string().as_bytes()),
        ("server/run.sh", script.as_bytes()),
    ])
}

fn agent_package() -> Vec<u8> {
    let agent = json!({
        "schema_version": "0.1", "name": "@tests/mcp-user", "version": "1.0.0", "type": "agent",
        "display_name": "MCP user", "dependencies": {"mcp_servers": {"@tests/fake-mcp": "^1"}}
    });
    build_zip(&[
        ("manifest.json", agent.to_string().as_bytes()),
        ("prompt.md", b"Use the MCP tools."),
    ])
}

#[tokio::test]
async fn an_mcp_server_package_runs_beside_its_credential() {
    let secret = "tok-mcp-CANARY-e41a";
    let fake = FakeLlm::start(vec![
        // The delay keeps the runner alive while its environment is read.
        Turn::tool_call("fake_mcp__echo", json!({"text": "hi"})).with_delay(1500),
        Turn::tool_call(
            "fake_mcp__write_file",
            json!({"path": "report.txt", "content": "from the server"}),
        ),
        Turn::tool_call("fake_mcp__credential_digest", json!({})),
        Turn::text("Done."),
    ])
    .await;
    let app = llm_app(&fake, &[]).await;
    for bytes in [
        build_zip(&[("manifest.json", integration().to_string().as_bytes())]),
        server_package(),
        agent_package(),
    ] {
        let (status, body) = import(&app, bytes).await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }
    // The server's credential is required before the run is created.
    let r = app
        .key(Method::POST, "/api/agents/@tests/mcp-user/run")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "missing_integration_connection");
    assert!(
        body.to_string().contains("MCP server @tests/fake-mcp"),
        "{body}"
    );
    let r = app
        .key(Method::PUT, "/api/packages/@tests/fakeapi/connections/main")
        .json(&json!({"credentials": {"token": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let run = start(&app, "/api/agents/@tests/mcp-user/run", json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    // The runner knows the server by name only; the credential is in the sidecar's child alone.
    let pid_file = app.data_dir.join(format!("runs/{id}/runner.pid"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "runner never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let environ =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
            .into_owned();
    assert!(environ.contains("AGENT_MCP_SERVERS="), "{environ}");
    assert!(!environ.contains(secret));
    let done = wait_terminal(&app, &id).await;
    assert_eq!(done["status"], "success", "{done}");

    let bodies: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 4);
    assert!(bodies[0].contains("fake_mcp__write_file"), "{}", bodies[0]);
    assert!(bodies[1].contains("echo: hi"), "{}", bodies[1]);
    assert!(
        bodies[2].contains("wrote 15 bytes to report.txt"),
        "{}",
        bodies[2]
    );
    assert!(bodies[3].contains(&digest(secret)), "{}", bodies[3]);
    for b in &bodies {
        assert!(!b.contains(secret), "the credential reached the model");
    }
    let logs: Value = app
        .key(Method::GET, &format!("/api/runs/{id}/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs = logs.to_string();
    assert!(logs.contains("mcp servers ready"), "{logs}");
    assert!(logs.contains("mcp fake_mcp write_file"), "{logs}");
    assert!(!logs.contains(secret));
    let run_json = app
        .key(Method::GET, &format!("/api/runs/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!run_json.contains(secret));
    // The server's unpacked files go with the run, at teardown (just after the finalize).
    let run_dir = app.data_dir.join(format!("runs/{id}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while run_dir.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!run_dir.exists(), "{} was left behind", run_dir.display());
}

#[tokio::test]
async fn a_bad_mcp_server_package_is_refused_naming_each_field() {
    let fake = FakeLlm::start(vec![]).await;
    let app = llm_app(&fake, &[]).await;
    let manifest = json!({
        "schema_version": "0.1", "name": "@tests/bad-mcp", "version": "1.0.0", "type": "mcp-server",
        "server": {"type": "python", "mcp_config": {"args": "x"}},
        "tools": [{"name": "t"}],
        "_meta": {"dev.appstrate/workspace": {"mount": "rel", "access": "everything"}}
    });
    let (status, body) = import(
        &app,
        build_zip(&[("manifest.json", manifest.to_string().as_bytes())]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_package");
    let text = body.to_string();
    for field in [
        "manifest.server.type",
        "manifest.tools[0].description",
        "manifest._meta.dev.appstrate/workspace.mount",
        "manifest._meta.dev.appstrate/workspace.access",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    // A stdio server whose entry point is not in the archive.
    let manifest = json!({
        "schema_version": "0.1", "name": "@tests/bad-mcp", "version": "1.0.0", "type": "mcp-server",
        "server": {"type": "node", "entry_point": "dist/index.js",
                   "mcp_config": {"command": "node", "args": ["${__dirname}/dist/index.js"]}}
    });
    let (status, body) = import(
        &app,
        build_zip(&[("manifest.json", manifest.to_string().as_bytes())]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("dist/index.js is not a file of the archive"),
        "{body}"
    );
}
