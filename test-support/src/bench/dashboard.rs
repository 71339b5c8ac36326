//! The dashboard's figures: server render time per page (p50/p99 at each concurrency, over a session
//! cookie on loopback, so the time includes the session lookup and the domain calls a page makes), and
//! what a first load of a run page transfers — the HTML and every asset it references, and how deep the
//! chain of requests goes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper::header::{HeaderValue, COOKIE};
use hyper::Method;

use super::client;
use super::load::{self, LoadReport, LoadSpec, RequestTemplate};
use super::ms;
use super::report::{load_table, Summary, Target};

/// Target: p50 server render time per page.
pub const RENDER_P50_TARGET_MS: f64 = 5.0;
/// Target: bytes of a first load of the run page (HTML and assets).
pub const FIRST_LOAD_TARGET_KB: f64 = 150.0;

pub struct DashboardBench<'a> {
    pub addr: SocketAddr,
    pub server_pid: u32,
    /// `appstrate_session=…` of a member of the organization.
    pub cookie: &'a str,
    /// A finished run of the imported agent.
    pub run_id: &'a str,
    /// The imported agent, `@scope/name`.
    pub agent: &'a str,
    pub concurrency: &'a [usize],
    pub duration: Duration,
    pub warmup: Duration,
}

async fn get(addr: SocketAddr, path: &str, cookie: &str) -> anyhow::Result<client::Answer> {
    let a = client::request_with(addr, Method::GET, path, &[(COOKIE, cookie)]).await?;
    if !a.status.is_success() {
        bail!(
            "GET {path}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    Ok(a)
}

/// The `/assets/…` URLs a text references (`href`, `src`, CSS `url()` and `@import`); the templates
/// escape `/` in attributes as `&#x2f;`, which a browser decodes.
fn asset_refs(text: &str) -> Vec<String> {
    let text = text.replace("&#x2f;", "/");
    let mut out = Vec::new();
    for (at, _) in text.match_indices("/assets/") {
        let rest = &text[at..];
        let end = rest
            .find(|c: char| c == '"' || c == '\'' || c == ')' || c.is_whitespace())
            .unwrap_or(rest.len());
        let url = rest[..end].to_string();
        if !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

pub async fn run(b: &DashboardBench<'_>, summary: &mut Summary) -> anyhow::Result<()> {
    println!("\n== dashboard: server render time per page (session cookie) ==");
    let pages = [
        ("agents", "/agents".to_string()),
        ("agent", format!("/agents/{}", b.agent)),
        ("runs", "/runs".to_string()),
        ("run", format!("/runs/{}", b.run_id)),
        ("schedules", "/schedules".to_string()),
        ("webhooks", "/webhooks".to_string()),
        ("models", "/models".to_string()),
        ("members", "/members".to_string()),
    ];
    let cookie = HeaderValue::from_str(b.cookie)?;
    for (name, path) in &pages {
        let first = get(b.addr, path, b.cookie)
            .await
            .with_context(|| format!("the {name} page"))?;
        let mut reports: Vec<LoadReport> = Vec::new();
        for &c in b.concurrency {
            reports.push(
                load::run(LoadSpec {
                    addr: b.addr,
                    request: RequestTemplate::get(path).header(COOKIE, cookie.clone()),
                    rotation: None,
                    concurrency: c,
                    warmup: b.warmup,
                    duration: b.duration,
                    max_requests: None,
                    server_pid: Some(b.server_pid),
                })
                .await,
            );
        }
        print!(
            "{}",
            load_table(
                &format!(
                    "GET {path} ({name} page, {} bytes of HTML)",
                    first.body.len()
                ),
                &reports
            )
        );
        for r in &reports {
            let c = r.concurrency;
            summary.add(
                format!("dashboard {name} page c={c} p50"),
                ms(r.p50()),
                "ms",
                if c == 1 {
                    Target::AtMost(RENDER_P50_TARGET_MS)
                } else {
                    Target::None
                },
            );
            summary.add(
                format!("dashboard {name} page c={c} p99"),
                ms(r.p99()),
                "ms",
                Target::None,
            );
            summary.add(
                format!("dashboard {name} page c={c} errors"),
                r.errors() as f64,
                "",
                Target::AtMost(0.0),
            );
        }
    }

    println!("\n== dashboard: first load of the run page ==");
    let html = get(b.addr, &format!("/runs/{}", b.run_id), b.cookie).await?;
    let text = String::from_utf8_lossy(&html.body).into_owned();
    let mut total = html.body.len();
    let mut depth = 1;
    println!("{:>8} B  /runs/{} (HTML)", html.body.len(), b.run_id);
    let mut level = asset_refs(&text);
    let mut seen: Vec<String> = Vec::new();
    while !level.is_empty() {
        depth += 1;
        let mut next = Vec::new();
        for url in level {
            if seen.contains(&url) {
                continue;
            }
            let a = get(b.addr, &url, b.cookie).await?;
            let cache = a
                .headers
                .get(hyper::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            println!(
                "{:>8} B  {url}  (depth {depth}; Cache-Control: {cache})",
                a.body.len()
            );
            total += a.body.len();
            next.extend(asset_refs(&String::from_utf8_lossy(&a.body)));
            seen.push(url);
        }
        level = next.into_iter().filter(|u| !seen.contains(u)).collect();
    }
    let kb = total as f64 / 1024.0;
    println!(
        "first load: {kb:.1} KB in {} request(s), request chain depth {depth} (a live run adds one \
         SSE stream opened by the script)",
        seen.len() + 1
    );
    summary.add(
        "dashboard run page first load (HTML + assets)",
        (kb * 10.0).round() / 10.0,
        "KB",
        Target::AtMost(FIRST_LOAD_TARGET_KB),
    );
    summary.add(
        "dashboard run page request chain depth",
        depth as f64,
        "",
        Target::AtMost(2.0),
    );
    Ok(())
}
