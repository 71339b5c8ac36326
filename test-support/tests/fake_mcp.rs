//! The stdio fake answers the MCP handshake and its tools over raw JSON-RPC lines. (Having an
//! integration test here also makes `cargo test --workspace` build the `fake-mcp-stdio` binary that
//! the runner and API tests launch.)

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn send(stdin: &mut impl Write, v: Value) {
    writeln!(stdin, "{v}").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn the_stdio_fake_speaks_mcp_and_never_returns_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-mcp-stdio"))
        .env_clear()
        .env("API_TOKEN", "tok-CANARY-123")
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || serde_json::from_str::<Value>(&lines.next().unwrap().unwrap()).unwrap();
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}}),
    );
    let init = next();
    assert_eq!(init["result"]["serverInfo"]["name"], "fake-mcp", "{init}");
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    let list = next();
    let mut names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["credential_digest", "echo", "write_file"]);
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "write_file", "arguments": {"path": "out/a.txt", "content": "hi"}}}),
    );
    let wrote = next();
    assert_eq!(wrote["result"]["isError"], false, "{wrote}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/a.txt")).unwrap(),
        "hi"
    );
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "credential_digest", "arguments": {}}}),
    );
    let digest = next().to_string();
    assert!(!digest.contains("CANARY"), "{digest}");
    assert!(
        digest.contains(&test_support::fake_mcp::digest("tok-CANARY-123")),
        "{digest}"
    );
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
}
