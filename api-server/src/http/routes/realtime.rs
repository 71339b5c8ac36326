//! Server-sent events (§11.8): one run, or every run of the application, fed by the pub/sub adapter so
//! events from every instance arrive. A stream follows its organization's events channel; when it lags
//! (or the pub/sub backend was unreachable) it re-reads the runs it follows from the database and sends
//! their current `run_update`, so a terminal update is never missed. At most
//! [`MAX_STREAMS_PER_IDENTITY`] streams are open at once per identity (429 `too_many_streams` beyond).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::header::RETRY_AFTER;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::{BoxStream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::infra::database::runs::{RunFilter, RunRow};
use crate::infra::database::{now, Page, Timestamp};
use crate::infra::pubsub::{Channel, Delivery};
use crate::runs::runtime::{Slot, MAX_STREAMS_PER_IDENTITY};
use crate::state::AppState;

const IDLE_PING: Duration = Duration::from_secs(30);
const MAX_QUEUED: usize = 2000;

fn param(q: &Option<String>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Frames queued for one subscriber; more than 2000 queued and it is dropped.
struct Out {
    tx: mpsc::Sender<Event>,
    stream_id: String,
    n: u64,
}

impl Out {
    /// False when the subscriber is gone or too far behind.
    fn send(&mut self, name: &str, data: &str) -> bool {
        self.n += 1;
        let ev = Event::default()
            .event(name)
            .data(data)
            .id(format!("{}:{}", self.stream_id, self.n));
        self.tx.try_send(ev).is_ok()
    }
}

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(stream).into_response()
}

/// The `data` to send for a pub/sub frame, or `None` when this subscriber does not want it.
fn filtered(frame: &Value, verbose: bool) -> Option<(String, String)> {
    let event = frame["event"].as_str()?.to_string();
    let mut data = frame["data"].clone();
    if event == "run_log" && !verbose {
        if let Some(o) = data.as_object_mut() {
            o.remove("data");
        }
    }
    Some((event, data.to_string()))
}

async fn subscribe(
    state: &AppState,
    org_id: &str,
) -> Result<BoxStream<'static, Delivery>, ApiError> {
    state
        .infra
        .pubsub
        .subscribe(&Channel::run_events(org_id))
        .await
        .map_err(ApiError::internal)
}

/// Seconds a refused stream is told to wait before retrying.
const STREAM_RETRY_AFTER: u64 = 5;

/// One of the caller's SSE stream slots (per credential, and per end-user when impersonating), or 429
/// `too_many_streams` with `Retry-After` and the rate-limit headers.
fn stream_slot(state: &AppState, auth: &Auth) -> Result<Slot, ApiError> {
    let identity = match &auth.end_user {
        Some(eu) => format!("{}:{}", auth.identity(), eu.id),
        None => auth.identity(),
    };
    state.runs.enter_stream(&identity).ok_or_else(|| {
        let limit = MAX_STREAMS_PER_IDENTITY;
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "At most {limit} event streams may be open at once per credential; close one and retry"
            ),
        )
        .with_header(RETRY_AFTER, &STREAM_RETRY_AFTER.to_string())
        .with_header(
            "ratelimit".parse().expect("static header"),
            &format!("limit={limit}, remaining=0, reset={STREAM_RETRY_AFTER}"),
        )
        .with_header(
            "ratelimit-policy".parse().expect("static header"),
            &limit.to_string(),
        );
        err.retry_after = Some(STREAM_RETRY_AFTER);
        err
    })
}

/// The application's runs that may have changed since `since` (open, or finished since then), newest
/// first, for a stream that lagged.
async fn changed_runs(
    state: &AppState,
    app_id: &str,
    filter: &RunFilter,
    since: Timestamp,
) -> Vec<RunRow> {
    let page = Page {
        limit: 100,
        starting_after: None,
    };
    match state.infra.db.list_runs(app_id, filter, &page).await {
        Ok(p) => p
            .items
            .into_iter()
            .filter(|r| {
                !r.is_terminal()
                    || r.completed_at.is_none_or(|c| c >= since)
                    || r.created_at >= since
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not re-read runs for a lagging stream");
            Vec::new()
        }
    }
}

/// `GET /api/realtime/runs/{id}`
#[utoipa::path(get, path = "/api/realtime/runs/{id}", tag = "realtime",
    params(("token" = Option<String>, Query), ("verbose" = Option<bool>, Query), ("appId" = Option<String>, Query)),
    responses((status = 200, description = "text/event-stream"), (status = 401), (status = 403), (status = 404)))]
pub async fn run_stream(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let verbose = param(&q, "verbose").is_some_and(|v| v == "true" || v == "1");
    let run = super::runs::visible_run(&state, &auth, &id).await?;
    let slot = stream_slot(&state, &auth)?;
    // Subscribe before the snapshot so nothing falls between them.
    let mut frames = subscribe(&state, &run.org_id).await?;
    let run = state.infra.db.get_run(&id).await?.unwrap_or(run);
    let (tx, rx) = mpsc::channel(MAX_QUEUED);
    let mut out = Out {
        tx,
        stream_id: uuid::Uuid::new_v4().simple().to_string(),
        n: 0,
    };
    out.send("ping", "");
    out.send("run_update", &crate::runs::run_update(&run).to_string());
    let terminal = run.is_terminal();
    let shutdown = state.runs.shutdown_signal();
    tokio::spawn(async move {
        let _slot = slot;
        tokio::pin!(shutdown);
        if terminal {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        loop {
            let next = tokio::time::timeout(IDLE_PING, frames.next());
            tokio::select! {
                f = next => match f {
                    Err(_) => {
                        if !out.send("ping", "") { return; }
                    }
                    Ok(None) => return,
                    Ok(Some(Delivery::Lagged)) => {
                        // Frames were missed: send the run as the database has it now.
                        let Ok(Some(run)) = state.infra.db.get_run(&id).await else { continue };
                        let data = crate::runs::run_update(&run).to_string();
                        if !out.send("run_update", &data) { return; }
                        if run.is_terminal() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            return;
                        }
                    }
                    Ok(Some(Delivery::Message(raw))) => {
                        let Ok(v) = serde_json::from_str::<Value>(&raw) else { continue };
                        if v["runId"] != id.as_str() { continue; }
                        let Some((name, data)) = filtered(&v, verbose) else { continue };
                        if !out.send(&name, &data) { return; }
                        if name == "run_update" && v["terminal"] == true {
                            // Close shortly after the terminal update.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            return;
                        }
                    }
                },
                _ = out.tx.closed() => return,
                // Graceful shutdown closes the stream (§5.3 step 1).
                _ = &mut shutdown => return,
            }
        }
    });
    Ok(sse(rx))
}

/// `GET /api/realtime/runs`
#[utoipa::path(get, path = "/api/realtime/runs", tag = "realtime",
    params(("status" = Option<String>, Query), ("verbose" = Option<bool>, Query)),
    responses((status = 200, description = "text/event-stream of every run of the application"), (status = 401), (status = 403)))]
pub async fn runs_stream(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("runs:read")?;
    let app_id = auth.app()?.id.clone();
    let end_user = auth.end_user.as_ref().map(|e| e.id.clone());
    let status = param(&q, "status").filter(|s| !s.is_empty());
    let verbose = param(&q, "verbose").is_some_and(|v| v == "true" || v == "1");
    let slot = stream_slot(&state, &auth)?;
    let mut frames = subscribe(&state, &auth.org_id).await?;
    let filter = RunFilter {
        status: status.clone(),
        end_user_id: end_user.clone(),
        ..Default::default()
    };
    // Frames are current up to this instant; a lag re-reads what changed since.
    let mut current_at = now();
    let (tx, rx) = mpsc::channel(MAX_QUEUED);
    let mut out = Out {
        tx,
        stream_id: uuid::Uuid::new_v4().simple().to_string(),
        n: 0,
    };
    out.send("ping", "");
    let shutdown = state.runs.shutdown_signal();
    tokio::spawn(async move {
        let _slot = slot;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                f = tokio::time::timeout(IDLE_PING, frames.next()) => match f {
                    Err(_) => {
                        if !out.send("ping", "") { return; }
                    }
                    Ok(None) => return,
                    Ok(Some(Delivery::Lagged)) => {
                        // Frames were missed: the current state of every run that may have changed.
                        let at = now();
                        let mut runs = changed_runs(&state, &app_id, &filter, current_at).await;
                        runs.reverse();
                        for run in runs {
                            let data = crate::runs::run_update(&run).to_string();
                            if !out.send("run_update", &data) { return; }
                        }
                        // A little overlap: a run finishing while the page was read is sent again.
                        current_at = at - chrono::Duration::seconds(1);
                    }
                    Ok(Some(Delivery::Message(raw))) => {
                        current_at = now();
                        let Ok(v) = serde_json::from_str::<Value>(&raw) else { continue };
                        if v["applicationId"] != app_id.as_str() { continue; }
                        if let Some(eu) = &end_user {
                            if v["endUserId"] != eu.as_str() { continue; }
                        }
                        if let Some(s) = &status {
                            if v["status"] != s.as_str() { continue; }
                        }
                        let Some((name, data)) = filtered(&v, verbose) else { continue };
                        if !out.send(&name, &data) { return; }
                    }
                },
                _ = out.tx.closed() => return,
                // Graceful shutdown closes the stream (§5.3 step 1).
                _ = &mut shutdown => return,
            }
        }
    });
    Ok(sse(rx))
}
