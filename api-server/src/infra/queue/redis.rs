//! RedisQueue (Tier 2): durable delayed jobs and one cron clock shared by every instance.
//!
//! # Delayed jobs
//! - `appstrate:jobs:data` (hash id → job JSON) holds every committed job until it is acknowledged;
//!   `appstrate:jobs:attempts` (hash id → deliveries so far).
//! - `appstrate:jobs:delayed` (sorted set scored by the due time in ms) holds jobs waiting to run.
//! - `appstrate:jobs:processing` (sorted set scored by the lease deadline in ms) holds claimed jobs.
//! - `appstrate:jobs:dead` (list, newest 1000) keeps jobs that ran out of attempts, for inspection.
//!
//! Every instance polls (every 250 ms). One Lua script claims due jobs atomically: it first moves
//! expired leases back to `delayed` (the instance that claimed them crashed or hung), then moves due jobs
//! to `processing` with a lease (5 min by default), so a job is delivered to exactly one instance at a
//! time. Success deletes the job (ack). A handler error re-schedules it with exponential backoff
//! (1 s × 2^(attempt-1), at most 1 h) until `max_attempts` deliveries, after which it moves to `dead`.
//! All times come from Redis' own clock (`TIME` inside the scripts), so instances with skewed clocks agree.
//! With Redis' append-only file, committed jobs survive restarts of Redis and of every instance; `stop()`
//! hands unfinished claims back and loses nothing, hence returns 0.
//!
//! # The cron clock
//! Every instance ticks every `SCHEDULER_POLL_INTERVAL_SECONDS`, but each tick first claims the clock:
//! `appstrate:cron:lease` (`SET NX PX`, an owner token) plus `appstrate:cron:cursor` (the end of the last
//! covered window, ms). The holder ticks `(cursor, now]` and then commits `cursor = now` and releases the
//! lease. So the windows handed to [`CronTick::tick`] across all instances are contiguous and never
//! overlap: each schedule occurrence is evaluated by exactly one instance. The lease is renewed while the
//! tick runs; if the holder dies mid-tick, the lease expires (at most `cron_lease`) and the next claimer's
//! window starts at the last committed cursor, so it covers the dead holder's window again. Occurrences
//! that the dead holder had already fired are then no-ops thanks to the database's unique
//! `(schedule_id, scheduled_for)` index on runs (see `schedules::fire`): evaluation is at-least-once,
//! firing is exactly-once. The clock starts at the first boot against this Redis (nothing before it is
//! replayed); after a downtime of every instance, the first window reaches back at most `max_catch_up`
//! (1 h), where the scheduler's per-poll cap (5 occurrences per schedule) applies as it does locally.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Script;
use tokio::sync::{watch, Semaphore};

use super::{CronTick, Job, JobHandler, JobQueue};
use crate::infra::database::Timestamp;
use crate::infra::redis_client::{OutageLog, Redis};

const DELAYED: &str = "appstrate:jobs:delayed";
const PROCESSING: &str = "appstrate:jobs:processing";
const DATA: &str = "appstrate:jobs:data";
const ATTEMPTS: &str = "appstrate:jobs:attempts";
const DEAD: &str = "appstrate:jobs:dead";
const CRON_CURSOR: &str = "appstrate:cron:cursor";
const CRON_LEASE: &str = "appstrate:cron:lease";

/// Redis' clock in ms, inside a script.
const NOW: &str = "local t = redis.call('TIME')\n\
                   local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

const ENQUEUE: &str = r"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
";

const CLAIM: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], now, id)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local data = redis.call('HGET', KEYS[3], id)
  if data then
    local attempt = redis.call('HINCRBY', KEYS[4], id, 1)
    if attempt > tonumber(ARGV[3]) then
      redis.call('HDEL', KEYS[3], id)
      redis.call('HDEL', KEYS[4], id)
      redis.call('LPUSH', KEYS[5], data)
      redis.call('LTRIM', KEYS[5], 0, 999)
    else
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), id)
      table.insert(out, id)
      table.insert(out, data)
      table.insert(out, tostring(attempt))
    end
  end
end
return out
";

const ACK: &str = r"
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
";

/// ARGV: id, delay ms, mode (`retry`, `dead` or `release`: back to due now, this delivery not counted).
const SETTLE: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] == 'dead' then
  local data = redis.call('HGET', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  if data then
    redis.call('LPUSH', KEYS[5], data)
    redis.call('LTRIM', KEYS[5], 0, 999)
  end
  return 2
end
if ARGV[3] == 'release' then
  redis.call('HINCRBY', KEYS[4], ARGV[1], -1)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return 1
";

/// KEYS: cursor, lease. ARGV: token, lease ms, max catch-up ms. Returns `{after, until}` or nil.
const CRON_CLAIM: &str = r"
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return nil end
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], tostring(now))
  redis.call('DEL', KEYS[2])
  return nil
end
cur = tonumber(cur)
local floor = now - tonumber(ARGV[3])
if cur < floor then cur = floor end
if cur >= now then
  redis.call('DEL', KEYS[2])
  return nil
end
return {tostring(cur), tostring(now)}
";

const CRON_RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const CRON_COMMIT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[2])
return 1
";

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// Tunables; [`RedisQueueOptions::new`] gives the production values.
#[derive(Debug, Clone)]
pub struct RedisQueueOptions {
    /// The cron clock's cadence (`SCHEDULER_POLL_INTERVAL_SECONDS`).
    pub cron_interval: Duration,
    /// How long the cron clock's holder may go silent before another instance takes over.
    pub cron_lease: Duration,
    /// How far back the first window after a full downtime reaches.
    pub max_catch_up: Duration,
    /// How often each instance looks for due jobs.
    pub job_poll: Duration,
    /// How long a claimed job may stay unacknowledged before it is re-delivered.
    pub lease: Duration,
    /// Deliveries of one job before it is given up (moved to `appstrate:jobs:dead`).
    pub max_attempts: u32,
    /// Backoff before the 2nd delivery; doubled for each further one, at most 1 h.
    pub retry_base: Duration,
    /// Jobs handled at once by one instance.
    pub concurrency: usize,
}

impl RedisQueueOptions {
    pub fn new(cron_interval: Duration) -> Self {
        Self {
            cron_interval,
            // Long enough to ride out a slow tick (it is renewed anyway), short enough that a crashed
            // holder delays the schedules by a few polls at most.
            cron_lease: (cron_interval * 5).clamp(Duration::from_secs(5), Duration::from_secs(60)),
            max_catch_up: Duration::from_secs(3600),
            job_poll: Duration::from_millis(250),
            lease: Duration::from_secs(300),
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

/// Jobs in each state, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub delayed: u64,
    pub processing: u64,
    pub dead: u64,
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    ack: Script,
    settle: Script,
    cron_claim: Script,
    cron_renew: Script,
    cron_commit: Script,
}

pub struct RedisQueue {
    inner: Arc<Inner>,
    stop_tx: watch::Sender<bool>,
}

struct Inner {
    redis: Redis,
    options: RedisQueueOptions,
    scripts: Scripts,
    /// Claimed jobs whose handler has not finished.
    inflight: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    outage: OutageLog,
}

/// The wait before the delivery after `attempt`: `base` × 2^(attempt-1), at most 1 h.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    (base * factor).min(Duration::from_secs(3600))
}

fn ms_to_timestamp(ms: i64) -> Timestamp {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

impl RedisQueue {
    pub fn new(redis: Redis, options: RedisQueueOptions) -> Self {
        let concurrency = options.concurrency.max(1);
        Self {
            inner: Arc::new(Inner {
                redis,
                options,
                scripts: Scripts {
                    enqueue: script(ENQUEUE),
                    claim: script(CLAIM),
                    ack: script(ACK),
                    settle: script(SETTLE),
                    cron_claim: script(CRON_CLAIM),
                    cron_renew: script(CRON_RENEW),
                    cron_commit: script(CRON_COMMIT),
                },
                inflight: Mutex::new(HashSet::new()),
                permits: Arc::new(Semaphore::new(concurrency)),
                outage: OutageLog::default(),
            }),
            stop_tx: watch::channel(false).0,
        }
    }

    pub async fn counts(&self) -> anyhow::Result<QueueCounts> {
        let mut conn = self.inner.redis.conn();
        let (delayed, processing, dead): (u64, u64, u64) = redis::pipe()
            .zcard(DELAYED)
            .zcard(PROCESSING)
            .llen(DEAD)
            .query_async(&mut conn)
            .await?;
        Ok(QueueCounts {
            delayed,
            processing,
            dead,
        })
    }
}

impl Inner {
    async fn claim(&self, max: usize) -> anyhow::Result<Vec<(String, String, u32)>> {
        let mut conn = self.redis.conn();
        let flat: Vec<String> = self
            .scripts
            .claim
            .key(DELAYED)
            .key(PROCESSING)
            .key(DATA)
            .key(ATTEMPTS)
            .key(DEAD)
            .arg(self.options.lease.as_millis() as u64)
            .arg(max)
            .arg(self.options.max_attempts)
            .invoke_async(&mut conn)
            .await?;
        Ok(flat
            .chunks_exact(3)
            .map(|c| (c[0].clone(), c[1].clone(), c[2].parse().unwrap_or(1)))
            .collect())
    }

    async fn ack(&self, id: &str) -> anyhow::Result<()> {
        let mut conn = self.redis.conn();
        let _: i64 = self
            .scripts
            .ack
            .key(PROCESSING)
            .key(DATA)
            .key(ATTEMPTS)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn settle(&self, id: &str, delay: Duration, mode: &str) -> anyhow::Result<i64> {
        let mut conn = self.redis.conn();
        Ok(self
            .scripts
            .settle
            .key(PROCESSING)
            .key(DELAYED)
            .key(DATA)
            .key(ATTEMPTS)
            .key(DEAD)
            .arg(id)
            .arg(delay.as_millis() as u64)
            .arg(mode)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Retries `f` through a short outage (about 30 s) so that a finished job is not re-delivered just
    /// because Redis blinked when it was acknowledged. Gives up early on stop.
    async fn persist<F, Fut>(&self, what: &str, stop: &watch::Receiver<bool>, f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        for i in 0..30 {
            let Err(e) = f().await else { return };
            let stopping = *stop.borrow();
            if i == 29 || stopping {
                tracing::warn!(error = %e, "{what} failed; the job will be re-delivered when its lease expires");
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs one claimed job to completion and settles it.
    async fn run_job(
        self: Arc<Self>,
        handler: Arc<dyn JobHandler>,
        id: String,
        data: String,
        attempt: u32,
        stop: watch::Receiver<bool>,
    ) {
        let job: Job = match serde_json::from_str(&data) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "unreadable job; moved to appstrate:jobs:dead");
                self.persist("moving an unreadable job", &stop, || async {
                    self.settle(&id, Duration::ZERO, "dead").await.map(|_| ())
                })
                .await;
                return;
            }
        };
        match handler.handle(job.clone()).await {
            Ok(()) => {
                self.persist("acknowledging a job", &stop, || self.ack(&id))
                    .await
            }
            Err(e) if attempt >= self.options.max_attempts => {
                tracing::error!(job_id = %id, kind = %job.kind, attempt, error = %e, "job failed for the last time; moved to appstrate:jobs:dead");
                self.persist("giving up a job", &stop, || async {
                    self.settle(&id, Duration::ZERO, "dead").await.map(|_| ())
                })
                .await;
            }
            Err(e) => {
                let delay = backoff(self.options.retry_base, attempt);
                tracing::warn!(job_id = %id, kind = %job.kind, attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "job failed; retrying");
                self.persist("re-scheduling a job", &stop, || async {
                    self.settle(&id, delay, "retry").await.map(|_| ())
                })
                .await;
            }
        }
    }

    /// Delivers due jobs until stopped.
    async fn job_loop(
        self: Arc<Self>,
        handler: Arc<dyn JobHandler>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.options.job_poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let free = self.permits.available_permits();
            if free == 0 {
                continue;
            }
            let claimed = match self.claim(free).await {
                Ok(c) => {
                    self.outage.ok("job queue");
                    c
                }
                Err(e) => {
                    self.outage.failed("job queue", &e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for (id, data, attempt) in claimed {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                self.inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                let inner = self.clone();
                let handler = handler.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    inner
                        .clone()
                        .run_job(handler, id.clone(), data, attempt, stop)
                        .await;
                    inner
                        .inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    drop(permit);
                });
            }
        }
    }

    async fn cron_claim(&self, token: &str) -> anyhow::Result<Option<(i64, i64)>> {
        let mut conn = self.redis.conn();
        let window: Option<(String, String)> = self
            .scripts
            .cron_claim
            .key(CRON_CURSOR)
            .key(CRON_LEASE)
            .arg(token)
            .arg(self.options.cron_lease.as_millis() as u64)
            .arg(self.options.max_catch_up.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(match window {
            Some((a, u)) => Some((a.parse()?, u.parse()?)),
            None => None,
        })
    }

    async fn cron_renew(&self, token: &str) -> anyhow::Result<bool> {
        let mut conn = self.redis.conn();
        let n: i64 = self
            .scripts
            .cron_renew
            .key(CRON_LEASE)
            .arg(token)
            .arg(self.options.cron_lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    async fn cron_commit(&self, token: &str, until: i64) -> anyhow::Result<bool> {
        let mut conn = self.redis.conn();
        let n: i64 = self
            .scripts
            .cron_commit
            .key(CRON_CURSOR)
            .key(CRON_LEASE)
            .arg(token)
            .arg(until)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// One attempt to hold the clock and tick the window since the last committed one.
    async fn cron_once(&self, cron: &dyn CronTick) -> anyhow::Result<()> {
        let token = uuid::Uuid::new_v4().to_string();
        let Some((after, until)) = self.cron_claim(&token).await? else {
            return Ok(());
        };
        // Keep the lease while the tick runs, so a slow tick is not mistaken for a dead holder.
        let renew_every = self.options.cron_lease / 4;
        let tick = cron.tick(ms_to_timestamp(after), ms_to_timestamp(until));
        tokio::pin!(tick);
        let mut renew = tokio::time::interval(renew_every);
        renew.tick().await;
        loop {
            tokio::select! {
                _ = &mut tick => break,
                _ = renew.tick() => {
                    if let Ok(false) = self.cron_renew(&token).await {
                        tracing::warn!("the cron clock's lease was lost during a slow tick; another instance may cover this window again (duplicate fires are no-ops)");
                    }
                }
            }
        }
        if !self.cron_commit(&token, until).await? {
            tracing::warn!("the cron clock's lease expired before the tick was committed; the window will be covered again (duplicate fires are no-ops)");
        }
        Ok(())
    }

    async fn cron_loop(self: Arc<Self>, cron: Arc<dyn CronTick>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.options.cron_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            match self.cron_once(cron.as_ref()).await {
                Ok(()) => self.outage.ok("cron clock"),
                Err(e) => self.outage.failed("cron clock", &e),
            }
        }
    }
}

#[async_trait]
impl JobQueue for RedisQueue {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn start(&self, handler: Arc<dyn JobHandler>, cron: Arc<dyn CronTick>) {
        tokio::spawn(
            self.inner
                .clone()
                .job_loop(handler, self.stop_tx.subscribe()),
        );
        tokio::spawn(self.inner.clone().cron_loop(cron, self.stop_tx.subscribe()));
    }

    async fn enqueue_delayed(&self, job: Job, delay: Duration) -> anyhow::Result<()> {
        let id = format!("job_{}", uuid::Uuid::new_v4().simple());
        let data = serde_json::to_string(&job)?;
        let mut conn = self.inner.redis.conn();
        let _: i64 = self
            .inner
            .scripts
            .enqueue
            .key(DELAYED)
            .key(DATA)
            .arg(&id)
            .arg(data)
            .arg(delay.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Stops claiming, gives in-flight jobs up to 10 s, then hands the unfinished ones back (due now, the
    /// interrupted delivery not counted). Nothing is lost: every job stays in Redis, so this returns 0.
    async fn stop(&self) -> usize {
        let _ = self.stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let busy = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if busy.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                for id in busy {
                    if let Err(e) = self.inner.settle(&id, Duration::ZERO, "release").await {
                        tracing::warn!(job_id = %id, error = %e, "could not hand a job back; it will be re-delivered when its lease expires");
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 2), Duration::from_secs(2));
        assert_eq!(backoff(base, 5), Duration::from_secs(16));
        assert_eq!(backoff(base, 40), Duration::from_secs(3600));
    }

    #[test]
    fn the_cron_lease_follows_the_poll_interval_within_bounds() {
        let lease = |s| RedisQueueOptions::new(Duration::from_secs(s)).cron_lease;
        assert_eq!(lease(1), Duration::from_secs(5));
        assert_eq!(lease(4), Duration::from_secs(20));
        assert_eq!(lease(30), Duration::from_secs(60));
    }
}
