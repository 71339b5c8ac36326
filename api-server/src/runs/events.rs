//! Event-sink state and handling (§12.2–12.4): replay memory, the per-run gap buffer and the ordered,
//! compare-and-set persistence of events. The memory lives behind
//! [`SinkMemory`](crate::infra::sink_memory::SinkMemory): in process, or in Redis with `REDIS_URL` so
//! that every instance shares it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::sink::{classify, EventKind, RunEvent};
use super::verdict;
use crate::domain::{DomainError, ErrorKind};
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

/// 503 `sink_unavailable`: the sink memory (Redis at Tier 2) cannot be reached; the runner retries.
pub fn unavailable(e: anyhow::Error) -> DomainError {
    tracing::warn!(error = %e, "the event sink memory is unavailable");
    DomainError::unavailable(
        "sink_unavailable",
        "The event sink is temporarily unavailable; retry the request",
    )
    .with_retry_after(1)
}

/// The decrypted secret of one run.
pub struct RunSink {
    pub secret: String,
}

/// Run secrets, decrypted once per instance.
#[derive(Default)]
pub struct SinkState {
    runs: Mutex<HashMap<String, Arc<RunSink>>>,
}

impl SinkState {
    /// The sink of `run`, created with its decrypted secret on first use.
    pub fn get(&self, state: &AppState, run: &RunRow) -> Result<Arc<RunSink>, DomainError> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = runs.get(&run.id) {
            return Ok(s.clone());
        }
        let secret = state
            .keyring
            .decrypt(&run.sink_secret_encrypted)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| DomainError::internal("run sink secret cannot be decrypted"))?;
        let sink = Arc::new(RunSink { secret });
        if runs.len() >= 10_000 {
            runs.clear();
        }
        runs.insert(run.id.clone(), sink.clone());
        Ok(sink)
    }
}

fn replay_window(state: &AppState) -> Duration {
    Duration::from_secs(state.config.run_event_replay_window_seconds)
}

/// Whether `webhook_id` of `run_id` was already accepted within the replay window.
pub async fn seen(state: &AppState, run_id: &str, webhook_id: &str) -> Result<bool, DomainError> {
    state
        .infra
        .sink_memory
        .seen(run_id, webhook_id)
        .await
        .map_err(unavailable)
}

/// Remembers `webhook_id` of `run_id` for the replay window.
pub async fn remember(state: &AppState, run_id: &str, webhook_id: &str) -> Result<(), DomainError> {
    state
        .infra
        .sink_memory
        .remember(run_id, webhook_id, replay_window(state))
        .await
        .map_err(unavailable)
}

/// Applies one in-order event: its log row, usage and output in one compare-and-set transaction, then
/// publishes what subscribers see.
async fn apply(
    state: &AppState,
    run: &RunRow,
    event: &RunEvent,
    allow_gap: bool,
) -> Result<Option<Accepted>, DomainError> {
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
            // One model call: its ledger row is written with the event, priced now.
            let call = crate::models::usage::call_entry(state, run, &usage).await;
            let (cost, status) = crate::models::usage::run_cost(run, call.as_ref());
            effects.token_usage = Some(usage.clone());
            effects.cost = Some(cost);
            effects.usage = call;
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
/// late or already seen. Runs under the run's sink lock, so two instances never persist concurrently.
pub async fn accept(
    state: &AppState,
    run: &RunRow,
    webhook_id: &str,
    event: RunEvent,
) -> Result<Accepted, DomainError> {
    let memory = &state.infra.sink_memory;
    let lock = memory.lock(&run.id).await.map_err(unavailable)?;
    let outcome = accept_locked(state, run, webhook_id, event).await;
    lock.release().await;
    outcome
}

async fn accept_locked(
    state: &AppState,
    run: &RunRow,
    webhook_id: &str,
    event: RunEvent,
) -> Result<Accepted, DomainError> {
    let memory = &state.infra.sink_memory;
    if seen(state, &run.id, webhook_id).await? {
        return Ok(Accepted::Replay);
    }
    // The stored sequence is authoritative (another instance may have written it).
    let mut current = state
        .infra
        .db
        .get_run(&run.id)
        .await?
        .ok_or_else(|| DomainError::not_found("Run not found"))?;
    let outcome = if event.sequence <= current.last_event_sequence {
        Accepted::Replay
    } else if event.sequence > current.last_event_sequence + 1 {
        let body = serde_json::to_string(&event).map_err(DomainError::internal)?;
        if !memory
            .buffer(&run.id, event.sequence, &body, MAX_BUFFERED)
            .await
            .map_err(unavailable)?
        {
            return Err(DomainError::new(
                ErrorKind::RateLimited,
                "event_buffer_full",
                "Too many out-of-order events are buffered for this run",
            ));
        }
        Accepted::Buffered
    } else {
        let outcome = apply(state, &current, &event, false)
            .await?
            .unwrap_or(Accepted::Replay);
        // Drain buffered successors.
        let mut last = current.last_event_sequence.max(event.sequence);
        loop {
            let next = last + 1;
            let Some(body) = memory.take(&run.id, next).await.map_err(unavailable)? else {
                break;
            };
            let Ok(ev) = serde_json::from_str::<RunEvent>(&body) else {
                tracing::warn!(run_id = %run.id, sequence = next, "dropped an unreadable buffered event");
                break;
            };
            if let Some(fresh) = state.infra.db.get_run(&run.id).await? {
                current = fresh;
            }
            match apply(state, &current, &ev, false).await {
                Ok(Some(_)) => last = next,
                Ok(None) => break,
                Err(e) => {
                    // Keep it for the next event or finalize.
                    let _ = memory.buffer(&run.id, next, &body, MAX_BUFFERED + 1).await;
                    return Err(e);
                }
            }
        }
        outcome
    };
    remember(state, &run.id, webhook_id).await?;
    Ok(outcome)
}

/// At finalize, buffered events are persisted in sequence order, accepting gaps (§12.4).
pub async fn drain_on_finalize(state: &AppState, run: &RunRow) {
    let memory = &state.infra.sink_memory;
    let lock = match memory.lock(&run.id).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "finalizing without the run's event lock");
            None
        }
    };
    let events = match memory.take_all(&run.id).await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "buffered events could not be read at finalize");
            Vec::new()
        }
    };
    for body in events {
        let Ok(ev) = serde_json::from_str::<RunEvent>(&body) else {
            continue;
        };
        let current = match state.infra.db.get_run(&run.id).await {
            Ok(Some(r)) => r,
            _ => break,
        };
        if let Err(e) = apply(state, &current, &ev, true).await {
            tracing::warn!(run_id = %run.id, error = ?e.detail, "could not persist a buffered event at finalize");
        }
    }
    if let Some(lock) = lock {
        lock.release().await;
    }
}

/// Drops whatever was buffered after finalize (events that raced the verdict); the replay memory stays
/// for the replay window.
pub async fn forget_buffers(state: &AppState, run_id: &str) {
    if let Err(e) = state.infra.sink_memory.take_all(run_id).await {
        tracing::debug!(run_id, error = %e, "buffered events of a finished run were not cleared");
    }
}

/// The sink's answer body.
pub fn reply(outcome: Accepted, sequence: i64) -> Value {
    json!({"ok": true, "outcome": outcome.as_str(), "sequence": sequence})
}
