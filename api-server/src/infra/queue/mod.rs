//! The `JobQueue` concern: delayed jobs (webhook retries) and the cron clock that fires schedules.
//! LocalQueue in-process at Tier 0/1; a Redis queue at Tier 2+ makes both durable and multi-instance.

mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use local::LocalQueue;

use crate::infra::database::Timestamp;

/// A unit of deferred work, serialisable so that a durable queue can store it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub kind: String,
    pub payload: serde_json::Value,
}

#[async_trait]
pub trait JobHandler: Send + Sync {
    async fn handle(&self, job: Job) -> anyhow::Result<()>;
}

/// Called by the queue's cron clock with the interval of time it covers, `(after, until]`.
#[async_trait]
pub trait CronTick: Send + Sync {
    async fn tick(&self, after: Timestamp, until: Timestamp);
}

#[async_trait]
pub trait JobQueue: Send + Sync {
    /// `local` or `redis`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    /// Starts delivering jobs to `handler` and ticking `cron`.
    async fn start(&self, handler: Arc<dyn JobHandler>, cron: Arc<dyn CronTick>);
    async fn enqueue_delayed(&self, job: Job, delay: Duration) -> anyhow::Result<()>;
    /// Stops the workers. Returns how many delayed jobs were still pending (lost for an in-process queue).
    async fn stop(&self) -> usize;
}
