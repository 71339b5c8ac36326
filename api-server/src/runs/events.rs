//! Event-sink state and handling (§12.2–12.4): replay memory, the per-run gap buffer and the ordered,
//! compare-and-set persistence of events. In memory per instance (Redis-backed with `REDIS_URL`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sink::{classify, EventKind, RunEvent};
use super::verdict;
use crate::http::error::ApiError;
use crate::infra::database::now;
use crate::infra::database::runs::{EventEffects, NewLog, RunRow};
use crate::state::AppState;

pub const MAX_BUFFERED: usize = 1000;

/// What happened to an event (§12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Persisted,
    Buffered,
    Replay,
    Ignored,
}

impl Accepted {
    pub fn as_str(self) -> &'static str {
        match self {
            Accepted::Persisted => "persisted",
            Accepted::Buffered => "buffered",
            Accepted::Replay => "replay",
            Accepted::Ignored => "ignored",
        }
    }
}

#[derive(Default)]
struct Inner {
    /// `webhook-id`s seen, with when.
    seen: HashMap<String, Instant>,
    buffer: BTreeMap<i64, RunEvent>,
}

/// Sink memory of one run. The async mutex serialises its events.
pub struct RunSink {
    pub secret: String,
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Default)]
pub struct SinkState {
    runs: Mutex<HashMap<String, Arc<RunSink>>>,
}

impl SinkState {
    /// The sink memory of `run`, created with its decrypted secret on first use.
    pub fn get(&self, state: &AppState, run: &RunRow) -> Result<Arc<RunSink>, ApiError> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = runs.get(&run.id) {
            return Ok(s.clone());
        }
        let secret = state
            .keyring
            .decrypt(&run.sink_secret_encrypted)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::internal("run sink secret cannot be decrypted"))?;
        let sink = Arc::new(RunSink {
            secret,
            inner: tokio::sync::Mutex::new(Inner::default()),
        });
        runs.insert(run.id.clone(), sink.clone());
        Ok(sink)
    }

    /// Drops buffered events after finalize; the replay memory stays for the replay window.
    pub fn forget_buffers(&self, run_id: &str) {
        let sink = self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .cloned();
        if let Some(s) = sink {
            if let Ok(mut inner) = s.inner.try_lock() {
                inner.buffer.clear();
            }
        }
    }

    /// Forgets runs whose memory is older than the replay window.
    pub fn prune(&self, window: Duration, closed: impl Fn(&str) -> bool) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.retain(|id, sink| {
            let Ok(inner) = sink.inner.try_lock() else {
                return true;
            };
            let recent = inner.seen.values().any(|t| t.elapsed() < window);
            recent || !closed(id)
        });
    }
}

impl RunSink {
    /// Whether `webhook_id` was already accepted within the window.
    pub async fn seen(&self, webhook_id: &str, window: Duration) -> bool {
        let inner = self.inner.lock().await;
        inner
            .seen
            .get(webhook_id)
            .is_some_and(|t| t.elapsed() < window)
    }

    pub async fn remember(&self, webhook_id: &str) {
        let mut inner = self.inner.lock().await;
        inner.seen.insert(webhook_id.to_string(), Instant::now());
    }
}

/// Applies one in-order event: its log row, usage and output in one compare-and-set transaction, then
/// publishes what subscribers see.
async fn apply(
    state: &AppState,
    run: &RunRow,
    event: &RunEvent,
    allow_gap: bool,
) -> Result<Option<Accepted>, ApiError> {
    let mut effects = EventEffects::default();
    let mut metric = None;
    let kind = classify(event);
    let accepted = match &kind {
        EventKind::Log(spec) => {
            effects.log = Some(spec.clone().into());
            Accepted::Persisted
        }
        EventKind::Output(data) => {
            effects.output = Some(data.clone());
            effects.log = Some(NewLog {
                log_type: "result".into(),
                level: "info".into(),
                event: "output".into(),
                message: "Output emitted".into(),
                data: Some(data.clone()),
            });
            Accepted::Persisted
        }
        EventKind::Metric(usage) => {
            let usage = verdict::max_usage(&run.token_usage.0, usage);
            let (cost, status) = verdict::cost(&usage, state.config.llm_pricing.as_ref());
            effects.token_usage = Some(usage.clone());
            effects.cost = Some(cost);
            metric = Some(
                json!({"runId": run.id, "tokenUsage": usage, "costSoFar": cost, "costPricingStatus": status}),
            );
            Accepted::Persisted
        }
        EventKind::Ignored => Accepted::Ignored,
    };
    let (won, log) = state
        .infra
        .db
        .persist_event(&run.id, event.sequence, allow_gap, &effects, now())
        .await?;
    if !won {
        return Ok(None);
    }
    if let Some(log) = log {
        super::publish(state, "run_log", run, super::run_log(&log)).await;
    }
    if let Some(m) = metric {
        super::publish(state, "run_metric", run, m).await;
    }
    Ok(Some(accepted))
}

/// Accepts event `event` for `run` (§12.3): persisted when it is next, buffered when early, replay when
/// late or already seen.
pub async fn accept(
    state: &AppState,
    run: &RunRow,
    sink: &RunSink,
    webhook_id: &str,
    event: RunEvent,
) -> Result<Accepted, ApiError> {
    let window = Duration::from_secs(state.config.run_event_replay_window_seconds);
    let mut inner = sink.inner.lock().await;
    if inner
        .seen
        .get(webhook_id)
        .is_some_and(|t| t.elapsed() < window)
    {
        return Ok(Accepted::Replay);
    }
    // The stored sequence is authoritative (another instance may have written it).
    let mut current = state
        .infra
        .db
        .get_run(&run.id)
        .await?
        .ok_or_else(|| ApiError::not_found("Run not found"))?;
    let outcome = if event.sequence <= current.last_event_sequence {
        Accepted::Replay
    } else if event.sequence > current.last_event_sequence + 1 {
        if inner.buffer.len() >= MAX_BUFFERED && !inner.buffer.contains_key(&event.sequence) {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "event_buffer_full",
                "Too many out-of-order events are buffered for this run",
            ));
        }
        inner.buffer.insert(event.sequence, event);
        Accepted::Buffered
    } else {
        let outcome = apply(state, &current, &event, false)
            .await?
            .unwrap_or(Accepted::Replay);
        // Drain buffered successors.
        loop {
            let next = current.last_event_sequence.max(event.sequence) + 1;
            let Some(ev) = inner.buffer.remove(&next) else {
                break;
            };
            if let Some(fresh) = state.infra.db.get_run(&run.id).await? {
                current = fresh;
            }
            if apply(state, &current, &ev, false).await?.is_none() {
                break;
            }
            current.last_event_sequence = next;
        }
        outcome
    };
    inner.seen.insert(webhook_id.to_string(), Instant::now());
    Ok(outcome)
}

/// At finalize, buffered events are persisted in sequence order, accepting gaps (§12.4).
pub async fn drain_on_finalize(state: &AppState, run: &RunRow) {
    let sink = match state.runs.sink.get(state, run) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut inner = sink.inner.lock().await;
    let events: Vec<RunEvent> = std::mem::take(&mut inner.buffer).into_values().collect();
    for ev in events {
        let current = match state.infra.db.get_run(&run.id).await {
            Ok(Some(r)) => r,
            _ => return,
        };
        if let Err(e) = apply(state, &current, &ev, true).await {
            tracing::warn!(run_id = %run.id, error = ?e.detail, "could not persist a buffered event at finalize");
        }
    }
}

/// The sink's answer body.
pub fn reply(outcome: Accepted, sequence: i64) -> Value {
    json!({"ok": true, "outcome": outcome.as_str(), "sequence": sequence})
}
