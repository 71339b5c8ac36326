//! The `JobQueue` concern: delayed jobs (webhook retries) and the cron clock that fires schedules.
//! LocalQueue in-process at Tier 0/1; a Redis queue at Tier 2+ makes both durable and multi-instance.

mod local;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use local::LocalQueue;
pub use redis::{QueueCounts, RedisQueue, RedisQueueOptions};

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
    /// Starts delivering jobs to `handler` and ticking `cron`. Successive ticks cover contiguous windows
    /// `(after, until]`; with a shared queue the windows of all instances together are contiguous and do not
    /// overlap (after a holder's crash a window may be covered again: firing must stay idempotent).
    async fn start(&self, handler: Arc<dyn JobHandler>, cron: Arc<dyn CronTick>);
    /// Delivers `job` to one handler once `delay` has passed. A durable queue redelivers a job whose
    /// handler failed (with backoff, up to a bounded number of attempts) or whose instance died.
    async fn enqueue_delayed(&self, job: Job, delay: Duration) -> anyhow::Result<()>;
    /// Stops the workers. Returns how many delayed jobs were still pending and are lost (an in-process
    /// queue's; always 0 for a durable queue, whose jobs stay stored).
    async fn stop(&self) -> usize;
}
