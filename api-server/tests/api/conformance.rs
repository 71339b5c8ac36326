//! One conformance suite per infrastructure trait, written once and run against every implementation, so
//! the tiers cannot drift: pub/sub (local, Redis), rate limiter (memory, Redis), job queue (local, Redis;
//! the behaviours both promise). Then what only the Redis adapters promise: sharing between instances,
//! durability across Redis restarts, redelivery after a crash, retries.
//!
//! Each suite takes two handles, `a` and `b`: two instances of a shared (Redis) backend on one server, or
//! the same object twice for an in-process one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appstrate::infra::database::Timestamp;
use appstrate::infra::pubsub::{Channel, Delivery, LocalPubSub, PubSub, RedisPubSub};
use appstrate::infra::queue::{
    CronTick, Job, JobHandler, JobQueue, LocalQueue, RedisQueue, RedisQueueOptions,
};
use appstrate::infra::ratelimit::{MemoryRateLimiter, RateLimiter, RedisRateLimiter};
use appstrate::infra::redis_client::Redis;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;
use test_support::require;
use test_support::services::RedisServer;
use tokio::sync::mpsc;

async fn redis(server: &RedisServer) -> Redis {
    Redis::connect(&server.url)
        .await
        .expect("connect to the test redis-server")
}

async fn next(stream: &mut futures::stream::BoxStream<'static, Delivery>) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery within 10 s")
}

fn msg(s: &str) -> Option<Delivery> {
    Some(Delivery::Message(s.to_string()))
}

// ---------------------------------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------------------------------

async fn pubsub_conformance(a: Arc<dyn PubSub>, b: Arc<dyn PubSub>) {
    let acme = Channel::run_events("org_acme");
    let other = Channel::run_events("org_other");
    let cancel = Channel::run_cancel();
    // Fan-out to every subscriber of every instance, in order; channels are isolated.
    let mut on_a = a.subscribe(&acme).await.unwrap();
    let mut on_b1 = b.subscribe(&acme).await.unwrap();
    let mut on_b2 = b.subscribe(&acme).await.unwrap();
    let mut other_b = b.subscribe(&other).await.unwrap();
    let mut cancels_b = b.subscribe(&cancel).await.unwrap();
    for i in 0..50 {
        a.publish(&acme, format!("event-{i}")).await.unwrap();
    }
    b.publish(&cancel, "run_x".into()).await.unwrap();
    a.publish(&other, "other-1".into()).await.unwrap();
    for s in [&mut on_a, &mut on_b1, &mut on_b2] {
        for i in 0..50 {
            assert_eq!(next(s).await, msg(&format!("event-{i}")));
        }
    }
    assert_eq!(next(&mut cancels_b).await, msg("run_x"));
    assert_eq!(next(&mut other_b).await, msg("other-1"));
    // The cancel and the other organization's event went to their own channels only.
    a.publish(&acme, "after".into()).await.unwrap();
    assert_eq!(next(&mut on_b1).await, msg("after"));

    // 1,100 frames to a stalled subscriber (more than the capacity, 1024): it is told it lagged, then
    // goes on with the newest frames still held and every later one. One that keeps up sees everything,
    // and a subscriber of another organization sees its own frames without any lag.
    let mut stalled = b.subscribe(&acme).await.unwrap();
    let mut fast = b.subscribe(&acme).await.unwrap();
    let reader = tokio::spawn(async move {
        for i in 0..1100 {
            assert_eq!(next(&mut fast).await, msg(&format!("m{i}")));
        }
    });
    for i in 0..1100 {
        a.publish(&acme, format!("m{i}")).await.unwrap();
        // Let the fast reader keep up (an in-process publish never yields by itself).
        tokio::task::yield_now().await;
    }
    a.publish(&other, "other-2".into()).await.unwrap();
    reader.await.unwrap();
    assert_eq!(next(&mut other_b).await, msg("other-2"));
    assert_eq!(next(&mut stalled).await, Some(Delivery::Lagged));
    assert_eq!(next(&mut stalled).await, msg(&format!("m{}", 1100 - 1024)));
    for i in 1100 - 1024 + 1..1100 {
        assert_eq!(next(&mut stalled).await, msg(&format!("m{i}")));
    }
    a.publish(&acme, "after-lag".into()).await.unwrap();
    assert_eq!(next(&mut stalled).await, msg("after-lag"));
    // A cancel published after the burst still reaches the cancel subscriber.
    a.publish(&cancel, "run_y".into()).await.unwrap();
    assert_eq!(next(&mut cancels_b).await, msg("run_y"));

    // Publishing with no subscriber left is fine.
    drop((on_a, on_b1, on_b2, other_b, cancels_b, stalled));
    a.publish(&acme, "nobody".into()).await.unwrap();
    b.publish(&cancel, "nobody".into()).await.unwrap();
}

#[tokio::test]
async fn pubsub_conformance_local() {
    let ps: Arc<dyn PubSub> = Arc::new(LocalPubSub::default());
    pubsub_conformance(ps.clone(), ps).await;
}

#[tokio::test]
async fn pubsub_conformance_redis() {
    let server = require!(RedisServer::start());
    let a = RedisPubSub::connect(redis(&server).await).await.unwrap();
    let b = RedisPubSub::connect(redis(&server).await).await.unwrap();
    assert_eq!(a.kind(), "redis");
    pubsub_conformance(Arc::new(a), Arc::new(b)).await;
}

/// The idle probe (`PING` every 10 s on the subscriber connection) keeps the connection: it is not
/// mistaken for a broken one and re-established, which would lose the messages published meanwhile.
#[tokio::test]
async fn redis_pubsub_keeps_its_subscriber_connection_across_idle_probes() {
    let server = require!(RedisServer::start());
    let a = RedisPubSub::connect(redis(&server).await).await.unwrap();
    let mut cancels = a.subscribe(&Channel::run_cancel()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        a.connections(),
        1,
        "the subscriber connection was re-established"
    );
    a.publish(&Channel::run_cancel(), "run_z".into())
        .await
        .unwrap();
    assert_eq!(next(&mut cancels).await, msg("run_z"));
}

/// After a Redis restart the subscriber resubscribes on its own; every open stream is told that frames
/// may have been missed (so its owner re-reads the database), then delivery goes on.
#[tokio::test]
async fn redis_pubsub_resubscribes_after_a_redis_restart() {
    let mut server = require!(RedisServer::start());
    let a = RedisPubSub::connect(redis(&server).await).await.unwrap();
    let b = RedisPubSub::connect(redis(&server).await).await.unwrap();
    let acme = Channel::run_events("org_acme");
    let mut events = b.subscribe(&acme).await.unwrap();
    let mut cancels = b.subscribe(&Channel::run_cancel()).await.unwrap();
    a.publish(&acme, "before".into()).await.unwrap();
    assert_eq!(next(&mut events).await, msg("before"));

    server.restart();
    // The subscriber reconnects on its own (backoff), and the open streams did not end.
    tokio::time::timeout(Duration::from_secs(30), b.wait_connected(1))
        .await
        .expect("resubscribed within 30 s");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The publisher's connection reconnects too; until then a publish may fail.
        if a.publish(&Channel::run_cancel(), "run_after".into())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "publishing never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next(&mut cancels).await, Some(Delivery::Lagged));
    assert_eq!(next(&mut cancels).await, msg("run_after"));
    a.publish(&acme, "after".into()).await.unwrap();
    assert_eq!(next(&mut events).await, Some(Delivery::Lagged));
    assert_eq!(next(&mut events).await, msg("after"));
}

// ---------------------------------------------------------------------------------------------------
// Rate limiter
// ---------------------------------------------------------------------------------------------------

async fn ratelimit_conformance(a: Arc<dyn RateLimiter>, b: Arc<dyn RateLimiter>) {
    let key = format!("POST:/api/things:apikey:{}", uuid::Uuid::new_v4());
    let w = Duration::from_secs(60);
    // The window starts at the first hit; hits on either instance count against one budget.
    for (i, rl) in [&a, &b, &a].into_iter().enumerate() {
        let d = rl.hit(&key, 3, w).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 2 - i as u32);
        assert_eq!(d.reset_secs, 60, "{d:?}");
        assert_eq!(
            d.header(),
            format!("limit=3, remaining={}, reset=60", 2 - i)
        );
        assert_eq!(d.policy(), "3;w=60");
    }
    let d = b.hit(&key, 3, w).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert!((1..=60).contains(&d.reset_secs), "{d:?}");
    // Another identity has its own bucket.
    let other = format!("{key}-other");
    assert_eq!(b.hit(&other, 3, w).await.unwrap().remaining, 2);

    // Concurrent hits are counted exactly: 50 at once against a limit of 20 admit exactly 20.
    let burst = format!("burst:{}", uuid::Uuid::new_v4());
    let hits = (0..50).map(|i| {
        let rl = if i % 2 == 0 { a.clone() } else { b.clone() };
        let burst = burst.clone();
        tokio::spawn(async move { rl.hit(&burst, 20, w).await.unwrap().allowed })
    });
    let allowed = futures::future::join_all(hits)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(allowed, 20);

    // A new window starts once the old one is over.
    let short = format!("short:{}", uuid::Uuid::new_v4());
    let w1 = Duration::from_secs(1);
    let first = a.hit(&short, 1, w1).await.unwrap();
    assert!(first.allowed);
    assert_eq!((first.reset_secs, first.window_secs), (1, 1));
    assert!(!b.hit(&short, 1, w1).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let d = b.hit(&short, 1, w1).await.unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.remaining, 0);
}

#[tokio::test]
async fn ratelimit_conformance_memory() {
    let rl: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::default());
    ratelimit_conformance(rl.clone(), rl).await;
}

#[tokio::test]
async fn ratelimit_conformance_redis() {
    let server = require!(RedisServer::start());
    let a = RedisRateLimiter::new(redis(&server).await);
    let b = RedisRateLimiter::new(redis(&server).await);
    assert_eq!(a.kind(), "redis");
    ratelimit_conformance(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn redis_ratelimiter_errors_while_redis_is_down_and_recovers() {
    let mut server = require!(RedisServer::start());
    let rl = RedisRateLimiter::new(redis(&server).await);
    let w = Duration::from_secs(60);
    assert!(rl.hit("k", 5, w).await.unwrap().allowed);
    server.stop();
    // An error (the callers let the request through), quickly: never a hang.
    let t = Instant::now();
    assert!(rl.hit("k", 5, w).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let d = loop {
        if let Ok(d) = rl.hit("k", 5, w).await {
            break d;
        }
        assert!(Instant::now() < deadline, "the limiter never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The append-only file kept the window: this is the second hit.
    assert_eq!(d.remaining, 3, "{d:?}");
}

// ---------------------------------------------------------------------------------------------------
// Job queue
// ---------------------------------------------------------------------------------------------------

/// Records deliveries and cron windows; optionally fails the first `fail_first` deliveries of each job.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    jobs: mpsc::UnboundedSender<(&'static str, Job, Instant)>,
    ticks: mpsc::UnboundedSender<(&'static str, Timestamp, Timestamp)>,
    fail_first: u32,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

#[async_trait]
impl JobHandler for Recorder {
    async fn handle(&self, job: Job) -> anyhow::Result<()> {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(job.kind.clone()).or_default();
            *n += 1;
            *n
        };
        let _ = self.jobs.send((self.name, job.clone(), Instant::now()));
        if n <= self.fail_first || job.payload["always_fail"] == true {
            anyhow::bail!("failure {n} of {}", job.kind);
        }
        Ok(())
    }
}

#[async_trait]
impl CronTick for Recorder {
    async fn tick(&self, after: Timestamp, until: Timestamp) {
        let _ = self.ticks.send((self.name, after, until));
    }
}

type Jobs = mpsc::UnboundedReceiver<(&'static str, Job, Instant)>;
type Ticks = mpsc::UnboundedReceiver<(&'static str, Timestamp, Timestamp)>;

fn recorder(name: &'static str, fail_first: u32) -> (Recorder, Jobs, Ticks) {
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let (ticks, ticks_rx) = mpsc::unbounded_channel();
    (
        Recorder {
            name,
            jobs,
            ticks,
            fail_first,
            seen: Arc::default(),
        },
        jobs_rx,
        ticks_rx,
    )
}

fn job(kind: &str) -> Job {
    Job {
        kind: kind.into(),
        payload: json!({"kind": kind}),
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, within: Duration) -> Option<T> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// What both queues promise. `lost_on_stop`: whether `stop()` counts a pending job as lost (in-process)
/// or keeps it (durable).
async fn queue_conformance(q: Arc<dyn JobQueue>, lost_on_stop: bool) {
    let (rec, mut jobs, mut ticks) = recorder("a", 0);
    q.start(Arc::new(rec.clone()), Arc::new(rec)).await;

    // Delayed jobs run once each, in due order, never before their delay.
    let t0 = Instant::now();
    for (kind, ms) in [("late", 1500u64), ("soon", 200), ("middle", 800)] {
        q.enqueue_delayed(job(kind), Duration::from_millis(ms))
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let (_, j, at) = recv(&mut jobs, Duration::from_secs(15))
            .await
            .expect("every job delivered");
        let due = match j.kind.as_str() {
            "late" => 1500,
            "middle" => 800,
            _ => 200,
        };
        assert!(
            at.duration_since(t0) >= Duration::from_millis(due),
            "{} delivered after {:?}",
            j.kind,
            at.duration_since(t0)
        );
        assert_eq!(j.payload, json!({"kind": j.kind}));
        order.push(j.kind);
    }
    assert_eq!(order, ["soon", "middle", "late"]);

    // The cron clock ticks at its cadence (1 s here) over contiguous windows.
    let mut windows = Vec::new();
    while windows.len() < 3 {
        let (_, after, until) = recv(&mut ticks, Duration::from_secs(15))
            .await
            .expect("the cron clock ticks");
        assert!(after < until, "{after} < {until}");
        windows.push((after, until));
    }
    for w in windows.windows(2) {
        assert_eq!(w[0].1, w[1].0, "windows are contiguous: {windows:?}");
    }
    let latest = windows.last().unwrap().1;
    assert!(
        (chrono::Utc::now() - latest).num_seconds().abs() < 5,
        "{latest}"
    );

    // Nothing was delivered twice.
    assert!(recv(&mut jobs, Duration::from_millis(1500)).await.is_none());

    // stop(): no delivery afterwards; the pending job is reported lost or kept.
    q.enqueue_delayed(job("after-stop"), Duration::from_millis(800))
        .await
        .unwrap();
    let lost = q.stop().await;
    assert_eq!(lost, usize::from(lost_on_stop));
    assert!(recv(&mut jobs, Duration::from_millis(2000)).await.is_none());
}

fn fast(options: RedisQueueOptions) -> RedisQueueOptions {
    RedisQueueOptions {
        job_poll: Duration::from_millis(50),
        retry_base: Duration::from_millis(200),
        ..options
    }
}

#[tokio::test]
async fn queue_conformance_local() {
    queue_conformance(Arc::new(LocalQueue::new(Duration::from_secs(1))), true).await;
}

#[tokio::test]
async fn queue_conformance_redis() {
    let server = require!(RedisServer::start());
    let q = RedisQueue::new(
        redis(&server).await,
        fast(RedisQueueOptions::new(Duration::from_secs(1))),
    );
    assert_eq!(q.kind(), "redis");
    let q = Arc::new(q);
    queue_conformance(q.clone(), false).await;
    // The job pending at stop() is still stored.
    assert_eq!(q.counts().await.unwrap().delayed, 1);
}

/// Two instances on one Redis: 40 jobs, each delivered exactly once across both; a job enqueued before a
/// stop is delivered by a queue started later (durable).
#[tokio::test]
async fn redis_queue_delivers_each_job_once_across_instances() {
    let server = require!(RedisServer::start());
    let opts = fast(RedisQueueOptions::new(Duration::from_secs(1)));
    let a = RedisQueue::new(redis(&server).await, opts.clone());
    let b = RedisQueue::new(redis(&server).await, opts.clone());
    let (rec_a, mut jobs, _ticks_a) = recorder("a", 0);
    let rec_b = Recorder {
        name: "b",
        ..rec_a.clone()
    };
    a.start(Arc::new(rec_a.clone()), Arc::new(rec_a)).await;
    b.start(Arc::new(rec_b.clone()), Arc::new(rec_b)).await;
    for i in 0..40u64 {
        let q = if i % 2 == 0 { &a } else { &b };
        q.enqueue_delayed(job(&format!("j{i}")), Duration::from_millis(i * 10))
            .await
            .unwrap();
    }
    let mut got = HashSet::new();
    while got.len() < 40 {
        let (_, j, _) = recv(&mut jobs, Duration::from_secs(15))
            .await
            .expect("all 40 delivered");
        assert!(got.insert(j.kind.clone()), "{} delivered twice", j.kind);
    }
    assert!(recv(&mut jobs, Duration::from_secs(1)).await.is_none());
    let counts = a.counts().await.unwrap();
    assert_eq!((counts.delayed, counts.processing, counts.dead), (0, 0, 0));
    assert_eq!(a.stop().await, 0);
    assert_eq!(b.stop().await, 0);

    // Enqueued while no instance runs, delivered by the next one.
    let c = RedisQueue::new(redis(&server).await, opts);
    c.enqueue_delayed(job("waiting"), Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rec_c, mut jobs_c, _ticks_c) = recorder("c", 0);
    c.start(Arc::new(rec_c.clone()), Arc::new(rec_c)).await;
    let (_, j, _) = recv(&mut jobs_c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(j.kind, "waiting");
    c.stop().await;
}

/// A failing handler is retried with exponential backoff; a job that keeps failing stops after
/// `max_attempts` deliveries and is kept aside in `appstrate:jobs:dead`.
#[tokio::test]
async fn redis_queue_retries_with_backoff_then_gives_up() {
    let server = require!(RedisServer::start());
    let opts = RedisQueueOptions {
        max_attempts: 3,
        ..fast(RedisQueueOptions::new(Duration::from_secs(30)))
    };
    let q = RedisQueue::new(redis(&server).await, opts);
    let (rec, mut jobs, _ticks) = recorder("a", 2);
    q.start(Arc::new(rec.clone()), Arc::new(rec)).await;

    q.enqueue_delayed(job("flaky"), Duration::ZERO)
        .await
        .unwrap();
    let mut at = Vec::new();
    for _ in 0..3 {
        let (_, j, t) = recv(&mut jobs, Duration::from_secs(15)).await.unwrap();
        assert_eq!(j.kind, "flaky");
        at.push(t);
    }
    // Backoff 200 ms, then 400 ms.
    assert!(at[1] - at[0] >= Duration::from_millis(200), "{at:?}");
    assert!(at[2] - at[1] >= Duration::from_millis(400), "{at:?}");
    // Succeeded on the third delivery: acknowledged, nothing more.
    assert!(recv(&mut jobs, Duration::from_secs(2)).await.is_none());

    q.enqueue_delayed(
        Job {
            kind: "doomed".into(),
            payload: json!({"always_fail": true}),
        },
        Duration::ZERO,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let (_, j, _) = recv(&mut jobs, Duration::from_secs(15)).await.unwrap();
        assert_eq!(j.kind, "doomed");
    }
    assert!(recv(&mut jobs, Duration::from_secs(3)).await.is_none());
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.delayed, counts.processing, counts.dead), (0, 0, 1));
    q.stop().await;
}

/// Runs `f` on a runtime of its own, on its own thread, until `kill` fires; then the runtime is dropped
/// with everything it was doing, as if the process had been SIGKILLed.
fn crashable_instance<F, Fut>(f: F) -> std::sync::mpsc::Sender<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(f());
        // Drive the instance until told to die.
        rt.block_on(local.run_until(async move {
            loop {
                if killed.try_recv().is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
        drop(local);
        drop(rt);
    });
    kill
}

/// An instance that dies while it holds a job: the job's lease expires and another instance runs it.
#[tokio::test]
async fn redis_queue_redelivers_the_job_of_a_crashed_instance() {
    let server = require!(RedisServer::start());
    let opts = RedisQueueOptions {
        lease: Duration::from_secs(2),
        ..fast(RedisQueueOptions::new(Duration::from_secs(30)))
    };
    let (claimed_tx, mut claimed) = mpsc::unbounded_channel();
    struct Hang(mpsc::UnboundedSender<String>);
    #[async_trait]
    impl JobHandler for Hang {
        async fn handle(&self, job: Job) -> anyhow::Result<()> {
            let _ = self.0.send(job.kind);
            futures::future::pending::<()>().await;
            Ok(())
        }
    }
    #[async_trait]
    impl CronTick for Hang {
        async fn tick(&self, _: Timestamp, _: Timestamp) {}
    }
    let url = server.url.clone();
    let a_opts = opts.clone();
    let kill = crashable_instance(move || async move {
        let q = RedisQueue::new(Redis::connect(&url).await.unwrap(), a_opts);
        let hang = Arc::new(Hang(claimed_tx));
        q.start(hang.clone(), hang).await;
        q.enqueue_delayed(job("precious"), Duration::ZERO)
            .await
            .unwrap();
        futures::future::pending::<()>().await;
    });
    assert_eq!(
        recv(&mut claimed, Duration::from_secs(15)).await.unwrap(),
        "precious"
    );
    kill.send(()).unwrap();

    let b = RedisQueue::new(redis(&server).await, opts);
    assert_eq!(
        b.counts().await.unwrap().processing,
        1,
        "held by the dead instance"
    );
    let (rec, mut jobs, _ticks) = recorder("b", 0);
    b.start(Arc::new(rec.clone()), Arc::new(rec)).await;
    let (_, j, _) = recv(&mut jobs, Duration::from_secs(15))
        .await
        .expect("re-delivered after the lease");
    assert_eq!(j.kind, "precious");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = b.counts().await.unwrap();
    assert_eq!((counts.delayed, counts.processing, counts.dead), (0, 0, 0));
    b.stop().await;
}

/// Redis killed and restarted (append-only file): committed jobs survive and are delivered, and the
/// queue keeps working afterwards.
#[tokio::test]
async fn redis_queue_survives_a_redis_restart() {
    let mut server = require!(RedisServer::start());
    let q = RedisQueue::new(
        redis(&server).await,
        fast(RedisQueueOptions::new(Duration::from_secs(1))),
    );
    let (rec, mut jobs, mut ticks) = recorder("a", 0);
    q.start(Arc::new(rec.clone()), Arc::new(rec)).await;
    for i in 0..5 {
        q.enqueue_delayed(job(&format!("before{i}")), Duration::from_secs(2))
            .await
            .unwrap();
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while q
        .enqueue_delayed(job("after"), Duration::from_millis(100))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "enqueue never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = HashSet::new();
    while got.len() < 6 {
        let (_, j, _) = recv(&mut jobs, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("jobs lost across the restart; got {got:?}"));
        assert!(got.insert(j.kind.clone()));
    }
    // The cron clock ticks again too.
    while ticks.try_recv().is_ok() {}
    assert!(recv(&mut ticks, Duration::from_secs(15)).await.is_some());
    q.stop().await;
}

/// Two instances tick the shared cron clock: the windows they are handed are contiguous and never
/// overlap. When the holder dies mid-tick, another instance takes over once its lease expires and covers
/// the dead holder's window again.
#[tokio::test]
async fn redis_cron_clock_is_shared_and_survives_a_crashed_holder() {
    let server = require!(RedisServer::start());
    let opts = RedisQueueOptions::new(Duration::from_secs(1));
    let a = RedisQueue::new(redis(&server).await, opts.clone());
    let b = RedisQueue::new(redis(&server).await, opts.clone());
    let (rec_a, _jobs, mut ticks) = recorder("a", 0);
    let rec_b = Recorder {
        name: "b",
        ..rec_a.clone()
    };
    a.start(Arc::new(rec_a.clone()), Arc::new(rec_a)).await;
    b.start(Arc::new(rec_b.clone()), Arc::new(rec_b)).await;
    let mut windows = Vec::new();
    while windows.len() < 8 {
        windows.push(
            recv(&mut ticks, Duration::from_secs(15))
                .await
                .expect("ticks"),
        );
    }
    a.stop().await;
    b.stop().await;
    for w in windows.windows(2) {
        assert_eq!(w[0].2, w[1].1, "contiguous, no overlap: {windows:?}");
    }

    // A holder that hangs in its tick and then dies.
    struct HangTick(mpsc::UnboundedSender<(Timestamp, Timestamp)>);
    #[async_trait]
    impl JobHandler for HangTick {
        async fn handle(&self, _: Job) -> anyhow::Result<()> {
            Ok(())
        }
    }
    #[async_trait]
    impl CronTick for HangTick {
        async fn tick(&self, after: Timestamp, until: Timestamp) {
            let _ = self.0.send((after, until));
            futures::future::pending::<()>().await;
        }
    }
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let url = server.url.clone();
    let c_opts = opts.clone();
    let kill = crashable_instance(move || async move {
        let q = RedisQueue::new(Redis::connect(&url).await.unwrap(), c_opts);
        let h = Arc::new(HangTick(held_tx));
        q.start(h.clone(), h).await;
        futures::future::pending::<()>().await;
    });
    let (dead_after, _) = recv(&mut held, Duration::from_secs(15)).await.unwrap();
    kill.send(()).unwrap();
    let t = Instant::now();
    let d = RedisQueue::new(redis(&server).await, opts.clone());
    let (rec_d, _jobs_d, mut ticks_d) = recorder("d", 0);
    d.start(Arc::new(rec_d.clone()), Arc::new(rec_d)).await;
    let (_, after, until) = recv(&mut ticks_d, Duration::from_secs(30))
        .await
        .expect("another instance takes the clock over");
    assert_eq!(
        after, dead_after,
        "the dead holder's window is covered again"
    );
    assert!(after < until);
    // Not before the lease (5 s at a 1 s poll) could expire.
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    d.stop().await;
}
