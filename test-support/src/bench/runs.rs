//! Run benchmarks (process mode, fake LLM): a keep-alive connection for API calls, an SSE reader that
//! reports the first runner event of each run, and a sampler of the runner processes' peak memory.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use appstrate::infra::database::Timestamp;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::client::Answer;

/// The terminal run statuses (§11.2).
pub const TERMINAL: [&str; 4] = ["success", "failed", "timeout", "cancelled"];

/// An inline run body: a manifest without output schema (a text answer is a success) and a prompt.
pub fn inline_run_body() -> Value {
    serde_json::json!({
        "manifest": {
            "schema_version": "0.1",
            "name": "@bench/agent",
            "version": "1.0.0",
            "type": "agent",
            "display_name": "Bench"
        },
        "prompt": "Say hi."
    })
}

/// Imports `examples/agents/hello.afps` (the run-start scenario's agent); already imported is fine.
pub async fn import_example_agent(addr: SocketAddr, bearer: &str) -> anyhow::Result<()> {
    let afps = super::server::repo_root().join("examples/agents/hello.afps");
    let zip = std::fs::read(&afps).with_context(|| format!("reading {}", afps.display()))?;
    let a = Conn::new(addr)
        .send(
            Method::POST,
            "/api/packages/import",
            bearer,
            Some(("application/zip", Bytes::from(zip))),
            || {},
        )
        .await?;
    if !a.status.is_success() && a.status != hyper::StatusCode::CONFLICT {
        bail!(
            "POST /api/packages/import {}: {} {}",
            afps.display(),
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection, reopened when the server closed it.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Transport errors of long-polls that were retried on a new connection.
    pub dropped: Vec<String>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            dropped: Vec::new(),
        }
    }

    async fn ready(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let usable = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected"))
    }

    /// Sends one request; `on_send` runs right before the request is written (to timestamp it).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<(&str, Bytes)>,
        on_send: impl FnOnce(),
    ) -> anyhow::Result<Answer> {
        let host = self.addr.to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"));
        let payload = match body {
            Some((content_type, b)) => {
                req = req.header(hyper::header::CONTENT_TYPE, content_type);
                b
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload))?;
        let sender = self.ready().await?;
        on_send();
        let res = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        bearer: &str,
        body: &Value,
        on_send: impl FnOnce(),
    ) -> anyhow::Result<Answer> {
        let b = Bytes::from(serde_json::to_vec(body)?);
        self.send(
            Method::POST,
            path,
            bearer,
            Some(("application/json", b)),
            on_send,
        )
        .await
    }

    /// Long-polls `GET /api/runs/{id}?wait=30` until the run is terminal or `deadline` passes; the last DTO.
    pub async fn wait_terminal(
        &mut self,
        id: &str,
        bearer: &str,
        deadline: Instant,
    ) -> anyhow::Result<Value> {
        let mut transport_errors = 0;
        loop {
            let t = Instant::now();
            let a = match self
                .send(
                    Method::GET,
                    &format!("/api/runs/{id}?wait=30"),
                    bearer,
                    None,
                    || {},
                )
                .await
            {
                Ok(a) => a,
                // A GET is safe to repeat: retry on a fresh connection, and count it.
                Err(e) if transport_errors < 3 && Instant::now() < deadline => {
                    transport_errors += 1;
                    self.sender = None;
                    self.dropped.push(format!("{e:#}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !a.status.is_success() {
                bail!(
                    "GET /api/runs/{id}: {} {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                );
            }
            let run = a.json()?;
            let status = run["status"].as_str().unwrap_or("");
            if TERMINAL.contains(&status) || Instant::now() >= deadline {
                return Ok(run);
            }
            // The server answers at once when this key has too many long-polls open: back off a little.
            if t.elapsed() < Duration::from_millis(100) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The first event a runner sent for a run, as the realtime stream delivered it.
#[derive(Clone, Debug)]
pub struct FirstEvent {
    pub run_id: String,
    /// When the frame reached the bench (monotonic clock).
    pub received: Instant,
    /// `createdAt` of the log row: the server's clock when it persisted the event (same value as the
    /// run's `first_event_at`).
    pub persisted_at: Option<Timestamp>,
    pub message: String,
}

/// Splits complete SSE events (`…\n\n`) off the front of `buf`: `(event name, data)` pairs.
pub fn take_sse_events(buf: &mut String) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut name, mut data) = (String::from("message"), Vec::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        out.push((name, data.join("\n")));
    }
    out
}

/// The first runner event of a run from a `run_log` frame: platform breadcrumbs (`data.platform`) are
/// written by the API server itself and skipped.
pub fn runner_log(data: &str) -> Option<(String, Option<Timestamp>, String)> {
    let v: Value = serde_json::from_str(data).ok()?;
    if v["data"]["platform"] == true || v["event"] == "platform" {
        return None;
    }
    let run_id = v["runId"].as_str()?.to_string();
    let at = v["createdAt"].as_str().and_then(|s| s.parse().ok());
    Some((run_id, at, v["message"].as_str().unwrap_or("").to_string()))
}

/// Subscribes to `GET /api/realtime/runs?token=…&verbose=true` (every run of the application) and sends
/// the first runner event of each run on the returned channel. Returns once the stream answered 200.
pub async fn first_events(
    addr: SocketAddr,
    api_key: &str,
) -> anyhow::Result<mpsc::UnboundedReceiver<FirstEvent>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("/api/realtime/runs?token={api_key}&verbose=true"))
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let res = sender.send_request(req).await?;
    if !res.status().is_success() {
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        bail!(
            "GET /api/realtime/runs: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut body = res.into_body();
    tokio::spawn(async move {
        let _sender = sender;
        let mut buf = String::new();
        let mut seen = HashSet::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let received = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            for (name, data) in take_sse_events(&mut buf) {
                if name != "run_log" {
                    continue;
                }
                if let Some((run_id, persisted_at, message)) = runner_log(&data) {
                    if seen.insert(run_id.clone())
                        && tx
                            .send(FirstEvent {
                                run_id,
                                received,
                                persisted_at,
                                message,
                            })
                            .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// Peak memory of the runner processes, sampled from `/proc/<pid>/status` (`VmHWM`) for every pid
/// found in `<data>/runs/<runId>/runner.pid`, on a thread of its own.
pub struct RunnerSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<HashMap<u32, u64>>>,
    samples: Arc<Mutex<u64>>,
    max_live: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the sampler saw.
#[derive(Clone, Debug, Default)]
pub struct RunnerPeaks {
    /// Peak `VmHWM` (kB) per runner pid.
    pub peaks_kb: HashMap<u32, u64>,
    /// `/proc` reads that found a live runner.
    pub samples: u64,
    /// The most runner processes alive in one sweep of the runs directory.
    pub max_live: usize,
}

impl RunnerPeaks {
    pub fn max_kb(&self) -> Option<u64> {
        self.peaks_kb.values().copied().max()
    }

    /// The median of the per-process peaks.
    pub fn median_kb(&self) -> Option<u64> {
        let mut v: Vec<u64> = self.peaks_kb.values().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// `Name:` and `VmHWM:` (kB) of a `/proc/<pid>/status` document.
pub fn name_and_hwm(status: &str) -> Option<(&str, u64)> {
    let name = status.lines().find_map(|l| l.strip_prefix("Name:"))?.trim();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((name, hwm))
}

/// True when `name` (the kernel keeps 15 characters) is the runner's.
fn is_runner(name: &str) -> bool {
    name.starts_with("appstrate-runn")
}

impl RunnerSampler {
    pub fn start(runs_dir: PathBuf, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(HashMap::<u32, u64>::new()));
        let samples = Arc::new(Mutex::new(0u64));
        let max_live = Arc::new(Mutex::new(0usize));
        let (s, p, n, m) = (
            stop.clone(),
            peaks.clone(),
            samples.clone(),
            max_live.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut pids: HashMap<PathBuf, u32> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let mut live = 0;
                if let Ok(entries) = std::fs::read_dir(&runs_dir) {
                    for e in entries.filter_map(Result::ok) {
                        let dir = e.path();
                        let pid = match pids.get(&dir) {
                            Some(&pid) => pid,
                            None => {
                                let Some(pid) = std::fs::read_to_string(dir.join("runner.pid"))
                                    .ok()
                                    .and_then(|s| s.trim().parse::<u32>().ok())
                                else {
                                    continue;
                                };
                                pids.insert(dir, pid);
                                pid
                            }
                        };
                        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        else {
                            continue;
                        };
                        if let Some((name, hwm)) = name_and_hwm(&status) {
                            if is_runner(name) {
                                live += 1;
                                let mut peaks = p.lock().unwrap_or_else(|e| e.into_inner());
                                let peak = peaks.entry(pid).or_default();
                                *peak = (*peak).max(hwm);
                                *n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                            }
                        }
                    }
                }
                {
                    let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                    *m = (*m).max(live);
                }
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            peaks,
            samples,
            max_live,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> RunnerPeaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        RunnerPeaks {
            peaks_kb: self.peaks.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            samples: *self.samples.lock().unwrap_or_else(|e| e.into_inner()),
            max_live: *self.max_live.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Drop for RunnerSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Kills (SIGKILL) every pid of `pids` that is still a live runner; returns how many there were.
pub fn kill_leftover_runners(pids: impl IntoIterator<Item = u32>) -> usize {
    let mut killed = 0;
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .is_some_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .is_some_and(|n| is_runner(n.trim()))
                    && !s
                        .lines()
                        .any(|l| l.starts_with("State:") && l.contains('Z'))
            });
        if alive {
            // SAFETY: `kill` has no memory-safety preconditions; the pid was checked to be a runner.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// `<server dir>/data/runs`, where the process adapter writes `runner.pid` files.
pub fn runs_dir(server_dir: &Path) -> PathBuf {
    server_dir.join("data").join("runs")
}

/// Nearest-rank quantile of a sorted sample.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sse_events_and_keeps_partial_ones() {
        let mut buf = String::from(
            ":\n\nevent: ping\ndata: \nid: a:1\n\nevent: run_log\ndata: {\"x\":1}\nid: a:2\n\nevent: run_",
        );
        let ev = take_sse_events(&mut buf);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[1], ("ping".to_string(), String::new()));
        assert_eq!(ev[2], ("run_log".to_string(), "{\"x\":1}".to_string()));
        assert_eq!(buf, "event: run_");
    }

    #[test]
    fn runner_logs_skip_platform_breadcrumbs() {
        let platform = r#"{"runId":"r1","event":"platform","message":"Run started","data":{"platform":true},"createdAt":"2026-01-01T00:00:00.000001Z"}"#;
        assert!(runner_log(platform).is_none());
        let first = r#"{"runId":"r1","event":"progress","message":"runtime starting","data":null,"createdAt":"2026-01-01T00:00:00.123456Z"}"#;
        let (id, at, msg) = runner_log(first).unwrap();
        assert_eq!((id.as_str(), msg.as_str()), ("r1", "runtime starting"));
        assert_eq!(at.unwrap().timestamp_subsec_micros(), 123_456);
    }

    #[test]
    fn reads_name_and_peak() {
        let s =
            "Name:\tappstrate-runne\nState:\tS (sleeping)\nVmHWM:\t    6000 kB\nVmRSS:\t 5000 kB\n";
        assert_eq!(name_and_hwm(s), Some(("appstrate-runne", 6000)));
        assert!(is_runner("appstrate-runne"));
        assert!(!is_runner("appstrate"));
        let p = RunnerPeaks {
            peaks_kb: [(1, 10), (2, 30), (3, 20)].into_iter().collect(),
            samples: 3,
            max_live: 2,
        };
        assert_eq!((p.max_kb(), p.median_kb()), (Some(30), Some(20)));
        let d = |n| Duration::from_millis(n);
        let v: Vec<Duration> = (1..=50).map(d).collect();
        assert_eq!(quantile(&v, 0.5), d(25));
        assert_eq!(quantile(&v, 0.99), d(50));
    }
}
