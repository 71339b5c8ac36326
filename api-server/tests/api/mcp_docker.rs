//! A stdio MCP server in Docker mode: the run's sidecar container is made from `SIDECAR_MCP_IMAGE`
//! (the agent image, a Debian userland with `/appstrate-sidecar`) with the server package's files under
//! `/mcp/<name>`, launches the server there with the companion integration's credential, and the
//! agent calls its tools at the sidecar's `/mcp/<name>`. The credential reaches no agent container
//! environment, run log or event.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::docker;
use test_support::fake_llm::Turn;
use test_support::fake_mcp::{digest, stdio_bin};

use super::docker::{docker_app, env_of, eventually, nothing_left, wait_terminal};
use appstrate::packages::afps::build_zip;

async fn import(app: &TestApp, bytes: Vec<u8>) {
    let r = app
        .key(Method::POST, "/api/packages/import")
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");
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

/// The `fake-mcp-stdio` binary (built for this Debian 12 machine, so it runs in the bookworm image),
/// stripped to stay under the import's size limit, as the entry point of a binary `mcp-server`.
fn server_package(name: &str, workspace: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("fake-mcp-stdio");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(stdio_bin())
        .output()
        .expect("strip (binutils)");
    assert!(out.status.success(), "{out:?}");
    let binary = std::fs::read(&stripped).unwrap();
    let mut manifest = json!({
        "schema_version": "0.1", "name": name, "version": "1.0.0", "type": "mcp-server",
        "display_name": "Fake MCP", "description": "Echoes and reports a credential digest",
        "server": {"type": "binary", "entry_point": "bin/fake-mcp-stdio",
                   "mcp_config": {"command": "${__dirname}/bin/fake-mcp-stdio", "args": ["--stdio"],
                                  "env": {"API_TOKEN": "{$credential.token}"}}},
        "tools": [{"name": "echo", "description": "Echo"},
                  {"name": "credential_digest", "description": "Credential digest"}],
        "dependencies": {"integrations": {"@tests/fakeapi": "^1"}}
    });
    if workspace {
        manifest["_meta"] =
            json!({"dev.appstrate/workspace": {"mount": "/workspace", "access": "read-write"}});
    }
    build_zip(&[
        ("manifest.json", manifest.to_string().as_bytes()),
        ("bin/fake-mcp-stdio", &binary),
    ])
}

fn agent_package(name: &str, server: &str) -> Vec<u8> {
    let agent = json!({
        "schema_version": "0.1", "name": name, "version": "1.0.0", "type": "agent",
        "display_name": "MCP user", "dependencies": {"mcp_servers": {server: "^1"}}
    });
    build_zip(&[
        ("manifest.json", agent.to_string().as_bytes()),
        ("prompt.md", b"Use the MCP tools."),
    ])
}

async fn run_agent(app: &TestApp, agent: &str) -> String {
    let r = app
        .key(Method::POST, &format!("/api/agents/{agent}/run"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_stdio_mcp_server_runs_in_the_sidecar_container_beside_its_credential() {
    let secret = "tok-mcp-docker-CANARY-5c2d";
    let turns = vec![
        // The delay keeps the containers up while they are inspected.
        Turn::tool_call("fake_mcp__echo", json!({"text": "hi"})).with_delay(2500),
        Turn::tool_call("fake_mcp__credential_digest", json!({})),
        Turn::text("Done."),
    ];
    // One warm slot: the MCP run must not take it (its sidecar has no userland and no server files).
    let Some(d) = docker_app(
        turns,
        "1",
        &[("SIDECAR_MCP_IMAGE", docker::agent_userland_image())],
    )
    .await
    else {
        return;
    };
    let app = &d.app;
    import(
        app,
        build_zip(&[("manifest.json", integration().to_string().as_bytes())]),
    )
    .await;
    import(app, server_package("@tests/fake-mcp", false)).await;
    import(app, agent_package("@tests/mcp-user", "@tests/fake-mcp")).await;
    let r = app
        .key(Method::PUT, "/api/packages/@tests/fakeapi/connections/main")
        .json(&json!({"credentials": {"token": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let id = run_agent(app, "@tests/mcp-user").await;
    let (agent, sidecar) = eventually(60, "the run's containers", || async {
        let a = d
            .docker
            .inspect_container(&format!("appstrate-agent-{id}"), None)
            .await
            .ok()?;
        let s = d
            .docker
            .inspect_container(&format!("appstrate-sidecar-{id}"), None)
            .await
            .ok()?;
        (a.state.as_ref()?.running == Some(true)).then_some((a, s))
    })
    .await;
    // The agent knows the server by name; the credential is nowhere in either container's config.
    let agent_env = env_of(&agent).join("\n");
    assert!(agent_env.contains("AGENT_MCP_SERVERS="), "{agent_env}");
    assert!(
        !agent_env.contains(secret),
        "the credential reached the agent"
    );
    assert!(!env_of(&sidecar).join("\n").contains(secret));
    let sidecar_config = sidecar.config.clone().unwrap();
    assert_eq!(
        sidecar_config.image.as_deref(),
        Some(docker::agent_userland_image())
    );
    assert_eq!(
        sidecar_config.entrypoint,
        Some(vec!["/appstrate-sidecar".to_string()])
    );
    let host = sidecar.host_config.clone().unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    // The server's files are in no agent container.
    assert!(!format!("{:?}", agent.mounts).contains("/mcp"));

    let done = wait_terminal(app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    let bodies: Vec<String> = d
        .fake
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies[0].contains("fake_mcp__credential_digest"),
        "{}",
        bodies[0]
    );
    assert!(bodies[1].contains("echo: hi"), "{}", bodies[1]);
    assert!(bodies[2].contains(&digest(secret)), "{}", bodies[2]);
    for b in &bodies {
        assert!(!b.contains(secret), "the credential reached the model");
    }
    for path in [format!("/api/runs/{id}/logs"), format!("/api/runs/{id}")] {
        let text = app
            .key(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(secret), "the credential is in {path}");
        if path.ends_with("/logs") {
            let logs: Value = serde_json::from_str(&text).unwrap();
            let ready = logs["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["message"] == "mcp servers ready")
                .unwrap_or_else(|| panic!("no `mcp servers ready` in {text}"));
            // The listing time of the server in the sidecar container (docs/benchmarks.md).
            eprintln!("mcp servers ready: {}", ready["data"]);
            // The fake lists its three tools, whatever the manifest says.
            assert_eq!(ready["data"]["servers"][0]["tools"], 3, "{ready}");
            let starting = logs["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["message"] == "runtime starting")
                .map(|l| l["createdAt"].clone());
            eprintln!(
                "run created {} runtime starting {starting:?} servers ready {}",
                done["createdAt"], ready["createdAt"]
            );
        }
    }
    nothing_left(&d, &id, 30).await;
    // The warm slot was left for runs without stdio servers.
    let health = super::docker::health(app).await;
    assert_eq!(health["run_slots"]["ready"], 1, "{health}");
}

#[tokio::test]
async fn a_stdio_mcp_server_shares_the_run_workspace_with_the_agent_container() {
    let secret = "tok-mcp-ws-CANARY-81f0";
    let turns = vec![
        Turn::tool_call(
            "fake_mcp_ws__write_file",
            json!({"path": "report.txt", "content": "from the server"}),
        ),
        // The agent's own `read` tool, in its own container.
        Turn::tool_call("read", json!({"path": "report.txt"})),
        Turn::text("Done."),
    ];
    let Some(d) = docker_app(
        turns,
        "0",
        &[("SIDECAR_MCP_IMAGE", docker::agent_userland_image())],
    )
    .await
    else {
        return;
    };
    let app = &d.app;
    import(
        app,
        build_zip(&[("manifest.json", integration().to_string().as_bytes())]),
    )
    .await;
    import(app, server_package("@tests/fake-mcp-ws", true)).await;
    import(
        app,
        agent_package("@tests/mcp-ws-user", "@tests/fake-mcp-ws"),
    )
    .await;
    let r = app
        .key(Method::PUT, "/api/packages/@tests/fakeapi/connections/main")
        .json(&json!({"credentials": {"token": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = run_agent(app, "@tests/mcp-ws-user").await;
    let done = wait_terminal(app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    let bodies: Vec<String> = d
        .fake
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies[1].contains("wrote 15 bytes to report.txt"),
        "{}",
        bodies[1]
    );
    assert!(bodies[2].contains("from the server"), "{}", bodies[2]);
    nothing_left(&d, &id, 30).await;
    // The run's workspace volume went with it.
    let volume = format!("appstrate-ws-{id}");
    eventually(15, "the workspace volume to go", || async {
        d.docker
            .inspect_volume(&volume)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}
