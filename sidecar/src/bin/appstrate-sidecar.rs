//! `appstrate-sidecar`: the sidecar as a container process (SPEC §13.3, §14).
//!
//! Environment: `PORT` (HTTP API, default 8080), `PROXY_PORT` (forward proxy, default 8081),
//! `CONFIG_SECRET` (required bearer for `/configure`), `LOG_LEVEL` (tracing filter, default `info`).
//! Logs are JSON lines on stdout. SIGTERM or SIGINT stops it gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;

use sidecar::{Secret, Sidecar, SidecarOptions};

fn port(var: &str, default: u16) -> Result<u16, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("{var} must be a port number")),
        _ => Ok(default),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(level.trim())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .init();

    let (api_port, proxy_port) = match (port("PORT", 8080), port("PROXY_PORT", 8081)) {
        (Ok(a), Ok(p)) => (a, p),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "invalid environment");
            return ExitCode::from(2);
        }
    };
    let secret = match std::env::var("CONFIG_SECRET") {
        Ok(s) if !s.is_empty() => Secret::new(s),
        _ => {
            tracing::error!("CONFIG_SECRET is required");
            return ExitCode::from(2);
        }
    };
    let opts = SidecarOptions {
        api_addr: SocketAddr::from(([0, 0, 0, 0], api_port)),
        proxy_addr: SocketAddr::from(([0, 0, 0, 0], proxy_port)),
        ..SidecarOptions::loopback()
    }
    .with_config_secret(secret);
    let running = match Sidecar::start(opts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind listeners");
            return ExitCode::from(1);
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
