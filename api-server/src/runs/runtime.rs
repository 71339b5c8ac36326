//! The workload side of runs: starting a run's workload, supervising it until exit, stopping it on
//! cancel, watchdog, timeout or shutdown, and the single terminal writer `finalize_run`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::events::SinkState;
use super::verdict::{self, Outcome};
use crate::config::{Config, LlmApi};
use crate::infra::database::now;
use crate::infra::database::runs::{Finalization, RunRow};
use crate::infra::pubsub::{Channel, Delivery};
use crate::infra::run_adapter::{RunAdapter, WorkloadSpec};
use crate::packages::RunIntegration;
use crate::state::AppState;

/// How a stop was asked for.
#[derive(Debug, Clone, PartialEq)]
enum StopRequest {
    /// Stop and finalize with this outcome (local timeout safety net).
    Finalize(Box<Outcome>),
    /// Stop only: whoever asked finalizes (cancel, watchdog, shutdown, on any instance).
    External,
}

/// A workload held by this instance.
struct ActiveRun {
    stop: watch::Sender<Option<StopRequest>>,
    done: watch::Receiver<bool>,
}

/// Per-instance run state: the adapter, the workloads held here and the event-sink memory.
pub struct Runtime {
    pub adapter: Arc<dyn RunAdapter>,
    active: Mutex<HashMap<String, ActiveRun>>,
    pub sink: SinkState,
    waiters: Arc<Slots>,
    streams: Arc<Slots>,
    /// Set when graceful shutdown begins (§5.3 step 1): SSE streams and long-polls end.
    shutting_down: watch::Sender<bool>,
}

impl Runtime {
    pub fn new(adapter: Arc<dyn RunAdapter>) -> Self {
        Self {
            adapter,
            active: Mutex::new(HashMap::new()),
            sink: SinkState::default(),
            waiters: Slots::new(MAX_WAITS_PER_IDENTITY),
            streams: Slots::new(MAX_STREAMS_PER_IDENTITY),
            shutting_down: watch::channel(false).0,
        }
    }

    /// Resolves once graceful shutdown has begun (at once if it already has).
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutting_down.subscribe();
        async move {
            // An error means the runtime is gone: shut down as well.
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    pub fn active_count(&self) -> usize {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn request_stop(&self, run_id: &str, req: StopRequest) -> Option<watch::Receiver<bool>> {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let run = active.get(run_id)?;
        let _ = run.stop.send(Some(req));
        Some(run.done.clone())
    }

    /// Takes one long-poll slot for `identity` (at most [`MAX_WAITS_PER_IDENTITY`] at once); `None`
    /// when they are all taken.
    pub fn enter_wait(&self, identity: &str) -> Option<Slot> {
        self.waiters.enter(identity)
    }

    /// Takes one SSE stream slot for `identity` (at most [`MAX_STREAMS_PER_IDENTITY`] at once); `None`
    /// when they are all taken.
    pub fn enter_stream(&self, identity: &str) -> Option<Slot> {
        self.streams.enter(identity)
    }
}

/// Concurrent long-polls per identity (§11.7).
pub const MAX_WAITS_PER_IDENTITY: usize = 10;
/// Concurrent SSE streams per identity (one API key, admin token or end-user impersonation).
pub const MAX_STREAMS_PER_IDENTITY: usize = 10;

/// Counted slots per identity, with a ceiling.
pub struct Slots {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl Slots {
    fn new(limit: usize) -> Arc<Slots> {
        Arc::new(Slots {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn enter(self: &Arc<Self>, identity: &str) -> Option<Slot> {
        let mut w = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = w.entry(identity.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            identity: identity.to_string(),
        })
    }
}

/// A held slot (long-poll or SSE stream), released on drop.
pub struct Slot {
    slots: Arc<Slots>,
    identity: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut w = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.identity);
            }
        }
    }
}

/// What the creation pipeline resolved for the workload.
pub struct LaunchContext {
    pub integrations: Vec<RunIntegration>,
    /// The resolved model and the credential the sidecar injects.
    pub model: crate::models::resolve::Resolved,
    /// Agent memory (MiB) and CPUs: `_meta["dev.appstrate/resources"]`, clamped by the ceilings.
    pub memory_mb: u64,
    pub cpus: f64,
    /// The run's MCP servers (`dependencies.mcp_servers`), launched by the sidecar.
    pub mcp_servers: Vec<crate::packages::mcp::RunMcpServer>,
}

/// The agent's resources from the manifest's `_meta["dev.appstrate/resources"].{memory_mb,cpu}`
/// (default: the ceilings, 1536 MiB / 2 CPUs), clamped by `agent_memory_ceiling_mb` / `agent_cpu_ceiling`.
pub fn agent_resources(manifest: &Value, memory_ceiling_mb: u64, cpu_ceiling: u64) -> (u64, f64) {
    let res = manifest
        .get("_meta")
        .and_then(|m| m.get("dev.appstrate/resources"));
    let memory = res
        .and_then(|r| r.get("memory_mb"))
        .and_then(Value::as_u64)
        .filter(|m| *m >= 16)
        .unwrap_or(1536)
        .min(memory_ceiling_mb);
    let cpu = res
        .and_then(|r| r.get("cpu"))
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.01)
        .unwrap_or(2.0)
        .min(cpu_ceiling as f64);
    (memory, cpu)
}

/// `PLATFORM_API_URL`, else the default of the run adapter: loopback for processes, the host gateway
/// for containers (§3).
fn platform_url(config: &Config) -> String {
    config.platform_api_url.clone().unwrap_or_else(|| {
        if config.run_adapter == crate::config::RunAdapterKind::Docker {
            format!("http://host.docker.internal:{}", config.port)
        } else {
            format!("http://127.0.0.1:{}", config.port)
        }
    })
}

fn workload_spec(
    state: &AppState,
    run: &RunRow,
    ctx: &LaunchContext,
) -> Result<WorkloadSpec, String> {
    let config = &state.config;
    let llm = &ctx.model;
    let secret = state
        .keyring
        .decrypt(&run.sink_secret_encrypted)
        .map_err(|e| format!("sink secret: {e}"))?;
    let secret = String::from_utf8(secret).map_err(|_| "sink secret is not UTF-8")?;
    let platform = platform_url(config);
    let base = format!("{platform}/api/runs/{}", run.id);
    let (api, provider) = match llm.api {
        LlmApi::OpenAiCompletions => ("openai-completions", "openai"),
        LlmApi::AnthropicMessages => ("anthropic-messages", "anthropic"),
    };
    let run_token = format!("sct_{}", crate::crypto::random_hex(32));
    let agent_integrations: Vec<Value> = ctx
        .integrations
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "authKey": i.auth_key,
                "description": i.description.clone().or_else(|| i.display_name.clone()).unwrap_or_default(),
                "authorizedUris": i.authorized_uris,
            })
        })
        .collect();
    let mut env = vec![
        ("AGENT_RUN_ID", run.id.clone()),
        ("APPSTRATE_SINK_URL", format!("{base}/events")),
        (
            "APPSTRATE_SINK_FINALIZE_URL",
            format!("{base}/events/finalize"),
        ),
        ("APPSTRATE_WORKSPACE_URL", format!("{base}/workspace")),
        ("APPSTRATE_SINK_SECRET", secret),
        ("AGENT_INPUT", run.input.0.to_string()),
        ("AGENT_TIMEOUT_SECONDS", run.timeout_seconds.to_string()),
        ("MODEL_API", api.to_string()),
        ("MODEL_ID", llm.model_id.clone()),
        // The run's sidecar token: the runner presents it on every sidecar call (its model SDK sends
        // it as the model key), and the sidecar refuses any caller without it.
        ("MODEL_API_KEY", run_token.clone()),
        (
            "RUN_HEARTBEAT_INTERVAL_SECONDS",
            config.run_heartbeat_interval_seconds.to_string(),
        ),
    ];
    if let Some(traceparent) = crate::telemetry::traceparent(&tracing::Span::current()) {
        env.push(("TRACEPARENT", traceparent));
    }
    if !agent_integrations.is_empty() {
        env.push((
            "AGENT_INTEGRATIONS",
            Value::Array(agent_integrations).to_string(),
        ));
    }
    if !ctx.mcp_servers.is_empty() {
        // Names and descriptions only: the servers and their credentials live in the sidecar.
        let servers: Vec<Value> = ctx
            .mcp_servers
            .iter()
            .map(|s| json!({"name": s.name, "id": s.id, "description": s.description}))
            .collect();
        env.push(("AGENT_MCP_SERVERS", Value::Array(servers).to_string()));
    }
    // OAuth connections: where the sidecar asks for a fresh token after a 401 (bound to this run).
    let to_config = |i: &crate::packages::RunIntegration| {
        let refresh = i
            .oauth_connection_id
            .as_ref()
            .map(|cid| sidecar::config::RefreshConfig {
                url: format!("{platform}/internal/oauth-token/{cid}/refresh"),
                token: sidecar::config::Secret::new(crate::integrations::refresh::sidecar_token(
                    state, &run.id, cid,
                )),
            });
        i.to_config(refresh)
    };
    let mut sidecar_integrations: Vec<_> = ctx.integrations.iter().map(to_config).collect();
    for s in &ctx.mcp_servers {
        if let Some(i) = &s.integration {
            if !sidecar_integrations
                .iter()
                .any(|c| c.id == i.id && c.auth_key == i.auth_key)
            {
                sidecar_integrations.push(to_config(i));
            }
        }
    }
    let sidecar = sidecar::config::SidecarConfig {
        run_id: run.id.clone(),
        run_token: sidecar::config::Secret::new(run_token),
        platform_url: platform,
        llm: sidecar::config::LlmConfig {
            provider: match llm.api {
                LlmApi::OpenAiCompletions => sidecar::config::LlmProvider::Openai,
                LlmApi::AnthropicMessages => sidecar::config::LlmProvider::Anthropic,
            },
            base_url: llm.base_url.clone(),
            api_key: sidecar::config::Secret::new(llm.api_key.expose().clone()),
        },
        integrations: sidecar_integrations,
        allow_internal_hosts: config.egress_allow_internal_hosts.clone(),
        agent: None,
        mcp_servers: ctx.mcp_servers.iter().map(|s| s.config.clone()).collect(),
        workspace_dir: None,
    };
    Ok(WorkloadSpec {
        run_id: run.id.clone(),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        llm_provider: provider,
        sidecar,
        memory_mb: ctx.memory_mb,
        cpus: ctx.cpus,
        mcp_files: ctx
            .mcp_servers
            .iter()
            .filter_map(|s| {
                Some(crate::infra::run_adapter::McpFiles {
                    name: s.name.clone(),
                    archive: s.archive.clone()?,
                    entry_point: s.entry_point.clone(),
                })
            })
            .collect(),
    })
}

/// Starts the run's workload in the background and supervises it until it exits.
pub fn launch(state: AppState, run: RunRow, ctx: LaunchContext) {
    let (stop_tx, mut stop_rx) = watch::channel(None);
    let (done_tx, done_rx) = watch::channel(false);
    state
        .runs
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            run.id.clone(),
            ActiveRun {
                stop: stop_tx,
                done: done_rx,
            },
        );
    // The run's span, a child of the request that created it: the runner's sink calls and the
    // sidecar's upstream calls join its trace through `TRACEPARENT`. Only built when exporting.
    let span = if crate::telemetry::exporting() {
        tracing::info_span!("run", otel.name = "run", run.id = %run.id, run.kind = %run.kind)
    } else {
        tracing::Span::none()
    };
    let task = async move {
        supervise(&state, &run, ctx, &mut stop_rx).await;
        state
            .runs
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run.id);
        let _ = done_tx.send(true);
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
}

async fn supervise(
    state: &AppState,
    run: &RunRow,
    ctx: LaunchContext,
    stop_rx: &mut watch::Receiver<Option<StopRequest>>,
) {
    let spec = match workload_spec(state, run, &ctx) {
        Ok(s) => s,
        Err(reason) => {
            let _ = finalize_run(
                state,
                &run.id,
                Outcome::synthetic("failed", format!("Failed to start run: {reason}")),
            )
            .await;
            return;
        }
    };
    super::create::breadcrumb(state, run, "workload starting").await;
    let mut workload = match state.runs.adapter.start(spec).await {
        Ok(w) => w,
        Err(reason) => {
            tracing::warn!(run_id = %run.id, %reason, "workload failed to start");
            let _ = finalize_run(
                state,
                &run.id,
                Outcome::synthetic("failed", format!("Failed to start run: {reason}")),
            )
            .await;
            return;
        }
    };
    if let Ok(true) = state.infra.db.mark_running(&run.id, now()).await {
        if let Ok(Some(fresh)) = state.infra.db.get_run(&run.id).await {
            super::publish_update(state, &fresh).await;
            state.metrics.runs_active_delta(1);
            crate::webhooks::emit(state, &fresh, "run.started").await;
        }
    }

    let config = &state.config;
    let safety_net =
        Duration::from_secs(run.timeout_seconds as u64 + config.run_timeout_grace_seconds);
    let deadline = tokio::time::sleep(safety_net);
    tokio::pin!(deadline);
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(config.run_heartbeat_interval_seconds));
    heartbeat.tick().await;
    let mut stop: Option<StopRequest> = None;
    let code = loop {
        tokio::select! {
            code = workload.wait() => break code,
            changed = stop_rx.changed(), if stop.is_none() => {
                if changed.is_ok() {
                    stop = stop_rx.borrow().clone();
                    workload.stop();
                }
            }
            _ = &mut deadline, if stop.is_none() => {
                stop = Some(StopRequest::Finalize(Box::new(Outcome::synthetic(
                    "timeout",
                    format!("Run timed out after {}s", run.timeout_seconds),
                ))));
                workload.stop();
            }
            _ = heartbeat.tick() => {
                // Until the runner's first event, this instance vouches for the run's liveness.
                if let Ok(Some(r)) = state.infra.db.get_run(&run.id).await {
                    if r.first_event_at.is_none() && !r.is_terminal() {
                        let _ = state.infra.db.heartbeat(&run.id, now()).await;
                    }
                }
            }
        }
    };
    // `wait` returned once stdout and stderr were read to the end, so the tail is complete.
    let tail = workload.tail();
    let last: Vec<String> = tail[tail.len().saturating_sub(50)..].to_vec();
    if code != 0 {
        tracing::warn!(run_id = %run.id, code, output = ?last, "runner exited with a non-zero code");
    }
    workload.teardown().await;
    if code != 0 && stop.is_none() && !last.is_empty() {
        // The reason of a crash is usually in its last lines: keep them with the run.
        let log = crate::infra::database::runs::NewLog {
            log_type: "system".into(),
            level: "error".into(),
            event: "runner_output".into(),
            message: format!(
                "Last output of the agent {} (exit code {code}): {}",
                state.runs.adapter.workload_noun(),
                last.last().map(String::as_str).unwrap_or("")
            ),
            data: Some(json!({"exitCode": code, "lines": last})),
        };
        match state.infra.db.insert_log(&run.id, &log, now()).await {
            Ok(row) => super::publish(state, "run_log", run, super::run_log(&row)).await,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not keep the runner's output")
            }
        }
    }
    let outcome = match stop {
        Some(StopRequest::External) => None,
        Some(StopRequest::Finalize(o)) => Some(*o),
        None if code == 0 => Some(Outcome::synthetic(
            "failed",
            "Runner exited without reporting a result",
        )),
        None => Some(Outcome::synthetic(
            "failed",
            format!(
                "Agent {} exited with code {code}",
                state.runs.adapter.workload_noun()
            ),
        )),
    };
    if let Some(o) = outcome {
        // Loses silently when the runner already finalized.
        let _ = finalize_run(state, &run.id, o).await;
    }
}

/// The single terminal writer (§11.2). Returns true for the one caller that won; only the winner
/// publishes `run_update`, writes the breadcrumb and updates metrics.
pub async fn finalize_run(
    state: &AppState,
    run_id: &str,
    outcome: Outcome,
) -> anyhow::Result<bool> {
    let Some(run) = state.infra.db.get_run(run_id).await? else {
        return Ok(false);
    };
    if run.sink_closed_at.is_some() {
        return Ok(false);
    }
    // Drain buffered events in order, accepting gaps, before the verdict.
    super::events::drain_on_finalize(state, &run).await;
    let run = state.infra.db.get_run(run_id).await?.unwrap_or(run);
    let usage = match &outcome.usage {
        Some(u) => verdict::max_usage(&run.token_usage.0, u),
        None => verdict::normalize_usage(Some(&run.token_usage.0)),
    };
    let mut outcome = outcome;
    if outcome.output.is_none() {
        outcome.output = run.last_output.as_ref().map(|j| j.0.clone());
    }
    let (status, error, result) =
        verdict::verdict(&outcome, run.output_schema.as_ref().map(|j| &j.0), &usage);
    // The calls the last metric did not report, as one ledger row priced now.
    let rest = crate::models::usage::call_entry(state, &run, &usage).await;
    let (cost, pricing) = crate::models::usage::run_cost(&run, rest.as_ref());
    let completed = now();
    let duration = outcome.duration_ms.or_else(|| {
        run.started_at
            .map(|s| (completed - s).num_milliseconds().max(0))
    });
    let won = state
        .infra
        .db
        .finalize_run(
            run_id,
            &Finalization {
                status: status.clone(),
                result,
                error,
                completed_at: completed,
                duration_ms: duration,
                token_usage: usage.clone(),
                cost,
                cost_pricing_status: pricing.to_string(),
            },
        )
        .await?;
    if !won {
        return Ok(false);
    }
    if let Some(rest) = &rest {
        if let Err(e) = state.infra.db.insert_usage(rest).await {
            tracing::warn!(run_id, error = %e, "could not record the run's last model usage");
        }
    }
    super::events::forget_buffers(state, run_id).await;
    if let Some(fresh) = state.infra.db.get_run(run_id).await? {
        super::create::breadcrumb(state, &fresh, "run completed").await;
        super::publish_update(state, &fresh).await;
        state.metrics.run_finished(&fresh, run.started_at.is_some());
        crate::webhooks::emit(state, &fresh, &format!("run.{}", fresh.status)).await;
    }
    Ok(true)
}

/// Stops a run wherever its workload lives and finalizes it with `outcome` (cancel, watchdog, shutdown).
/// Waits at most 10 s for a local workload to exit.
pub async fn stop_run(state: &AppState, run_id: &str, outcome: Outcome) -> anyhow::Result<bool> {
    let local = state.runs.request_stop(run_id, StopRequest::External);
    if let Err(e) = state
        .infra
        .pubsub
        .publish(&Channel::run_cancel(), run_id.to_string())
        .await
    {
        tracing::warn!(run_id, error = %e, "could not publish a cancellation");
    }
    if let Some(mut done) = local {
        let _ = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
    }
    finalize_run(state, run_id, outcome).await
}

/// Stops the local workloads of runs cancelled on any instance (`appstrate:runs:cancel`). After a lag
/// (or a pub/sub outage) the cancellations it may have missed are recovered from the database: every run
/// held here that is already terminal there is stopped.
async fn cancel_listener(state: AppState) {
    let mut stream = loop {
        match state.infra.pubsub.subscribe(&Channel::run_cancel()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to run cancellations; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // Ends only when the adapter is gone.
    while let Some(delivery) = stream.next().await {
        match delivery {
            Delivery::Message(run_id) => {
                state.runs.request_stop(&run_id, StopRequest::External);
            }
            Delivery::Lagged => {
                tracing::warn!("run cancellations lagged; re-reading the runs held here");
                let s = state.clone();
                tokio::spawn(async move {
                    stop_runs_finalized_elsewhere(&s).await;
                    // A cancelling instance publishes before it finalizes: look again once its write
                    // has landed.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    stop_runs_finalized_elsewhere(&s).await;
                });
            }
        }
    }
}

/// Stops every workload held here whose run the database says is terminal (finalized by another
/// instance: a cancel whose message was missed).
pub async fn stop_runs_finalized_elsewhere(state: &AppState) {
    let ids: Vec<String> = state
        .runs
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    for id in ids {
        match state.infra.db.get_run(&id).await {
            Ok(Some(run)) if run.is_terminal() => {
                state.runs.request_stop(&id, StopRequest::External);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(run_id = %id, error = %e, "could not re-read a run"),
        }
    }
}

/// Background work of the run side: cross-instance cancellation and the watchdog.
pub async fn start_workers(state: &AppState) {
    let s = state.clone();
    tokio::spawn(cancel_listener(s));
    let s = state.clone();
    tokio::spawn(async move {
        let base = s.config.run_watchdog_interval_seconds as f64;
        loop {
            let jitter = rand::thread_rng().gen_range(0.85..1.15);
            tokio::time::sleep(Duration::from_secs_f64(base * jitter)).await;
            if s.is_shutting_down() {
                break;
            }
            watchdog_sweep(&s).await;
        }
    });
}

/// One watchdog pass (§11.4) over every open run.
pub async fn watchdog_sweep(state: &AppState) {
    let runs = match state.infra.db.open_runs().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "watchdog could not list open runs");
            return;
        }
    };
    let at = now();
    let stall = chrono::Duration::seconds(state.config.run_stall_threshold_seconds as i64);
    for run in runs {
        let outcome =
            if run.first_event_at.is_none() && run.boot_deadline_at.is_some_and(|d| at > d) {
                Some(Outcome::synthetic("failed", "Run never started executing"))
            } else {
                run.last_heartbeat_at
                    .filter(|hb| at - *hb > stall)
                    .map(|hb| {
                        Outcome::synthetic(
                            "failed",
                            format!(
                                "Runner stopped reporting — no heartbeat for {}s",
                                (at - hb).num_seconds()
                            ),
                        )
                    })
            };
        if let Some(o) = outcome {
            tracing::warn!(run_id = %run.id, reason = ?o.error, "watchdog stopping run");
            let s = state.clone();
            tokio::spawn(async move {
                let _ = stop_run(&s, &run.id, o).await;
            });
        }
    }
}

/// Boot step 6: runs left open by a previous process are failed, and its leftovers removed.
pub async fn cleanup_orphans(state: &AppState) {
    state.runs.adapter.cleanup_orphans().await;
    let runs = match state.infra.db.open_runs().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "orphan cleanup could not list open runs");
            return;
        }
    };
    let stall = chrono::Duration::seconds(state.config.run_stall_threshold_seconds as i64);
    let shared = state.config.redis_url.is_some();
    let mut n = 0;
    for run in runs {
        // With Redis, siblings may own fresh runs: only stale ones are orphans.
        if shared && run.last_heartbeat_at.is_some_and(|hb| now() - hb <= stall) {
            continue;
        }
        if let Ok(true) = finalize_run(
            state,
            &run.id,
            Outcome::synthetic("failed", "Server restarted while run was in progress"),
        )
        .await
        {
            n += 1;
        }
    }
    if n > 0 {
        tracing::warn!(
            runs = n,
            "failed runs left in progress by a previous server process"
        );
    }
}

/// Shutdown step 3: active runs get the grace period, then are stopped and failed.
pub async fn shutdown(state: &AppState, grace: Duration) {
    // SSE streams and long-polls end now (§5.3 step 1), so they never hold the server open.
    state.runs.shutting_down.send_replace(true);
    let deadline = tokio::time::Instant::now() + grace;
    while state.runs.active_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = state
        .runs
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    let stops = ids.into_iter().map(|id| {
        let s = state.clone();
        async move {
            let _ = stop_run(
                &s,
                &id,
                Outcome::synthetic("failed", "Server shut down while run was in progress"),
            )
            .await;
        }
    });
    futures::future::join_all(stops).await;
}

#[cfg(test)]
mod tests {
    use super::agent_resources;
    use serde_json::json;

    #[test]
    fn agent_resources_default_and_clamp() {
        assert_eq!(agent_resources(&json!({}), 1536, 2), (1536, 2.0));
        let small = json!({"_meta": {"dev.appstrate/resources": {"memory_mb": 256, "cpu": 0.5}}});
        assert_eq!(agent_resources(&small, 1536, 2), (256, 0.5));
        let big = json!({"_meta": {"dev.appstrate/resources": {"memory_mb": 9000, "cpu": 8}}});
        assert_eq!(agent_resources(&big, 1536, 2), (1536, 2.0));
        assert_eq!(agent_resources(&json!({}), 512, 1), (512, 1.0));
    }

    /// Run slots are created with the limits of a run that names none; a run with those limits takes
    /// a slot, any other the fresh path.
    #[test]
    fn run_slots_have_the_default_limits() {
        use crate::infra::run_adapter::docker::default_agent_limits;
        for (mem, cpu) in [(1536, 2), (512, 1), (4096, 8), (1024, 4)] {
            assert_eq!(
                agent_resources(&json!({}), mem, cpu),
                default_agent_limits(mem, cpu)
            );
        }
    }
}
