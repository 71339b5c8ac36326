//! `appstrate-runner`: the agent process. It handles exactly one run and exits (§15).
//!
//! Exit codes: 0 finalize accepted (or the sink is closed), 1 finalize undeliverable, 2 invalid
//! environment, 143 SIGTERM (the loop is aborted and nothing is finalized, so the platform's verdict wins).

mod agent;
mod bundle;
mod config;
mod llm;
mod mustache;
mod platform;
mod probe;
mod sink;
mod sse;
mod tools;
mod trace;

use std::time::Duration;

fn fatal(msg: &str) -> ! {
    eprintln!("[runner fatal] {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = probe::main_if_probe(&args) {
        std::process::exit(code);
    }
    let cfg = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => fatal(&format!("invalid environment: {e}")),
    };
    // One thread is plenty for one run and keeps the footprint small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&format!("cannot start the async runtime: {e}")),
    };
    let code = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => fatal(&format!("cannot install the SIGTERM handler: {e}")),
        };
        // Honours HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment (reqwest's default).
        let http = match reqwest::Client::builder()
            .user_agent(concat!("appstrate-runner/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .hickory_dns(true)
            // The sidecar follows (and re-checks) redirects for api_call; nothing else redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => fatal(&format!("cannot build the HTTP client: {e}")),
        };
        tokio::select! {
            code = agent::run(cfg, http) => code,
            _ = term.recv() => {
                eprintln!("[runner] SIGTERM received: aborting the run without finalizing");
                143
            }
        }
    });
    // Exit without waiting for idle connections or background tasks.
    std::process::exit(code)
}
