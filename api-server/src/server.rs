//! The HTTP listener: accepts connections and serves them with hyper (HTTP/1.1, and HTTP/2 with prior
//! knowledge), within three bounds that a client cannot stretch:
//!
//! - **Connections:** at most `HTTP_MAX_CONNECTIONS` are served at once; one more is answered
//!   `503 connection_limit` (with `Retry-After: 1`) and closed.
//! - **Request heads:** once the first byte of a request head has arrived (or a new connection has been
//!   accepted), the complete head must arrive within `HTTP_HEADER_READ_TIMEOUT_SECONDS`; otherwise the
//!   client gets `408 request_timeout` and the connection is closed (a new connection that sent nothing
//!   is closed without an answer). Trickled headers (slowloris) cannot hold a connection.
//! - **Idle keep-alive:** a connection with no request in progress is closed after
//!   `HTTP_KEEPALIVE_TIMEOUT_SECONDS`.
//!
//! A request in progress (a long-poll, an SSE stream, a large upload) is never cut by these timeouts.
//! Graceful shutdown stops accepting, lets requests in progress finish and closes idle connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The bounds of [`serve`] (from `HTTP_*` variables).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` turns true, then shuts down gracefully: no new
/// connections, requests in progress finish, idle connections close. Returns when every connection
/// has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let refused_warned = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin (as hyper/axum do).
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Warn at most once a minute; each refusal is answered in its own short task.
            let minute = started.elapsed().as_secs() / 60 + 1;
            if refused_warned.swap(minute, Ordering::Relaxed) != minute {
                tracing::warn!(
                    max = limits.max_connections,
                    "connection limit reached (HTTP_MAX_CONNECTIONS); refusing new connections with 503"
                );
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        let router = router.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            serve_connection(stream, addr, router, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A complete `Connection: close` answer with a problem document, written straight to the socket.
fn raw_problem(status: u16, code: &str, detail: &str, retry_after: Option<u64>) -> Vec<u8> {
    let status = axum::http::StatusCode::from_u16(status).expect("valid status");
    let request_id = format!("req_{}", uuid::Uuid::new_v4());
    let mut err = crate::http::error::ApiError::new(status, code, detail);
    err.retry_after = retry_after;
    let body = crate::http::error::render_problem(&err, &request_id).to_string();
    let extra = retry_after
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nrequest-id: {request_id}\r\nconnection: close\r\n{extra}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(stream: TcpStream) {
    let res = raw_problem(
        503,
        "connection_limit",
        "The server has too many open connections; retry shortly",
        Some(1),
    );
    answer_and_close(stream, &res).await;
}

/// Writes `bytes`, half-closes, and discards what the client still sends (up to 1 s) before closing,
/// so that the answer is not lost to a reset.
async fn answer_and_close(mut stream: TcpStream, bytes: &[u8]) {
    let _ = async {
        tokio::time::timeout(Duration::from_secs(1), stream.write_all(bytes)).await??;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
}

/// What one connection is doing, updated by its reader and its requests.
#[derive(Debug)]
struct Activity {
    /// Requests whose response has not been fully sent.
    in_flight: usize,
    /// When the head of the next request started arriving (no request in progress).
    head_started: Option<Instant>,
    /// When the connection became idle (accepted, or its last response was sent).
    idle_since: Instant,
    /// Whether any byte arrived yet.
    any_bytes: bool,
    /// HTTP/2 prior knowledge: no HTTP/1 answer is written on timeout.
    http2: bool,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Fine,
    /// The request head did not arrive in time: answer 408 and close.
    HeadTimeout,
    /// Nothing to answer: close.
    Close,
}

impl Activity {
    fn verdict(&self, now: Instant, limits: &Limits) -> Verdict {
        if self.in_flight > 0 {
            return Verdict::Fine;
        }
        if let Some(t) = self.head_started {
            if now.duration_since(t) >= limits.header_read_timeout {
                return if self.http2 {
                    Verdict::Close
                } else {
                    Verdict::HeadTimeout
                };
            }
            return Verdict::Fine;
        }
        let idle = now.duration_since(self.idle_since);
        // A new connection must start its first request within the header timeout.
        let allowed = if self.any_bytes {
            limits.keepalive_timeout
        } else {
            limits.header_read_timeout.min(limits.keepalive_timeout)
        };
        if idle >= allowed {
            Verdict::Close
        } else {
            Verdict::Fine
        }
    }
}

type Shared = Arc<Mutex<Activity>>;

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Activity> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let stream = Arc::new(stream);
    let activity: Shared = Arc::new(Mutex::new(Activity {
        in_flight: 0,
        head_started: None,
        idle_since: Instant::now(),
        any_bytes: false,
        http2: false,
    }));
    let io = TokioIo::new(TrackedIo {
        stream: stream.clone(),
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let guard = InFlight::start(&activity);
            req.extensions_mut().insert(ConnectInfo(addr));
            let router = router.clone();
            async move {
                let res = match router.oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(res.map(|body| {
                    Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let builder = Builder::new(TokioExecutor::new());
    // Boxed, so that it can be dropped (releasing its handle on the socket) before a 408 is written.
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(io, service));
    let check_every = (limits.header_read_timeout.min(limits.keepalive_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(check_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let verdict = loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                let v = lock(&activity).verdict(Instant::now(), &limits);
                if v != Verdict::Fine {
                    break v;
                }
            }
        }
    };
    // Nothing is in progress on this connection: hyper's side goes, the socket is ours.
    drop(conn);
    if verdict == Verdict::HeadTimeout {
        tracing::debug!(client = %addr, "request head not received in time; 408");
        if let Ok(stream) = Arc::try_unwrap(stream) {
            let res = raw_problem(
                408,
                "request_timeout",
                "The request headers did not arrive in time",
                None,
            );
            answer_and_close(stream, &res).await;
        }
    }
}

/// A request in progress on its connection; dropped once its response body has been sent (or the
/// request was abandoned).
struct InFlight(Shared);

impl InFlight {
    fn start(activity: &Shared) -> InFlight {
        let mut a = lock(activity);
        a.in_flight += 1;
        a.head_started = None;
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = lock(&self.0);
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in progress until it is dropped.
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, shared with its task (which may answer 408 after hyper is done with it),
/// noting when the head of a request starts arriving.
struct TrackedIo {
    stream: Arc<TcpStream>,
    activity: Shared,
}

impl TrackedIo {
    fn note_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut a = lock(&self.activity);
        if !a.any_bytes {
            a.any_bytes = true;
            a.http2 = bytes.starts_with(b"PRI * HTTP/2");
        }
        if a.in_flight == 0 && a.head_started.is_none() {
            a.head_started = Some(Instant::now());
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.stream.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            match self.stream.try_read(dst) {
                Ok(n) => {
                    self.note_read(&dst[..n]);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the last handle is dropped; a half-close is not needed by hyper's
        // server side.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
        }
    }

    fn activity(at: Instant) -> Activity {
        Activity {
            in_flight: 0,
            head_started: None,
            idle_since: at,
            any_bytes: false,
            http2: false,
        }
    }

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut a = activity(t0);
        // A new silent connection: closed after the header timeout, without an answer.
        assert_eq!(a.verdict(s(9), &limits()), Verdict::Fine);
        assert_eq!(a.verdict(s(10), &limits()), Verdict::Close);
        // A head that started arriving: 408 after the header timeout.
        a.any_bytes = true;
        a.head_started = Some(s(1));
        assert_eq!(a.verdict(s(10), &limits()), Verdict::Fine);
        assert_eq!(a.verdict(s(11), &limits()), Verdict::HeadTimeout);
        // A request in progress is never cut.
        a.in_flight = 1;
        assert_eq!(a.verdict(s(1000), &limits()), Verdict::Fine);
        // Idle keep-alive: closed after the keep-alive timeout.
        a.in_flight = 0;
        a.head_started = None;
        a.idle_since = s(100);
        assert_eq!(a.verdict(s(159), &limits()), Verdict::Fine);
        assert_eq!(a.verdict(s(160), &limits()), Verdict::Close);
        // HTTP/2: no HTTP/1 answer.
        a.http2 = true;
        a.head_started = Some(s(100));
        assert_eq!(a.verdict(s(110), &limits()), Verdict::Close);
    }
}
