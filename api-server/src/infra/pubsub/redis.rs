//! Redis pub/sub (Tier 2): the channels `appstrate:runs:events:<org id>` and `appstrate:runs:cancel`,
//! shared by every instance on the same Redis.
//!
//! One dedicated subscriber connection per process listens on `appstrate:runs:cancel` and the pattern
//! `appstrate:runs:events:*` and fans messages out to the local per-channel hub (as
//! [`super::LocalPubSub`]), so a subscription costs no Redis connection and has exactly the local
//! semantics: a lagging subscriber is told so and goes on, and nothing ever ends a stream. When the
//! subscriber connection breaks (a Redis restart), a background task reconnects and resubscribes with
//! exponential backoff (100 ms doubling up to 5 s); the local streams stay open across the outage.
//! Messages published while Redis is down are lost, as with any Redis pub/sub: after resubscribing every
//! local subscriber gets [`Delivery::Lagged`] and re-reads the database.
//!
//! Publishing goes through the shared auto-reconnecting command connection; during an outage it fails with
//! an error the callers log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;

use super::hub::Hub;
use super::{Channel, Delivery, PubSub, CANCEL, EVENTS_PREFIX};
use crate::infra::redis_client::{OutageLog, Redis, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// How often the subscriber connection is probed with `PING` while idle, so a half-open connection
/// (no RST from a vanished server) is noticed.
const PROBE_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RedisPubSub {
    redis: Redis,
    hub: Arc<Hub>,
    /// How many times the subscriber connection has been (re)established; for tests and diagnostics.
    connected: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
}

impl RedisPubSub {
    /// Subscribes to both channels, then keeps the subscription alive in the background. Fails when the
    /// first subscription cannot be established, so a misconfigured Redis stops boot.
    pub async fn connect(redis: Redis) -> anyhow::Result<RedisPubSub> {
        let hub = Hub::new();
        let (connected_tx, connected) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let first = subscriber(&redis).await?;
        let _ = connected_tx.send(1);
        tokio::spawn(run(
            redis.clone(),
            first,
            hub.clone(),
            connected_tx,
            stop_rx,
        ));
        Ok(RedisPubSub {
            redis,
            hub,
            connected,
            stop,
        })
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

/// A subscriber connection listening on the cancel channel and every organization's events channel.
async fn subscriber(redis: &Redis) -> anyhow::Result<redis::aio::PubSub> {
    let mut ps = tokio::time::timeout(CONNECT_TIMEOUT, redis.client().get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("connecting the subscriber timed out"))??;
    tokio::time::timeout(RESPONSE_TIMEOUT, ps.subscribe(CANCEL))
        .await
        .map_err(|_| anyhow::anyhow!("SUBSCRIBE timed out"))??;
    tokio::time::timeout(RESPONSE_TIMEOUT, ps.psubscribe(format!("{EVENTS_PREFIX}*")))
        .await
        .map_err(|_| anyhow::anyhow!("PSUBSCRIBE timed out"))??;
    Ok(ps)
}

/// Forwards messages until the connection breaks, then reconnects with backoff; ends only on stop.
async fn run(
    redis: Redis,
    first: redis::aio::PubSub,
    hub: Arc<Hub>,
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
                        // Whatever was published during the outage is lost: subscribers re-read.
                        hub.gap();
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
                        // No local subscriber is not an error.
                        hub.deliver(msg.get_channel_name(), &payload);
                    }
                    None => break,
                },
                _ = probe.tick() => {
                    let pong = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
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

    async fn publish(&self, channel: &Channel, payload: String) -> anyhow::Result<()> {
        let mut conn = self.redis.conn();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel.name())
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn subscribe(&self, channel: &Channel) -> anyhow::Result<BoxStream<'static, Delivery>> {
        Ok(self.hub.subscribe(channel.name()))
    }
}
