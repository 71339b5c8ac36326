//! `fake-llm --script <file> --listen <addr>`: the scripted fake LLM as a standalone server (for
//! Docker-mode tests). Prints `listening on http://<addr>` once bound, then serves until killed.

use test_support::fake_llm::{FakeLlm, Script};

fn usage() -> ! {
    eprintln!("usage: fake-llm --script <file.json> [--listen <addr>]   (default 127.0.0.1:0)");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut script_path = None;
    let mut listen = "127.0.0.1:0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--script" => script_path = Some(args.next().unwrap_or_else(|| usage())),
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let Some(path) = script_path else { usage() };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("fake-llm: cannot read {path}: {e}");
        std::process::exit(2)
    });
    let script = Script::from_json(&text).unwrap_or_else(|e| {
        eprintln!("fake-llm: invalid script {path}: {e}");
        std::process::exit(2)
    });
    let fake = FakeLlm::start_on(&listen, script)
        .await
        .unwrap_or_else(|e| {
            eprintln!("fake-llm: cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
    println!("listening on {}", fake.url());
    // As PID 1 in a container, SIGTERM must be handled explicitly.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
