//! Facts about the network peer of a request, shared by every face (JSON API and dashboard).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};

use crate::state::AppState;

/// The client address: the socket, or the `X-Forwarded-For` entry chosen by `TRUST_PROXY`.
pub fn client_ip(state: &AppState, req: &Request) -> String {
    let socket = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let hops = state.config.trust_proxy_hops as usize;
    if hops == 0 {
        return socket;
    }
    let chain: Vec<String> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    // With N trusted hops, the client is the N-th entry from the right.
    if chain.len() >= hops {
        chain[chain.len() - hops].clone()
    } else {
        chain.first().cloned().unwrap_or(socket)
    }
}
