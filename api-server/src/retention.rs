//! Retention: finished runs (with their logs), log rows and webhook delivery attempts are deleted once
//! older than their retention (`RUN_RETENTION_DAYS`, `RUN_LOG_RETENTION_DAYS`,
//! `WEBHOOK_DELIVERY_RETENTION_DAYS`; 0 keeps a kind forever), so the database follows live work rather
//! than growing with history.
//!
//! A sweep deletes in small batches, each one short transaction, with a pause between them so the API
//! never waits long for the write lock. On PostgreSQL each batch first takes a transaction advisory lock:
//! when several instances share the database, one of them runs a given batch and the others skip their
//! sweep. Open runs and the last run of a schedule are never deleted. SQLite gives the freed pages back
//! after each batch (incremental auto-vacuum).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

use crate::config::RetentionConfig;
use crate::infra::database::history::{Cutoffs, PruneCounts};
use crate::infra::database::{now, Database, DbResult, Timestamp};
use crate::infra::storage::ObjectStore;
use crate::metrics::{KindLabel, Metrics};
use crate::state::AppState;

/// Free SQLite pages handed back to the file system after each batch (4 KiB pages: 16 MiB).
const RECLAIM_PAGES: i64 = 4096;

/// The cutoffs of `config` at `at`: rows created before them go.
pub fn cutoffs(config: &RetentionConfig, at: Timestamp) -> Cutoffs {
    let before = |days: u32| (days > 0).then(|| at - chrono::Duration::days(days as i64));
    Cutoffs {
        runs: before(config.run_days),
        run_logs: before(config.run_log_days),
        webhook_deliveries: before(config.webhook_delivery_days),
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub deleted: PruneCounts,
    pub batches: u64,
    /// Another instance held the retention lock: this sweep stopped early.
    pub busy: bool,
}

/// Where a deleted run may have left something outside the database: the process adapter's
/// `$DATA_DIR/runs/<id>/` and, when given, the run's objects (documents) in the object store.
#[derive(Clone, Copy)]
pub struct Leftovers<'a> {
    pub data_dir: &'a Path,
    pub storage: Option<&'a dyn ObjectStore>,
}

impl<'a> From<&'a Path> for Leftovers<'a> {
    fn from(data_dir: &'a Path) -> Self {
        Leftovers {
            data_dir,
            storage: None,
        }
    }
}

impl<'a> From<&'a PathBuf> for Leftovers<'a> {
    fn from(data_dir: &'a PathBuf) -> Self {
        Leftovers::from(data_dir.as_path())
    }
}

/// One batch and its aftermath: the deleted runs' leftovers removed, metrics counted, space reclaimed.
/// `None` when another instance holds the retention lock.
pub async fn run_batch(
    db: &dyn Database,
    cutoffs: &Cutoffs,
    batch: u32,
    leftovers: impl Into<Leftovers<'_>>,
    metrics: Option<&Metrics>,
) -> DbResult<Option<PruneCounts>> {
    let leftovers = leftovers.into();
    let Some(counts) = db.prune_batch(cutoffs, batch as i64).await? else {
        return Ok(None);
    };
    for id in &counts.run_ids {
        remove_run_leftovers(leftovers.data_dir, id).await;
        if let Some(storage) = leftovers.storage {
            // The run's documents went with its rows; their bytes go now.
            if let Err(e) = storage
                .delete_prefix(&crate::documents::run_prefix(id))
                .await
            {
                tracing::warn!(run_id = %id, error = %e, "could not delete a pruned run's documents");
            }
        }
    }
    if let Some(m) = metrics {
        m.retention_batches.inc();
        for (kind, n) in [
            ("runs", counts.runs),
            ("run_logs", counts.run_logs),
            ("webhook_deliveries", counts.webhook_deliveries),
        ] {
            m.retention_deleted
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc_by(n);
        }
    }
    if counts.total() > 0 {
        db.reclaim_space(RECLAIM_PAGES).await?;
    }
    Ok(Some(counts))
}

/// Deletes everything past its retention, batch after batch, pausing `pause` between batches, until a
/// batch comes back short or `stop` says so.
pub async fn sweep(
    db: &dyn Database,
    config: &RetentionConfig,
    leftovers: impl Into<Leftovers<'_>>,
    metrics: Option<&Metrics>,
    pause: Duration,
    stop: impl Fn() -> bool,
) -> DbResult<SweepReport> {
    let leftovers = leftovers.into();
    let cutoffs = cutoffs(config, now());
    let mut report = SweepReport::default();
    if cutoffs.is_empty() {
        return Ok(report);
    }
    let full = config.batch_size as u64;
    loop {
        let Some(c) = run_batch(db, &cutoffs, config.batch_size, leftovers, metrics).await? else {
            report.busy = true;
            return Ok(report);
        };
        report.batches += 1;
        report.deleted.runs += c.runs;
        report.deleted.run_logs += c.run_logs;
        report.deleted.webhook_deliveries += c.webhook_deliveries;
        // Log rows of deleted runs count too: at worst one more batch, which comes back empty.
        let more = c.runs == full || c.webhook_deliveries == full || c.run_logs >= full;
        if !more || stop() {
            return Ok(report);
        }
        tokio::time::sleep(pause).await;
    }
}

/// What a run may leave on this instance's disk outside the database: the process adapter's
/// `$DATA_DIR/runs/<id>/` (normally removed at teardown; left behind when the server was killed).
async fn remove_run_leftovers(data_dir: &Path, run_id: &str) {
    if run_id.contains(['/', '\\']) || run_id.starts_with('.') {
        return;
    }
    let dir = data_dir.join("runs").join(run_id);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(run_id, error = %e, "could not remove a pruned run's directory"),
    }
}

/// Starts the background job: a sweep every `RETENTION_INTERVAL_SECONDS` (±10 % jitter, the first one
/// after one interval), until shutdown.
pub fn start(state: &AppState) {
    let s = state.clone();
    tokio::spawn(async move {
        let base = s.config.retention.interval_seconds as f64;
        loop {
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            tokio::time::sleep(Duration::from_secs_f64(base * jitter)).await;
            if s.is_shutting_down() {
                break;
            }
            let started = std::time::Instant::now();
            let leftovers = Leftovers {
                data_dir: &s.config.data_dir,
                storage: Some(s.infra.storage.as_ref()),
            };
            match crate::documents::sweep(&s, s.config.retention.batch_size as i64).await {
                Ok(f) if f.documents + f.uploads > 0 => tracing::info!(
                    documents = f.documents,
                    uploads = f.uploads,
                    "document and upload retention"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "document retention failed; retried next interval")
                }
            }
            match sweep(
                s.infra.db.as_ref(),
                &s.config.retention,
                leftovers,
                Some(&s.metrics),
                Duration::from_millis(50),
                || s.is_shutting_down(),
            )
            .await
            {
                Ok(r) if r.deleted.total() > 0 => tracing::info!(
                    runs = r.deleted.runs,
                    run_logs = r.deleted.run_logs,
                    webhook_deliveries = r.deleted.webhook_deliveries,
                    batches = r.batches,
                    took_ms = started.elapsed().as_millis() as u64,
                    "retention sweep"
                ),
                Ok(r) if r.busy => {
                    tracing::debug!("retention sweep skipped: another instance holds the lock")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed; retried next interval")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_days_keeps_a_kind_forever() {
        let config = RetentionConfig {
            run_days: 90,
            run_log_days: 0,
            webhook_delivery_days: 1,
            interval_seconds: 60,
            batch_size: 10,
        };
        let at = now();
        let c = cutoffs(&config, at);
        assert_eq!(c.runs, Some(at - chrono::Duration::days(90)));
        assert_eq!(c.run_logs, None);
        assert_eq!(c.webhook_deliveries, Some(at - chrono::Duration::days(1)));
        assert!(!c.is_empty());
        let none = RetentionConfig {
            run_days: 0,
            run_log_days: 0,
            webhook_delivery_days: 0,
            ..config
        };
        assert!(cutoffs(&none, at).is_empty());
    }
}
