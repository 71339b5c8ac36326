//! A closed-loop HTTP/1.1 load generator: `concurrency` tokio tasks, each with its own keep-alive
//! connection, send the same request back to back for a fixed duration after a warm-up. Latency is the
//! time from sending the request to having read the whole body; every latency of the measured window is
//! kept (a few hundred thousand `u32` microseconds at most) and sorted for exact percentiles.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The request every worker repeats.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    pub method: Method,
    /// Path and query, e.g. `/api/end-users?limit=20`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl RequestTemplate {
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// One header whose value changes from request to request, round-robin over `values` (e.g. API keys,
/// to stay under a per-key rate limit).
#[derive(Clone, Debug)]
pub struct Rotation {
    pub header: HeaderName,
    pub values: Arc<Vec<HeaderValue>>,
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub request: RequestTemplate,
    pub rotation: Option<Rotation>,
    pub concurrency: usize,
    /// Requests sent before the measured window; not counted.
    pub warmup: Duration,
    pub duration: Duration,
    /// A hard cap on requests sent, warm-up included; the run ends early when it is reached.
    pub max_requests: Option<u64>,
    /// The server's process id, to report the CPU it used during the measured window.
    pub server_pid: Option<u32>,
}

/// What one run measured (the warm-up excluded).
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub concurrency: usize,
    /// Requests completed in the measured window (any status).
    pub requests: u64,
    /// Requests started in the whole run, warm-up included (what a per-key budget is spent on).
    pub sent: u64,
    /// Answers outside 2xx, by status.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, malformed response).
    pub transport_errors: u64,
    /// From the start of the measured window to the last answer.
    pub elapsed: Duration,
    /// Sorted latencies in microseconds.
    pub latencies_us: Vec<u32>,
    /// True when `max_requests` ended the run before `duration`.
    pub budget_exhausted: bool,
    /// CPU used during the measured window, in cores (1.0 = one core busy), by the server
    /// (when `server_pid` was given) and by this process (the load generator).
    pub server_cpu: Option<f64>,
    pub client_cpu: Option<f64>,
    /// The first non-2xx answer of the measured window: status and the start of its body.
    pub first_error: Option<String>,
}

impl LoadReport {
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0.0 to 1.0), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let n = self.latencies_us.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Duration::from_micros(self.latencies_us[rank - 1] as u64)
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latencies_us.last().copied().unwrap_or(0) as u64)
    }

    /// Non-2xx answers plus transport errors.
    pub fn errors(&self) -> u64 {
        self.non_2xx.values().sum::<u64>() + self.transport_errors
    }

    /// `"429×12, 500×1, transport×3"`, or `"-"` when there were none.
    pub fn error_breakdown(&self) -> String {
        let mut parts: Vec<String> = self
            .non_2xx
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        if self.transport_errors > 0 {
            parts.push(format!("transport×{}", self.transport_errors));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Default)]
struct WorkerResult {
    requests: u64,
    non_2xx: BTreeMap<u16, u64>,
    transport_errors: u64,
    latencies_us: Vec<u32>,
    last_answer: Option<Instant>,
    budget_exhausted: bool,
    first_error: Option<String>,
}

async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Runs the load described by `spec`; call from inside a multi-thread tokio runtime.
pub async fn run(spec: LoadSpec) -> LoadReport {
    let spec = Arc::new(spec);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let until = measure_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for _ in 0..spec.concurrency.max(1) {
        let spec = spec.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            worker(&spec, &counter, measure_from, until).await
        }));
    }
    let cpu = |pid: Option<u32>| pid.and_then(super::proc::cpu_time);
    let me = Some(std::process::id());
    tokio::time::sleep_until(measure_from.into()).await;
    let (server0, client0) = (cpu(spec.server_pid), cpu(me));
    let mut report = LoadReport {
        concurrency: spec.concurrency,
        ..LoadReport::default()
    };
    let mut last = measure_from;
    for t in tasks {
        let Ok(w) = t.await else {
            report.transport_errors += 1;
            continue;
        };
        report.requests += w.requests;
        report.transport_errors += w.transport_errors;
        for (s, n) in w.non_2xx {
            *report.non_2xx.entry(s).or_default() += n;
        }
        report.latencies_us.extend(w.latencies_us);
        report.budget_exhausted |= w.budget_exhausted;
        if report.first_error.is_none() {
            report.first_error = w.first_error;
        }
        if let Some(t) = w.last_answer {
            last = last.max(t);
        }
    }
    let wall = measure_from.elapsed().as_secs_f64();
    let share = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if wall > 0.0 => Some(b.saturating_sub(a).as_secs_f64() / wall),
        _ => None,
    };
    report.server_cpu = share(server0, cpu(spec.server_pid));
    report.client_cpu = share(client0, cpu(me));
    report.latencies_us.sort_unstable();
    let started = counter.load(Ordering::Relaxed);
    report.sent = spec.max_requests.map_or(started, |max| started.min(max));
    report.elapsed = last.saturating_duration_since(measure_from);
    report
}

async fn worker(
    spec: &LoadSpec,
    counter: &AtomicU64,
    measure_from: Instant,
    until: Instant,
) -> WorkerResult {
    let host = HeaderValue::from_str(&spec.addr.to_string()).expect("socket address");
    let mut out = WorkerResult {
        latencies_us: Vec::with_capacity(64 * 1024),
        ..WorkerResult::default()
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        if spec.max_requests.is_some_and(|max| n >= max) {
            out.budget_exhausted = true;
            break;
        }
        // (Re)connect when there is no usable connection; a connection the server closed is not an error.
        let usable = match sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            match connect(spec.addr).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    sender = None;
                    if Instant::now() >= measure_from {
                        out.transport_errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected");
        let mut req = Request::builder()
            .method(spec.request.method.clone())
            .uri(spec.request.path.as_str())
            .body(Full::new(spec.request.body.clone()))
            .expect("valid request template");
        let headers = req.headers_mut();
        headers.insert(hyper::header::HOST, host.clone());
        for (k, v) in &spec.request.headers {
            headers.insert(k.clone(), v.clone());
        }
        if let Some(rot) = &spec.rotation {
            let v = &rot.values[(n % rot.values.len() as u64) as usize];
            headers.insert(rot.header.clone(), v.clone());
        }
        let sent = Instant::now();
        let outcome = match s.send_request(req).await {
            Ok(res) => {
                let status = res.status();
                match res.into_body().collect().await {
                    Ok(body) => Some((status, body.to_bytes())),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        let done = Instant::now();
        if sent < measure_from {
            continue;
        }
        match outcome {
            Some((status, body)) => {
                out.requests += 1;
                out.last_answer = Some(done);
                let us = done.duration_since(sent).as_micros().min(u32::MAX as u128) as u32;
                out.latencies_us.push(us);
                if !status.is_success() {
                    *out.non_2xx.entry(status.as_u16()).or_default() += 1;
                    if out.first_error.is_none() {
                        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                        out.first_error = Some(format!("{status}: {text}"));
                    }
                }
            }
            None => {
                out.transport_errors += 1;
                sender = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let r = LoadReport {
            latencies_us: (1..=100).collect(),
            requests: 100,
            elapsed: Duration::from_secs(2),
            ..LoadReport::default()
        };
        assert_eq!(r.p50(), Duration::from_micros(50));
        assert_eq!(r.p99(), Duration::from_micros(99));
        assert_eq!(r.max(), Duration::from_micros(100));
        assert_eq!(r.rps(), 50.0);
        assert_eq!(r.error_breakdown(), "-");
        assert_eq!(LoadReport::default().p99(), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drives_a_local_server_and_counts_statuses() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/limited",
                get(|| async { (axum::http::StatusCode::TOO_MANY_REQUESTS, "slow down") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let spec = |path: &str| LoadSpec {
            addr,
            request: RequestTemplate::get(path),
            rotation: None,
            concurrency: 4,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            max_requests: None,
            server_pid: None,
        };
        let ok = run(spec("/ok")).await;
        assert!(ok.requests > 10, "{ok:?}");
        assert_eq!(ok.errors(), 0);
        assert_eq!(ok.latencies_us.len() as u64, ok.requests);
        assert!(ok.elapsed >= Duration::from_millis(250));
        assert!(ok.client_cpu.is_some_and(|c| c > 0.0) && ok.server_cpu.is_none());
        assert!(ok.first_error.is_none());

        let limited = run(spec("/limited")).await;
        assert_eq!(limited.non_2xx.get(&429).copied(), Some(limited.requests));
        assert_eq!(
            limited.first_error.as_deref(),
            Some("429 Too Many Requests: slow down")
        );

        let mut capped = spec("/ok");
        capped.max_requests = Some(20);
        capped.warmup = Duration::ZERO;
        capped.duration = Duration::from_secs(30);
        let capped = run(capped).await;
        assert!(capped.budget_exhausted);
        assert_eq!(capped.requests, 20);
    }
}
