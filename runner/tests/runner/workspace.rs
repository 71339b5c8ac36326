//! The workspace tools, driven by the scripted fake LLM: the real runner edits a real directory.

use super::{setup, Setup, SECRET};
use serde_json::{json, Value};
use test_support::fake_llm::{offered_tools, Turn};
use test_support::fake_sink::bundle_zip;

fn bundle() -> Vec<u8> {
    let manifest = json!({
        "schema_version": "0.1",
        "name": "@tests/files",
        "version": "1.0.0",
        "type": "agent",
        "_meta": {"dev.appstrate/workspace": {"files": ["data/**"]}},
    });
    bundle_zip(&[
        ("manifest.json", manifest.to_string().as_bytes()),
        ("prompt.md", b"Tidy the notes."),
        ("data/seed.csv", b"id,name\n1,alpha\n"),
        ("private.md", b"not declared"),
    ])
}

/// The tool results the model received, in order (from its last request).
fn tool_results(s: &Setup) -> Vec<String> {
    let reqs = s.llm.requests();
    let last = reqs.last().expect("a model request").json();
    last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// `(tool, isError)` of every `tool_result` event.
fn result_events(s: &Setup) -> Vec<(String, bool)> {
    s.sink
        .events_of("appstrate.progress")
        .into_iter()
        .filter(|e| e["data"]["message"] == "tool_result")
        .map(|e| {
            (
                e["data"]["data"]["tool"].as_str().unwrap().to_string(),
                e["data"]["data"]["isError"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn calls(turns: &[(&str, Value)]) -> Vec<Turn> {
    let mut t: Vec<Turn> = turns
        .iter()
        .map(|(name, args)| Turn::tool_call(name, args.clone()))
        .collect();
    t.push(Turn::text("Done."));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_edit_read_find_and_grep_work_on_the_workspace() {
    let s = setup(
        bundle(),
        calls(&[
            (
                "write",
                json!({"path": "notes/todo.md", "content": "alpha\nbeta\nbeta\ngamma\n"}),
            ),
            (
                "edit",
                json!({"path": "notes/todo.md", "old_text": "delta", "new_text": "x"}),
            ),
            (
                "edit",
                json!({"path": "notes/todo.md", "old_text": "beta", "new_text": "x"}),
            ),
            (
                "edit",
                json!({"path": "notes/todo.md", "old_text": "gamma", "new_text": "GAMMA"}),
            ),
            (
                "read",
                json!({"path": "notes/todo.md", "offset": 2, "limit": 2}),
            ),
            ("find", json!({"pattern": "*.csv"})),
            ("grep", json!({"pattern": "^[A-Z]+$"})),
            ("ls", json!({})),
            ("bash", json!({"command": "id"})),
            (
                "write",
                json!({"path": "big.txt", "content": "z".repeat(5000)}),
            ),
        ]),
    )
    .await;
    let (code, stderr) = s.run().await;
    assert_eq!(code, 0, "{stderr}");
    let fin = s.finalize();
    assert_eq!(fin["status"], "success", "{fin}");

    // The file on disk is what the tools said.
    let ws = s.workspace.path();
    assert_eq!(
        std::fs::read_to_string(ws.join("notes/todo.md")).unwrap(),
        "alpha\nbeta\nbeta\nGAMMA\n"
    );
    // The declared bundle file is in the workspace; the undeclared one is not.
    assert_eq!(
        std::fs::read_to_string(ws.join("data/seed.csv")).unwrap(),
        "id,name\n1,alpha\n"
    );
    assert!(!ws.join("private.md").exists());

    let r = tool_results(&s);
    assert_eq!(r[0], "Wrote 22 bytes to notes/todo.md (new file).");
    assert!(
        r[1].contains("`old_text` was not found in notes/todo.md"),
        "{}",
        r[1]
    );
    assert!(
        r[2].contains("`old_text` matches 2 times in notes/todo.md (lines 2, 3)"),
        "{}",
        r[2]
    );
    assert_eq!(r[3], "Replaced 1 occurrence in notes/todo.md (line 4).");
    assert_eq!(
        r[4],
        "     2\tbeta\n     3\tbeta\n[Showing lines 2-3 of 4. Call read with offset=4 to continue.]\n"
    );
    assert_eq!(r[5], "data/seed.csv");
    assert_eq!(r[6], "notes/todo.md:4: GAMMA");
    assert_eq!(r[7], "data/\nnotes/");
    // Process mode without AGENT_BASH: no shell tool at all.
    assert_eq!(r[8], "Tool `bash` is not available now");
    let offered = offered_tools(&s.llm.requests()[0]);
    for t in ["read", "write", "edit", "ls", "find", "grep"] {
        assert!(offered.contains(&t.to_string()), "{offered:?}");
    }
    assert!(!offered.contains(&"bash".to_string()), "{offered:?}");

    // Each call and its outcome is in the run log.
    let flags: Vec<bool> = result_events(&s).into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        flags,
        vec![false, true, true, false, false, false, false, false, true, false]
    );
    // A large argument is cut in the log (the file itself is whole).
    assert_eq!(std::fs::read(ws.join("big.txt")).unwrap().len(), 5000);
    let call = s
        .sink
        .events_of("appstrate.progress")
        .into_iter()
        .rev()
        .find(|e| e["data"]["message"] == "tool_call" && e["data"]["data"]["tool"] == "write")
        .unwrap();
    let logged = call["data"]["data"]["args"]["content"].as_str().unwrap();
    assert!(
        logged.starts_with(&"z".repeat(1000)) && logged.ends_with("… [4000 more characters]"),
        "{logged}"
    );
    let logged = s
        .sink
        .events_of("appstrate.progress")
        .into_iter()
        .find(|e| e["data"]["message"] == "tool_result" && e["data"]["data"]["tool"] == "edit")
        .unwrap();
    assert!(logged["data"]["data"]["result"]
        .as_str()
        .unwrap()
        .contains("was not found"));
    // The system prompt names the workspace and the package's files in it.
    let system = test_support::fake_llm::system_prompt(&s.llm.requests()[0]).unwrap();
    assert!(
        system.contains("## Workspace") && system.contains("- data/seed.csv"),
        "{system}"
    );
    s.assert_clean_event_stream();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_are_refused_even_through_a_symlink_planted_by_bash() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside the workspace").unwrap();
    let target = outside.path().display().to_string();
    let mut s = setup(
        bundle(),
        calls(&[
            ("read", json!({"path": "../secret.txt"})),
            ("read", json!({"path": format!("{target}/secret.txt")})),
            (
                "bash",
                json!({"command": format!("ln -s {target} out && ln -s {target}/secret.txt s && echo planted")}),
            ),
            ("read", json!({"path": "out/secret.txt"})),
            ("read", json!({"path": "s"})),
            ("write", json!({"path": "out/new.txt", "content": "escaped"})),
            ("edit", json!({"path": "s", "old_text": "outside", "new_text": "inside"})),
            ("grep", json!({"pattern": "outside", "path": "out"})),
            ("ls", json!({"path": "out"})),
            // bash itself is confined by isolation, not by path checks: in process mode (enabled
            // explicitly here) it is the host's shell.
            ("bash", json!({"command": "sleep 5", "timeout_seconds": 1})),
            ("bash", json!({"command": "head -c 100000 /dev/zero | tr '\\0' x; echo; exit 7"})),
            ("bash", json!({"command": "tr '\\0' '\\n' < /proc/$PPID/environ; env"})),
        ]),
    )
    .await;
    s.set("AGENT_BASH", "true");
    let (code, stderr) = s.run().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.finalize()["status"], "success");

    let r = tool_results(&s);
    assert!(r[0].contains("`..` is not allowed"), "{}", r[0]);
    assert!(r[1].contains("is outside the workspace"), "{}", r[1]);
    assert_eq!(r[2], "exit code: 0\n--- stdout ---\nplanted\n");
    for (i, what) in [
        (3, "read"),
        (4, "read"),
        (5, "write"),
        (6, "edit"),
        (7, "grep"),
        (8, "ls"),
    ] {
        assert!(
            r[i].contains("resolves outside the workspace"),
            "{what} through a planted link: {}",
            r[i]
        );
    }
    assert!(!outside.path().join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret.txt")).unwrap(),
        "outside the workspace"
    );
    assert!(r[9].starts_with("timed out after 1s"), "{}", r[9]);
    assert!(r[10].starts_with("exit code: 7\n"), "{}", &r[10][..100]);
    assert!(
        r[10].contains("bytes omitted: output truncated"),
        "bounded output"
    );
    assert!(r[10].len() < 40_000, "{}", r[10].len());
    // The runner's secret never reaches the model or the log, even when a command prints it.
    assert!(!r[11].contains(SECRET), "{}", r[11]);
    assert!(!r[11].contains("APPSTRATE_SINK_SECRET=sink"), "{}", r[11]);
    let everything = serde_json::to_string(&s.sink.events()).unwrap()
        + &s.llm
            .requests()
            .iter()
            .map(|q| q.body_text())
            .collect::<String>();
    assert!(!everything.contains(SECRET));
    let offered = offered_tools(&s.llm.requests()[0]);
    assert!(offered.contains(&"bash".to_string()), "{offered:?}");
    let flags: Vec<(String, bool)> = result_events(&s);
    assert_eq!(flags[2], ("bash".to_string(), false));
    assert_eq!(flags[9], ("bash".to_string(), true));
    s.assert_clean_event_stream();
}
