//! `appstrate-runner`: the agent process. It handles exactly one run and exits (§15).
//!
//! Exit codes: 0 finalize accepted (or the sink is closed), 1 finalize undeliverable, 2 invalid
//! environment, 143 SIGTERM (the loop is aborted and nothing is finalized, so the platform's verdict wins).

mod agent;
mod bundle;
mod config;
mod handover;
mod llm;
mod mcp;
mod mustache;
mod platform;
mod probe;
mod redact;
mod sink;
mod sse;
mod tools;
mod trace;
mod workspace;

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
        let cfg = tokio::select! {
            cfg = load_config() => match cfg {
                Ok(c) => c,
                Err(e) => fatal(&e),
            },
            _ = term.recv() => {
                eprintln!("[runner] SIGTERM received while waiting for the run");
                return 143;
            }
        };
        let http = match http_client(&cfg) {
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

/// The run's configuration: from the environment, or, with `RUNNER_CONFIG_URL` (a run slot's runner),
/// from the sidecar once the run exists, merged over the environment.
async fn load_config() -> Result<config::Config, String> {
    let get = |k: &str| std::env::var(k).ok();
    let Some(url) = get("RUNNER_CONFIG_URL").filter(|u| !u.trim().is_empty()) else {
        return config::Config::from_env().map_err(|e| format!("invalid environment: {e}"));
    };
    let bound = handover::wait_bound(get)?;
    let handed = handover::fetch(&url, bound).await?;
    config::Config::parse(|k| handed.get(k).cloned().or_else(|| get(k)))
        .map_err(|e| format!("invalid run configuration: {e}"))
}

/// The runner's HTTP client: everything but the sidecar goes through the sidecar's forward proxy
/// (`HTTP(S)_PROXY` with the run token, `NO_PROXY` for the sidecar itself).
fn http_client(cfg: &config::Config) -> Result<reqwest::Client, reqwest::Error> {
    let no_proxy = || reqwest::NoProxy::from_string(&cfg.no_proxy);
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&cfg.http_proxy)?.no_proxy(no_proxy()))
        .proxy(reqwest::Proxy::https(&cfg.https_proxy)?.no_proxy(no_proxy()))
        .user_agent(concat!("appstrate-runner/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(30))
        .hickory_dns(true)
        // The sidecar follows (and re-checks) redirects for api_call; nothing else redirects.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}
