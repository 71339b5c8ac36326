//! The run workspace and `bash` through the real server: refused in process mode unless
//! `ALLOW_UNISOLATED_BASH` enables it; in Docker mode with the agent image (bash, git, Bun), commands
//! run, time out, are truncated, cannot read the runner's secrets, and reach nothing but the sidecar.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::docker;
use test_support::fake_llm::{FakeLlm, Turn};

use super::docker::{docker_app, get_run, health, inline as docker_inline, start_run};
use super::runs::{inline, llm_app, start, wait_terminal};

/// The tool results the model received, in order (from its last request).
fn tool_results(llm: &FakeLlm) -> Vec<String> {
    let reqs = llm.requests();
    let last = reqs.last().expect("a model request").json();
    last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn logs(app: &TestApp, id: &str) -> Vec<Value> {
    let v: Value = app
        .key(Method::GET, &format!("/api/runs/{id}/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

fn bash(command: &str) -> Turn {
    Turn::tool_call("bash", json!({"command": command}))
}

async fn process_run(extra: &[(&str, &str)]) -> (TestApp, FakeLlm, Value) {
    let llm = FakeLlm::start(vec![
        bash("echo made > made.txt && cat made.txt"),
        Turn::tool_call("read", json!({"path": "made.txt"})),
        Turn::text("done"),
    ])
    .await;
    let app = llm_app(&llm, extra).await;
    let run = start(&app, "/api/runs/inline", inline(json!({}), "Use a shell")).await;
    let run = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    (app, llm, run)
}

#[tokio::test]
async fn bash_is_refused_in_process_mode_unless_enabled() {
    // Default: no shell tool, and /health says so.
    let (app, llm, run) = process_run(&[]).await;
    assert_eq!(super::docker::health(&app).await["bash"], "off");
    assert_eq!(run["status"], "success", "{run}");
    let offered = test_support::fake_llm::offered_tools(&llm.requests()[0]);
    assert!(!offered.contains(&"bash".to_string()), "{offered:?}");
    assert!(offered.contains(&"read".to_string()), "{offered:?}");
    let r = tool_results(&llm);
    assert_eq!(r[0], "Tool `bash` is not available now");
    assert!(r[1].contains("made.txt"), "nothing was made: {}", r[1]);

    // Enabled explicitly: commands run on the host, in the run's workspace.
    let (app, llm, run) = process_run(&[("ALLOW_UNISOLATED_BASH", "true")]).await;
    assert_eq!(super::docker::health(&app).await["bash"], "unisolated");
    assert_eq!(run["status"], "success", "{run}");
    let r = tool_results(&llm);
    assert_eq!(r[0], "exit code: 0\n--- stdout ---\nmade\n");
    assert_eq!(r[1], "     1\tmade\n");
    // The call and its outcome are in the run's log.
    let log = logs(&app, run["id"].as_str().unwrap()).await;
    let results: Vec<&Value> = log
        .iter()
        .filter(|l| l["message"] == "tool_result")
        .collect();
    assert_eq!(results[0]["data"]["tool"], "bash", "{log:?}");
    assert_eq!(results[0]["data"]["isError"], false);
    assert!(results[0]["data"]["result"]
        .as_str()
        .unwrap()
        .contains("made"));
}

#[tokio::test]
async fn bash_in_the_agent_image_runs_times_out_truncates_and_reaches_only_its_sidecar() {
    // The turns are pushed once the addresses to probe are known.
    let Some(d) = docker_app(
        vec![],
        "0",
        &[("AGENT_IMAGE", docker::agent_userland_image())],
    )
    .await
    else {
        return;
    };
    assert_eq!(health(&d.app).await["bash"], "container");
    let llm = format!("{}:{}", d.gateway, d.fake.addr().port());
    let api = format!("{}:{}", d.gateway, d.app.port);
    let probe = format!(
        "for t in sidecar:8080 {llm} {api} 1.1.1.1:443; do \
           if timeout 3 bash -c \"exec 3<>/dev/tcp/${{t%:*}}/${{t#*:}}\" 2>/dev/null; \
           then echo \"$t open\"; else echo \"$t closed\"; fi; done"
    );
    for t in [
        bash(
            "echo hello > hi.txt && cat hi.txt && id -u && git --version && node -e 'console.log(6*7)' \
             && git init -q repo && cd repo && git -c user.email=a@example.com -c user.name=a \
                commit -q --allow-empty -m first && echo \"commits: $(git rev-list --count HEAD)\"",
        ),
        Turn::tool_call("bash", json!({"command": "sleep 30", "timeout_seconds": 2})),
        bash("head -c 200000 /dev/zero | tr '\\0' y; exit 3"),
        bash(&probe),
        bash("cat /proc/1/environ"),
        bash("ln -s /etc etc-link && echo planted"),
        Turn::tool_call("read", json!({"path": "etc-link/passwd"})),
        Turn::tool_call("read", json!({"path": "hi.txt"})),
        Turn::text("done"),
    ] {
        d.fake.push(t);
    }
    let id = start_run(&d.app, docker_inline(json!({}))).await;
    let run = super::docker::wait_terminal(&d.app, &id).await;
    assert_eq!(run["status"], "success", "{run}");

    let r = tool_results(&d.fake);
    assert_eq!(r.len(), 8, "{r:?}");
    assert!(r[0].starts_with("exit code: 0\n"), "{}", r[0]);
    for want in ["hello\n", "65534\n", "git version", "42\n", "commits: 1\n"] {
        assert!(r[0].contains(want), "{want} in {}", r[0]);
    }
    assert!(r[1].starts_with("timed out after 2s"), "{}", r[1]);
    assert!(r[2].starts_with("exit code: 3\n"), "{}", &r[2][..80]);
    assert!(r[2].contains("bytes omitted: output truncated"), "bounded");
    assert!(r[2].len() < 40_000, "{}", r[2].len());
    // From inside the container, only the sidecar answers.
    assert!(r[3].contains("sidecar:8080 open"), "{}", r[3]);
    for closed in [&llm, &api, &"1.1.1.1:443".to_string()] {
        assert!(
            r[3].contains(&format!("{closed} closed")),
            "{closed}: {}",
            r[3]
        );
    }
    // The runner (pid 1) is not dumpable: its environment, with the sink secret, is not readable.
    assert!(r[4].contains("Permission denied"), "{}", r[4]);
    assert!(!r[4].contains("APPSTRATE_SINK_SECRET"), "{}", r[4]);
    // A link planted by a command does not lead the file tools out of the workspace.
    assert_eq!(r[5], "exit code: 0\n--- stdout ---\nplanted\n");
    assert!(r[6].contains("resolves outside the workspace"), "{}", r[6]);
    assert_eq!(r[7], "     1\thello\n");

    let run = get_run(&d.app, &id, 0).await;
    assert!(!run.to_string().contains(super::docker::CANARY));
    let log = logs(&d.app, &id).await;
    let flags: Vec<bool> = log
        .iter()
        .filter(|l| l["message"] == "tool_result")
        .map(|l| l["data"]["isError"].as_bool().unwrap())
        .collect();
    assert_eq!(
        flags,
        vec![false, true, true, false, true, false, true, false]
    );
    assert!(!serde_json::to_string(&log)
        .unwrap()
        .contains(super::docker::CANARY));
}

/// An agent package declares files for its workspace: a bad glob is refused at import naming the
/// field; the declared files (and only those) are in the run's workspace, where the file tools use them.
#[tokio::test]
async fn a_package_declares_the_files_its_runs_find_in_the_workspace() {
    let llm = FakeLlm::start(vec![
        Turn::tool_call("find", json!({"pattern": "**"})),
        Turn::tool_call("read", json!({"path": "data/cities.csv", "offset": 2})),
        Turn::tool_call("grep", json!({"pattern": "Lyon", "glob": "*.csv"})),
        Turn::text("done"),
    ])
    .await;
    let app = llm_app(&llm, &[]).await;
    let create = |files: Value| {
        let manifest = json!({"schema_version": "0.1", "name": "@tests/with-files", "version": "1.0.0",
            "type": "agent", "display_name": "With files",
            "_meta": {"dev.appstrate/workspace": {"files": files}}});
        app.key(Method::POST, "/api/packages")
            .json(&json!({"manifest": manifest, "files": {
                "prompt.md": "Look at the data.\n",
                "data/cities.csv": "name\nParis\nLyon\n",
                "data/raw/big.json": "{}",
                "notes/internal.md": "not for the run",
            }}))
    };
    let r = create(json!(["../secrets/*"])).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let err = &body["errors"][0];
    assert_eq!(
        err["field"], "manifest._meta.dev.appstrate/workspace.files.0",
        "{body}"
    );
    assert_eq!(err["code"], "invalid_value", "{body}");
    let r = create(json!(["data/*.csv"])).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let run = start(&app, "/api/agents/@tests/with-files/run", json!({})).await;
    let run = wait_terminal(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let r = tool_results(&llm);
    assert_eq!(r[0], "data/\ndata/cities.csv");
    assert_eq!(r[1], "     2\tParis\n     3\tLyon\n[Lines 2-3 of 3.]\n");
    assert_eq!(r[2], "data/cities.csv:3: Lyon");
    let system = test_support::fake_llm::system_prompt(&llm.requests()[0]).unwrap();
    assert!(
        system.contains("Files of your package in it:\n- data/cities.csv\n"),
        "{system}"
    );
}
