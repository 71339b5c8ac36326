//! `bench mcp`: the time to list the tools of one stdio MCP server at run start (issue 16).
//!
//! Each round starts an in-process sidecar, configures it with the `fake-mcp-stdio` server (which the
//! sidecar spawns at configure), then does what the runner does before its first model call: the MCP
//! handshake and `tools/list` over Streamable HTTP at `/mcp/<name>`. Measured from the configure call
//! to the listed tools (the server's start included), and a second `tools/list` once it runs (the
//! proxying cost alone).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::report::{Summary, Target};
use super::{min_median_max, ms};

const TOKEN: &str = "sct_bench-mcp-token-0123456789abcdef";

/// The JSON-RPC answer of a Streamable HTTP POST (a JSON body, or the first `data:` of an SSE one).
async fn rpc(
    http: &reqwest::Client,
    url: &str,
    body: Value,
    protocol: Option<&str>,
) -> anyhow::Result<Value> {
    let mut req = http
        .post(url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(p) = protocol {
        req = req.header("mcp-protocol-version", p);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{url} answered {status}: {text}");
    }
    let json = match text.lines().find_map(|l| l.strip_prefix("data:")) {
        Some(data) => serde_json::from_str(data.trim())?,
        None => serde_json::from_str(&text)?,
    };
    Ok(json)
}

/// One round: (configure → tools listed, a second tools/list, number of tools).
async fn round(bin: &str) -> anyhow::Result<(Duration, Duration, usize)> {
    let sc = sidecar::Sidecar::start(sidecar::SidecarOptions::loopback()).await?;
    let ws = tempfile::tempdir()?;
    let cfg: sidecar::SidecarConfig = serde_json::from_value(json!({
        "runId": "run_bench_mcp",
        "runToken": TOKEN,
        "platformUrl": "http://127.0.0.1:9",
        "llm": {"provider": "openai", "baseUrl": "http://127.0.0.1:9/v1", "apiKey": "sk-bench"},
        "allowInternalHosts": ["127.0.0.1"],
        "mcpServers": [{"name": "fake", "id": "@bench/fake-mcp", "command": bin,
                        "env": {"API_TOKEN": "bench"}, "shareWorkspace": true}],
        "workspaceDir": ws.path().to_string_lossy(),
    }))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("{}/mcp/fake", sc.api_url());
    let started = Instant::now();
    sc.configure(cfg)?;
    let init = rpc(
        &http,
        &url,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}}),
        None,
    )
    .await?;
    let protocol = init["result"]["protocolVersion"]
        .as_str()
        .unwrap_or("2025-06-18")
        .to_string();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let first = rpc(&http, &url, list.clone(), Some(&protocol)).await?;
    let cold = started.elapsed();
    let tools = first["result"]["tools"]
        .as_array()
        .with_context(|| format!("no tools in {first}"))?
        .len();
    let again = Instant::now();
    rpc(&http, &url, list, Some(&protocol)).await?;
    let warm = again.elapsed();
    sc.shutdown().await;
    Ok((cold, warm, tools))
}

/// Runs `rounds` rounds and adds the figures to `summary`.
pub async fn mcp_bench(rounds: usize, summary: &mut Summary) -> anyhow::Result<()> {
    let bin = crate::fake_mcp::stdio_bin();
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p test-support --bin fake-mcp-stdio`",
            bin.display()
        );
    }
    let bin = bin.to_string_lossy().into_owned();
    round(&bin).await.context("warm-up round")?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut tools = 0;
    for _ in 0..rounds.max(1) {
        let (c, w, n) = round(&bin).await?;
        cold.push(c);
        warm.push(w);
        tools = n;
    }
    let (cmin, cmed, cmax) = min_median_max(&cold).expect("rounds");
    let (_, wmed, _) = min_median_max(&warm).expect("rounds");
    println!(
        "\n== mcp: list the tools of one stdio MCP server at run start ({rounds} rounds, {tools} tools) ==\n\
         configure → tools listed (server spawn + handshake + tools/list through the sidecar): \
         min {:.2} ms, median {:.2} ms, max {:.2} ms\n\
         a further tools/list once the server runs: median {:.2} ms",
        ms(cmin),
        ms(cmed),
        ms(cmax),
        ms(wmed)
    );
    summary.add(
        "mcp: configure → tools listed, p50",
        ms(cmed),
        "ms",
        Target::None,
    );
    summary.add(
        "mcp: tools/list when running, p50",
        ms(wmed),
        "ms",
        Target::None,
    );
    Ok(())
}
