//! LocalQueue: delayed jobs on tokio timers and a cron clock that ticks every
//! `SCHEDULER_POLL_INTERVAL_SECONDS`. Nothing survives a restart; the cron clock never replays time from
//! before boot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{CronTick, Job, JobHandler, JobQueue};
use crate::infra::database::now;

pub struct LocalQueue {
    poll_interval: Duration,
    handler: Mutex<Option<Arc<dyn JobHandler>>>,
    pending: Arc<AtomicUsize>,
    stop_tx: watch::Sender<bool>,
}

impl LocalQueue {
    pub fn new(poll_interval: Duration) -> Self {
        Self {
            poll_interval,
            handler: Mutex::new(None),
            pending: Arc::new(AtomicUsize::new(0)),
            stop_tx: watch::channel(false).0,
        }
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn start(&self, handler: Arc<dyn JobHandler>, cron: Arc<dyn CronTick>) {
        *self.handler.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
        let mut stop = self.stop_tx.subscribe();
        let interval = self.poll_interval;
        tokio::spawn(async move {
            let mut last = now();
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await; // the first tick is immediate; the clock starts at boot
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let until = now();
                        cron.tick(last, until).await;
                        last = until;
                    }
                    _ = stop.changed() => break,
                }
            }
        });
    }

    async fn enqueue_delayed(&self, job: Job, delay: Duration) -> anyhow::Result<()> {
        let handler = self
            .handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| anyhow::anyhow!("queue not started"))?;
        let pending = self.pending.clone();
        let mut stop = self.stop_tx.subscribe();
        pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    pending.fetch_sub(1, Ordering::SeqCst);
                    if let Err(e) = handler.handle(job.clone()).await {
                        tracing::warn!(kind = %job.kind, error = %e, "delayed job failed");
                    }
                }
                _ = stop.changed() => {}
            }
        });
        Ok(())
    }

    async fn stop(&self) -> usize {
        let _ = self.stop_tx.send(true);
        self.pending.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::database::Timestamp;
    use tokio::sync::mpsc;

    struct Recorder(mpsc::UnboundedSender<String>);

    #[async_trait]
    impl JobHandler for Recorder {
        async fn handle(&self, job: Job) -> anyhow::Result<()> {
            let _ = self.0.send(job.kind);
            Ok(())
        }
    }

    #[async_trait]
    impl CronTick for Recorder {
        async fn tick(&self, after: Timestamp, until: Timestamp) {
            assert!(after <= until);
            let _ = self.0.send("tick".into());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_jobs_and_cron_ticks() {
        let q = LocalQueue::new(Duration::from_secs(30));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let rec = Arc::new(Recorder(tx));
        q.start(rec.clone(), rec.clone()).await;
        let job = |k: &str| Job {
            kind: k.into(),
            payload: serde_json::json!({}),
        };
        q.enqueue_delayed(job("late"), Duration::from_secs(40))
            .await
            .unwrap();
        q.enqueue_delayed(job("soon"), Duration::from_secs(5))
            .await
            .unwrap();
        q.enqueue_delayed(job("never"), Duration::from_secs(500))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap(), "soon");
        assert_eq!(rx.recv().await.unwrap(), "tick");
        assert_eq!(rx.recv().await.unwrap(), "late");
        assert_eq!(rx.recv().await.unwrap(), "tick");
        assert_eq!(q.stop().await, 1);
    }
}
