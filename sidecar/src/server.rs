//! The sidecar server: the HTTP API listener (`/health`, `/configure`, `/llm/…`, `/proxy`) and the
//! forward-proxy listener (SPEC §14).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use url::Url;

use crate::allowlist;
use crate::auth::{self, Route};
use crate::config::{ConfigError, Integration, LlmProvider, Secret, SidecarConfig, Validated};
use crate::forward;
use crate::handover::{self, Handover, Peer};
use crate::http_util::{ct_eq, error, error_u16, host_allowed, strip_hop_by_hop};
use crate::ssrf::{self, Pinned, Resolver, SsrfError};

/// Maximum `/proxy` request body (413 beyond).
pub const MAX_PROXY_REQUEST_BODY: usize = 10 * 1024 * 1024;
/// Maximum buffered `/proxy` response body (truncated beyond, with `X-Truncated: true`).
pub const MAX_PROXY_RESPONSE_BODY: usize = 10 * 1024 * 1024;
/// Maximum redirect hops followed by `/proxy`.
pub const MAX_REDIRECTS: usize = 5;

/// Timeouts of the sidecar (the defaults are the spec's; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `/llm` total request time (30 min).
    pub llm_total: Duration,
    /// `/proxy` upstream time, redirects and body included (30 s, then 504).
    pub proxy_upstream: Duration,
    /// TCP connect for every upstream (10 s).
    pub connect: Duration,
    /// Forward-proxy idle timeout for tunnels and forwarded requests (120 s).
    pub idle: Duration,
    /// How long [`RunningSidecar::shutdown`] lets in-flight connections finish (5 s).
    pub shutdown_grace: Duration,
    /// How long a stdio MCP server has to complete the MCP handshake (30 s).
    pub mcp_start: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            llm_total: Duration::from_secs(30 * 60),
            proxy_upstream: Duration::from_secs(30),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            mcp_start: Duration::from_secs(30),
        }
    }
}

/// How to start a sidecar.
#[derive(Clone)]
pub struct SidecarOptions {
    /// Address of the HTTP API listener (port P; 8080 in a container).
    pub api_addr: SocketAddr,
    /// Address of the forward-proxy listener (port Q; 8081 in a container).
    pub proxy_addr: SocketAddr,
    /// Bearer secret accepted by `POST /configure`. `None` disables the HTTP route (every call gets
    /// 401); [`RunningSidecar::configure`] still works.
    pub config_secret: Option<Secret>,
    /// Name resolver; `None` uses hickory with `/etc/resolv.conf` and `/etc/hosts`.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl std::fmt::Debug for SidecarOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarOptions")
            .field("api_addr", &self.api_addr)
            .field("proxy_addr", &self.proxy_addr)
            .field("config_secret", &self.config_secret)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl SidecarOptions {
    /// Both listeners on `127.0.0.1:0` (process mode), no HTTP configure secret, system resolver.
    pub fn loopback() -> Self {
        Self {
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config_secret: None,
            resolver: None,
            timeouts: Timeouts::default(),
        }
    }

    /// Sets the `/configure` bearer secret.
    pub fn with_config_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.config_secret = Some(secret.into());
        self
    }

    /// Injects a resolver (tests use [`ssrf::StaticResolver`]).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Replaces the timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    /// 409 `already_configured`: a sidecar is configured once.
    #[error("sidecar is already configured")]
    AlreadyConfigured,
    /// 400 `invalid_config`.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
}

impl ConfigureError {
    /// Error code of the HTTP answer.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigureError::AlreadyConfigured => "already_configured",
            ConfigureError::Invalid(_) => "invalid_config",
        }
    }

    /// HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            ConfigureError::AlreadyConfigured => 409,
            ConfigureError::Invalid(_) => 400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Purpose {
    Llm,
    Proxy,
    Forward,
}

/// State shared by both listeners.
pub(crate) struct Shared {
    secret: Option<Secret>,
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) timeouts: Timeouts,
    active: OnceLock<Arc<Validated>>,
    clients: Mutex<HashMap<(Purpose, String, SocketAddr), reqwest::Client>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) handover: Handover,
    /// The run's MCP servers, started at configure.
    mcp: OnceLock<crate::mcp::Hub>,
}

impl Shared {
    pub(crate) fn active(&self) -> Option<Arc<Validated>> {
        self.active.get().cloned()
    }

    pub(crate) fn mcp(&self) -> Option<&crate::mcp::Hub> {
        self.mcp.get()
    }

    fn stop_mcp(&self) {
        if let Some(hub) = self.mcp.get() {
            hub.stop();
        }
    }

    fn configure(&self, cfg: &SidecarConfig) -> Result<(), ConfigureError> {
        if self.active.get().is_some() {
            return Err(ConfigureError::AlreadyConfigured);
        }
        let validated = cfg.compile()?;
        let run_id = validated.run_id.clone();
        let integrations = validated.integrations.len();
        let agent_address = validated.agent_address;
        let mcp_servers = validated.mcp.clone();
        let workspace = validated.workspace_dir.clone();
        self.active
            .set(Arc::new(validated))
            .map_err(|_| ConfigureError::AlreadyConfigured)?;
        if !mcp_servers.is_empty() {
            let hub = crate::mcp::Hub::start(&mcp_servers, workspace, self.timeouts.mcp_start);
            let _ = self.mcp.set(hub);
        }
        self.handover.configured(agent_address, cfg.agent.as_ref());
        tracing::info!(run_id = %run_id, provider = cfg.llm.provider.as_str(), integrations, "sidecar configured");
        Ok(())
    }

    /// A client pinned to `pinned`, cached per destination so connections are reused.
    pub(crate) fn client(
        &self,
        purpose: Purpose,
        pinned: &Pinned,
    ) -> Result<reqwest::Client, reqwest::Error> {
        let key = (purpose, pinned.host.clone(), pinned.addr);
        let mut clients = self.clients.lock().expect("client cache");
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut builder = ssrf::pinned_client_builder(pinned)
            .connect_timeout(self.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90));
        if purpose == Purpose::Forward {
            builder = builder.read_timeout(self.timeouts.idle);
        }
        let client = builder.build()?;
        if clients.len() >= 256 {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Entry point: see [`Sidecar::start`].
pub struct Sidecar;

impl Sidecar {
    /// Binds both listeners and starts serving. `/health` answers once this returns.
    pub async fn start(opts: SidecarOptions) -> std::io::Result<RunningSidecar> {
        let api_listener = TcpListener::bind(opts.api_addr).await?;
        let proxy_listener = TcpListener::bind(opts.proxy_addr).await?;
        let api_addr = api_listener.local_addr()?;
        let proxy_addr = proxy_listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let resolver = opts.resolver.unwrap_or_else(ssrf::system_resolver);
        let shared = Arc::new(Shared {
            secret: opts.config_secret,
            resolver,
            timeouts: opts.timeouts,
            active: OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
            shutdown: rx.clone(),
            handover: Handover::new(),
            mcp: OnceLock::new(),
        });
        let router = router(shared.clone());
        let grace = opts.timeouts.shutdown_grace;
        let api_task = tokio::spawn(accept_loop(api_listener, rx.clone(), grace, {
            move |stream: TcpStream, mut stop: watch::Receiver<bool>| {
                // The peer's address, for `/agent-config` (handed to the agent's address only).
                let peer = stream.peer_addr().ok().map(Peer);
                let svc =
                    hyper_util::service::TowerToHyperService::new(router.clone().map_request(
                        move |mut req: http::Request<hyper::body::Incoming>| {
                            if let Some(peer) = peer {
                                req.extensions_mut().insert(peer);
                            }
                            req
                        },
                    ));
                async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = crate::http_util::stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                }
            }
        }));
        let proxy_shared = shared.clone();
        let proxy_task = tokio::spawn(accept_loop(proxy_listener, rx.clone(), grace, {
            move |stream: TcpStream, stop: watch::Receiver<bool>| {
                forward::serve_connection(proxy_shared.clone(), stream, stop)
            }
        }));
        tracing::info!(%api_addr, %proxy_addr, "sidecar listening");
        Ok(RunningSidecar {
            api_addr,
            proxy_addr,
            shared,
            stop: tx,
            tasks: vec![api_task, proxy_task],
        })
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    handle: F,
) where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    let handout = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(handle(stream, handout.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = crate::http_util::stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// A started sidecar. Dropping it stops both listeners and aborts their connections.
pub struct RunningSidecar {
    api_addr: SocketAddr,
    proxy_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSidecar")
            .field("api_addr", &self.api_addr)
            .field("proxy_addr", &self.proxy_addr)
            .field("configured", &self.is_configured())
            .finish()
    }
}

impl RunningSidecar {
    /// Bound address of the HTTP API listener.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Bound address of the forward-proxy listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Port P of the HTTP API.
    pub fn api_port(&self) -> u16 {
        self.api_addr.port()
    }

    /// Port Q of the forward proxy.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_addr.port()
    }

    /// `http://127.0.0.1:P` (for `SIDECAR_URL` in process mode).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_addr.port())
    }

    /// `http://127.0.0.1:Q` (for `HTTP(S)_PROXY` in process mode).
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_addr.port())
    }

    /// Configures the sidecar directly (process mode), with the validation of `POST /configure`.
    pub fn configure(&self, config: SidecarConfig) -> Result<(), ConfigureError> {
        self.shared.configure(&config)
    }

    /// Whether a configuration has been accepted.
    pub fn is_configured(&self) -> bool {
        self.shared.active.get().is_some()
    }

    /// Stops accepting, lets in-flight connections finish within the shutdown grace, then aborts them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.shared.stop_mcp();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        tracing::info!("sidecar stopped");
    }
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.shared.stop_mcp();
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/configure", post(configure))
        .route("/agent-config", get(handover::agent_config))
        .route("/llm/{provider}", any(llm))
        .route("/llm/{provider}/", any(llm))
        .route("/llm/{provider}/{*rest}", any(llm))
        .route("/proxy", any(proxy))
        .route("/mcp/{name}", any(mcp))
        .route_layer(axum::middleware::from_fn(crate::trace::traced))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        })
        .with_state(shared)
}

async fn health(State(st): State<Arc<Shared>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "configured": st.active.get().is_some(),
        "handedOver": st.handover.handed_over(),
    }))
    .into_response()
}

/// Maximum `/configure` body.
const MAX_CONFIG_BODY: usize = 1024 * 1024;

async fn configure(State(st): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let authorized = match (&st.secret, presented) {
        (Some(secret), Some(p)) => {
            !secret.expose().is_empty() && ct_eq(secret.expose().as_bytes(), p.as_bytes())
        }
        _ => false,
    };
    if !authorized {
        tracing::warn!("configure refused: bad bearer");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid configure secret",
        );
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_CONFIG_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "configuration body exceeds 1 MiB",
        );
    };
    let cfg: SidecarConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                describe_json_error(&e),
            )
        }
    };
    match st.configure(&cfg) {
        Ok(()) => axum::Json(serde_json::json!({"status": "configured"})).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            error(status, e.code(), &e)
        }
    }
}

/// A serde error without any echoed value (a value could be a secret).
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let field_error = text.starts_with("unknown field") || text.starts_with("missing field");
    match e.classify() {
        serde_json::error::Category::Data if field_error => format!("invalid body: {text}"),
        serde_json::error::Category::Data => format!(
            "invalid body: a value has the wrong type or is unknown at line {} column {}",
            e.line(),
            e.column()
        ),
        _ => format!(
            "invalid body: malformed JSON at line {} column {}",
            e.line(),
            e.column()
        ),
    }
}

fn host_check(req: &Request) -> Option<Response> {
    if host_allowed(req.headers(), req.uri()) {
        None
    } else {
        Some(error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "Host must be sidecar, localhost or 127.0.0.1",
        ))
    }
}

/// Caller headers never forwarded upstream by `/llm` and `/proxy`.
fn base_forward_headers(src: &HeaderMap) -> HeaderMap {
    let mut h = src.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h.remove("x-target");
    h.remove("x-integration");
    // The run's trace ids stay inside the platform.
    h.remove("traceparent");
    h.remove("tracestate");
    h
}

/// Upstream response headers passed back to the caller.
fn response_headers(src: &HeaderMap) -> HeaderMap {
    let mut h = src.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::SET_COOKIE);
    h
}

fn stream_body(body: Body) -> Option<reqwest::Body> {
    use axum::body::HttpBody as _;
    if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        return None;
    }
    Some(reqwest::Body::wrap_stream(body.into_data_stream()))
}

/// 401 unless the request carries the run token (see [`auth`]).
fn token_check(active: &Validated, headers: &HeaderMap, route: Route) -> Option<Response> {
    if auth::authorized(headers, route, active.run_token.expose().as_bytes()) {
        return None;
    }
    tracing::warn!(run_id = %active.run_id, route = ?route, "sidecar request refused: missing or wrong run token");
    Some(error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this route needs the run token (Proxy-Authorization: Bearer <token>)",
    ))
}

async fn llm(State(st): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(r) = host_check(&req) {
        return r;
    }
    let Some(active) = st.active() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "sidecar is not configured",
        );
    };
    if let Some(r) = token_check(&active, req.headers(), Route::Llm) {
        return r;
    }
    let path = req.uri().path().to_string();
    let after = path.strip_prefix("/llm/").unwrap_or_default();
    let (provider, rest) = after.split_once('/').unwrap_or((after, ""));
    if provider != active.llm_provider.as_str() {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            format!("provider `{provider}` is not configured"),
        );
    }
    let base = active.llm_base.as_str().trim_end_matches('/');
    let mut target = format!("{base}/{rest}");
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let target = match Url::parse(&target) {
        Ok(u)
            if u.scheme() == active.llm_base.scheme()
                && u.host() == active.llm_base.host()
                && u.port_or_known_default() == active.llm_base.port_or_known_default() =>
        {
            u
        }
        _ => return error(StatusCode::BAD_REQUEST, "invalid_path", "invalid LLM path"),
    };
    let pinned = match ssrf::resolve_pinned(&target, &active.policy, st.resolver.as_ref()).await {
        Ok(p) => p,
        Err(e) => return ssrf_error(&e),
    };
    let client = match st.client(Purpose::Llm, &pinned) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "llm_upstream_error", e),
    };
    let (parts, body) = req.into_parts();
    let mut headers = base_forward_headers(&parts.headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    match active.llm_provider {
        LlmProvider::Openai => {
            headers.insert(header::AUTHORIZATION, active.llm_key.clone());
        }
        LlmProvider::Anthropic => {
            headers.insert(HeaderName::from_static("x-api-key"), active.llm_key.clone());
        }
    }
    let mut rb = client
        .request(parts.method.clone(), target.clone())
        .headers(headers)
        .timeout(st.timeouts.llm_total);
    if let Some(b) = stream_body(body) {
        rb = rb.body(b);
    }
    let started = Instant::now();
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(run_id = %active.run_id, host = %pinned.host, error = %describe(&e), "llm upstream failed");
            return error(
                StatusCode::BAD_GATEWAY,
                "llm_upstream_error",
                format!("LLM upstream request failed: {}", describe(&e)),
            );
        }
    };
    tracing::info!(
        run_id = %active.run_id,
        method = %parts.method,
        host = %pinned.host,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "llm call"
    );
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        *h = response_headers(resp.headers());
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream)).unwrap_or_else(|_| {
        error(
            StatusCode::BAD_GATEWAY,
            "llm_upstream_error",
            "bad response",
        )
    })
}

pub(crate) fn ssrf_error(e: &SsrfError) -> Response {
    error_u16(e.status(), e.code(), e)
}

/// Finds the integration named by `X-Integration: @scope/name[#authKey]`.
fn find_integration<'a>(active: &'a Validated, spec: &str) -> Option<&'a Integration> {
    let (id, key) = match spec.split_once('#') {
        Some((id, key)) => (id.trim(), Some(key.trim())),
        None => (spec.trim(), None),
    };
    active
        .integrations
        .iter()
        .find(|i| i.id == id && key.is_none_or(|k| i.auth_key == k))
}

/// `ANY /mcp/{name}`: the run's MCP server `name` over Streamable HTTP (see [`crate::mcp`]).
async fn mcp(
    State(st): State<Arc<Shared>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if let Some(r) = host_check(&req) {
        return r;
    }
    let Some(active) = st.active() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "sidecar is not configured",
        );
    };
    if let Some(r) = token_check(&active, req.headers(), Route::Mcp) {
        return r;
    }
    crate::mcp::serve(st.clone(), active, &name, req).await
}

enum ProxyFailure {
    Response(Response),
}

async fn proxy(State(st): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(r) = host_check(&req) {
        return r;
    }
    let Some(active) = st.active() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "sidecar is not configured",
        );
    };
    if let Some(r) = token_check(&active, req.headers(), Route::Proxy) {
        return r;
    }
    let Some(target_raw) = req.headers().get("x-target").and_then(|v| v.to_str().ok()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_target",
            "X-Target header is required",
        );
    };
    let target = match ssrf::parse_url(target_raw) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_target", e),
    };
    if !allowlist::path_within_bounds(&target) {
        return error(
            StatusCode::URI_TOO_LONG,
            "target_too_long",
            format!(
                "the X-Target path must be at most {} bytes and {} segments",
                allowlist::MAX_PATH_LEN,
                allowlist::MAX_PATH_SEGMENTS
            ),
        );
    }
    let Some(integ_raw) = req
        .headers()
        .get("x-integration")
        .and_then(|v| v.to_str().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_integration",
            "X-Integration header is required",
        );
    };
    let Some(integ) = find_integration(&active, integ_raw) else {
        return error(
            StatusCode::FORBIDDEN,
            "unknown_integration",
            format!("integration `{integ_raw}` is not configured for this run"),
        );
    };
    if !integ.allow_all_uris && !allowlist::any_matches(&integ.patterns, &target) {
        tracing::info!(run_id = %active.run_id, integration = %integ.id, host = ?ssrf::url_host(&target), "proxy target not authorized");
        return error(
            StatusCode::FORBIDDEN,
            "target_not_authorized",
            format!("target is not in authorized_uris of {}", integ.id),
        );
    }
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_PROXY_REQUEST_BODY as u64 {
            return too_large();
        }
    }
    let body = match axum::body::to_bytes(body, MAX_PROXY_REQUEST_BODY).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let mut headers = base_forward_headers(&parts.headers);
    headers.remove(&integ.header_name);
    headers.remove(header::CONTENT_LENGTH);
    let started = Instant::now();
    let outcome = tokio::time::timeout(st.timeouts.proxy_upstream, async {
        let first = proxy_exchange(
            &st,
            &active,
            integ,
            parts.method.clone(),
            target.clone(),
            headers.clone(),
            body.clone(),
        )
        .await;
        // An expired OAuth token: ask the platform once for a fresh one, then retry once.
        match first {
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED && integ.refresh.is_some() => {
                if crate::refresh::refresh_credential(&active, integ).await {
                    proxy_exchange(
                        &st,
                        &active,
                        integ,
                        parts.method.clone(),
                        target,
                        headers,
                        body,
                    )
                    .await
                } else {
                    Ok(r)
                }
            }
            other => other,
        }
    })
    .await;
    let response = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(ProxyFailure::Response(r))) => r,
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "upstream did not answer in time",
        ),
    };
    tracing::info!(
        run_id = %active.run_id,
        integration = %integ.id,
        method = %parts.method,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "proxy call"
    );
    response
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "request body exceeds 10 MiB",
    )
}

async fn proxy_exchange(
    st: &Shared,
    active: &Validated,
    integ: &Integration,
    method: Method,
    target: Url,
    base_headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ProxyFailure> {
    let mut url = target;
    let mut method = method;
    let mut body = if body.is_empty() { None } else { Some(body) };
    let mut headers = base_headers;
    let mut hop = 0usize;
    loop {
        // First hop: credential always injected (the target passed the allowlist or allowAllUris).
        // Later hops: only while the URL still matches authorized_uris.
        let inject = hop == 0 || allowlist::any_matches(&integ.patterns, &url);
        let pinned = match ssrf::resolve_pinned(&url, &active.policy, st.resolver.as_ref()).await {
            Ok(p) => p,
            Err(e) if hop == 0 => return Err(ProxyFailure::Response(ssrf_error(&e))),
            Err(e) => {
                return Err(ProxyFailure::Response(error(
                    StatusCode::FORBIDDEN,
                    "redirect_not_authorized",
                    format!("redirect refused: {e}"),
                )))
            }
        };
        let client = st.client(Purpose::Proxy, &pinned).map_err(|e| {
            ProxyFailure::Response(error(StatusCode::BAD_GATEWAY, "upstream_error", e))
        })?;
        let mut hop_headers = headers.clone();
        if inject {
            let value = integ
                .header_value
                .read()
                .expect("credential header lock")
                .clone();
            hop_headers.insert(integ.header_name.clone(), value);
        }
        let mut rb = client
            .request(method.clone(), url.clone())
            .headers(hop_headers);
        if let Some(b) = &body {
            rb = rb.body(b.clone());
        }
        let resp = rb.send().await.map_err(|e| {
            let (status, code) = if e.is_timeout() {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "upstream_error")
            };
            ProxyFailure::Response(error(
                status,
                code,
                format!("upstream request failed: {}", describe(&e)),
            ))
        })?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            if let Some(location) = location {
                hop += 1;
                if hop > MAX_REDIRECTS {
                    return Err(ProxyFailure::Response(error(
                        StatusCode::BAD_GATEWAY,
                        "too_many_redirects",
                        format!("more than {MAX_REDIRECTS} redirects"),
                    )));
                }
                let refuse = |why: String| {
                    ProxyFailure::Response(error(
                        StatusCode::FORBIDDEN,
                        "redirect_not_authorized",
                        why,
                    ))
                };
                let next = url
                    .join(&location)
                    .map_err(|e| refuse(format!("invalid redirect location: {e}")))?;
                ssrf::check_url_literal(&next, &active.policy)
                    .map_err(|e| refuse(format!("redirect refused: {e}")))?;
                if !integ.allow_all_uris && !allowlist::any_matches(&integ.patterns, &next) {
                    return Err(refuse(format!(
                        "redirect target is not in authorized_uris of {}",
                        integ.id
                    )));
                }
                let to_get = status == StatusCode::SEE_OTHER && method != Method::HEAD
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST);
                if to_get {
                    method = Method::GET;
                    body = None;
                    headers.remove(header::CONTENT_TYPE);
                }
                tracing::debug!(run_id = %active.run_id, hop, host = ?ssrf::url_host(&next), "following redirect");
                url = next;
                continue;
            }
        }
        return buffered_response(resp).await;
    }
}

async fn buffered_response(mut resp: reqwest::Response) -> Result<Response, ProxyFailure> {
    let status = resp.status();
    let mut headers = response_headers(resp.headers());
    headers.remove(header::CONTENT_LENGTH);
    let mut buf = BytesMut::new();
    let mut truncated = false;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_PROXY_RESPONSE_BODY - buf.len();
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let (status, code) = if e.is_timeout() {
                    (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                } else {
                    (StatusCode::BAD_GATEWAY, "upstream_error")
                };
                return Err(ProxyFailure::Response(error(
                    status,
                    code,
                    format!("reading upstream body failed: {}", describe(&e)),
                )));
            }
        }
    }
    if truncated {
        headers.insert("x-truncated", HeaderValue::from_static("true"));
    }
    let mut out = Response::new(Body::from(buf.freeze()));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Error text of a reqwest failure, without the URL.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() {
        "body error"
    } else if e.is_request() {
        "request error"
    } else {
        "error"
    };
    if parts.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", parts.join(": "))
    }
}

/// Converts a reqwest response into a streamed axum response (forward proxy).
pub(crate) fn streamed_response(resp: reqwest::Response) -> Response {
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        *h = response_headers(resp.headers());
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::BAD_GATEWAY, "upstream_error", "bad response"))
}

pub(crate) fn forward_request_headers(src: &HeaderMap) -> HeaderMap {
    let mut h = src.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h
}

pub(crate) fn request_body(body: Body) -> Option<reqwest::Body> {
    stream_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_echo_values() {
        let bad = r#"{"runId":"r","runToken":"t","platformUrl":"http://x","llm":{"provider":"sk-SECRET","baseUrl":"http://x","apiKey":"k"}}"#;
        let e = serde_json::from_str::<SidecarConfig>(bad).unwrap_err();
        let msg = describe_json_error(&e);
        assert!(!msg.contains("SECRET"), "{msg}");
        let bad = r#"{"runId":"r","runToken":"t","platformUrl":"http://x","llm":{"provider":"openai","baseUrl":"http://x","apiKey":42}}"#;
        let e = serde_json::from_str::<SidecarConfig>(bad).unwrap_err();
        assert!(!describe_json_error(&e).contains("42"));
        let bad = r#"{"runId":"r","surprise":1}"#;
        let e = serde_json::from_str::<SidecarConfig>(bad).unwrap_err();
        assert!(describe_json_error(&e).contains("unknown field `surprise`"));
    }
}
