//! Redis pub/sub (Tier 2): the channels `appstrate:runs:events` and `appstrate:runs:cancel`, shared by every
//! instance on the same Redis.
//!
//! One dedicated subscriber connection per process listens on both channels and fans messages out to local
//! tokio `broadcast` channels (capacity 1024, as [`super::LocalPubSub`]), so a subscription costs no Redis
//! connection and has exactly the local semantics: a lagging subscriber is dropped (its stream ends), and
//! nothing else ever ends a stream. When the subscriber connection breaks (a Redis restart), a background
//! task reconnects and resubscribes with exponential backoff (100 ms doubling up to 5 s); the local
//! streams stay open across the outage and resume delivering afterwards. Messages published while Redis is
//! down are lost, as with any Redis pub/sub: the long-poll re-reads the database every 2 s and SSE clients
//! get the next update.
//!
//! Publishing goes through the shared auto-reconnecting command connection; during an outage it fails with
//! an error the callers log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{broadcast, watch};

use super::{PubSub, Topic};
use crate::infra::redis_client::{OutageLog, Redis, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

const CAPACITY: usize = 1024;
/// How often the subscriber connection is probed with `PING` while idle, so a half-open connection
/// (no RST from a vanished server) is noticed.
const PROBE_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RedisPubSub {
    redis: Redis,
    events: broadcast::Sender<String>,
    cancel: broadcast::Sender<String>,
    /// How many times the subscriber connection has been (re)established; for tests and diagnostics.
    connected: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
}

impl RedisPubSub {
    /// Subscribes to both channels, then keeps the subscription alive in the background. Fails when the
    /// first subscription cannot be established, so a misconfigured Redis stops boot.
    pub async fn connect(redis: Redis) -> anyhow::Result<RedisPubSub> {
        let events = broadcast::channel(CAPACITY).0;
        let cancel = broadcast::channel(CAPACITY).0;
        let (connected_tx, connected) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let first = subscriber(&redis).await?;
        let _ = connected_tx.send(1);
        tokio::spawn(run(
            redis.clone(),
            first,
            events.clone(),
            cancel.clone(),
            connected_tx,
            stop_rx,
        ));
        Ok(RedisPubSub {
            redis,
            events,
            cancel,
            connected,
            stop,
        })
    }

    fn sender(&self, topic: Topic) -> &broadcast::Sender<String> {
        match topic {
            Topic::RunEvents => &self.events,
            Topic::RunCancel => &self.cancel,
        }
    }

    /// Waits until the subscriber connection has been established more than `n` times in total (the first
    /// connection counts as 1): after a Redis restart, `wait_connected(1)` returns once it resubscribed.
    pub async fn wait_connected(&self, n: u64) {
        let mut rx = self.connected.clone();
        let _ = rx.wait_for(|c| *c > n).await;
    }

    pub fn connections(&self) -> u64 {
        *self.connected.borrow()
    }
}

impl Drop for RedisPubSub {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A subscriber connection listening on both channels.
async fn subscriber(redis: &Redis) -> anyhow::Result<redis::aio::PubSub> {
    let mut ps = tokio::time::timeout(CONNECT_TIMEOUT, redis.client().get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("connecting the subscriber timed out"))??;
    tokio::time::timeout(
        RESPONSE_TIMEOUT,
        ps.subscribe(&[Topic::RunEvents.channel(), Topic::RunCancel.channel()]),
    )
    .await
    .map_err(|_| anyhow::anyhow!("SUBSCRIBE timed out"))??;
    Ok(ps)
}

/// Forwards messages until the connection breaks, then reconnects with backoff; ends only on stop.
async fn run(
    redis: Redis,
    first: redis::aio::PubSub,
    events: broadcast::Sender<String>,
    cancel: broadcast::Sender<String>,
    connected: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let outage = Arc::new(OutageLog::default());
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let ps = match current.take() {
            Some(ps) => ps,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                match subscriber(&redis).await {
                    Ok(ps) => {
                        outage.ok("pub/sub subscriber");
                        connected.send_modify(|c| *c += 1);
                        ps
                    }
                    Err(e) => {
                        outage.failed("pub/sub subscriber", &e);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = ps.split();
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let Ok(payload) = msg.get_payload::<String>() else { continue };
                        let tx = if msg.get_channel_name() == Topic::RunCancel.channel() {
                            &cancel
                        } else {
                            &events
                        };
                        // No local subscriber is not an error.
                        let _ = tx.send(payload);
                    }
                    None => break,
                },
                _ = probe.tick() => {
                    let pong = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<String>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
                _ = stop.changed() => return,
            }
        }
        outage.failed(
            "pub/sub subscriber",
            &"connection lost; resubscribing with backoff",
        );
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, topic: Topic, payload: String) -> anyhow::Result<()> {
        let mut conn = self.redis.conn();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(topic.channel())
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn subscribe(&self, topic: Topic) -> anyhow::Result<BoxStream<'static, String>> {
        let rx = self.sender(topic).subscribe();
        // As LocalPubSub: the stream ends only when this subscriber lags (or the adapter is dropped).
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(msg) => Some((msg, rx)),
                Err(_) => None,
            }
        })
        .boxed())
    }
}
