//! In-process pub/sub: the [`Hub`] alone.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::hub::Hub;
use super::{Channel, Delivery, PubSub};

pub struct LocalPubSub {
    hub: Arc<Hub>,
}

impl Default for LocalPubSub {
    fn default() -> Self {
        Self { hub: Hub::new() }
    }
}

impl LocalPubSub {
    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.hub.channel_count()
    }
}

#[async_trait]
impl PubSub for LocalPubSub {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, channel: &Channel, payload: String) -> anyhow::Result<()> {
        self.hub.deliver(channel.name(), &payload);
        Ok(())
    }

    async fn subscribe(&self, channel: &Channel) -> anyhow::Result<BoxStream<'static, Delivery>> {
        Ok(self.hub.subscribe(channel.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CAPACITY;
    use super::*;
    use futures::StreamExt;

    fn msg(s: &str) -> Delivery {
        Delivery::Message(s.to_string())
    }

    #[tokio::test]
    async fn fan_out_and_partition_isolation() {
        let ps = LocalPubSub::default();
        let acme = Channel::run_events("org_acme");
        let other = Channel::run_events("org_other");
        let mut a = ps.subscribe(&acme).await.unwrap();
        let mut b = ps.subscribe(&acme).await.unwrap();
        let mut o = ps.subscribe(&other).await.unwrap();
        let mut c = ps.subscribe(&Channel::run_cancel()).await.unwrap();
        ps.publish(&acme, "one".into()).await.unwrap();
        ps.publish(&other, "two".into()).await.unwrap();
        ps.publish(&Channel::run_cancel(), "run_1".into())
            .await
            .unwrap();
        assert_eq!(a.next().await.unwrap(), msg("one"));
        assert_eq!(b.next().await.unwrap(), msg("one"));
        assert_eq!(o.next().await.unwrap(), msg("two"));
        assert_eq!(c.next().await.unwrap(), msg("run_1"));
        assert_eq!(ps.channel_count(), 3);
        drop((a, b, o, c));
        assert_eq!(
            ps.channel_count(),
            0,
            "channels without subscribers are removed"
        );
    }

    /// 1,100 messages to a stalled subscriber: it is told it lagged, then goes on receiving (the newest
    /// messages still held, then new ones); a subscriber of another organization lags not at all.
    #[tokio::test]
    async fn a_lagging_subscriber_recovers_and_other_partitions_are_unaffected() {
        let ps = LocalPubSub::default();
        let busy = Channel::run_events("org_busy");
        let quiet = Channel::run_events("org_quiet");
        let mut stalled = ps.subscribe(&busy).await.unwrap();
        let mut calm = ps.subscribe(&quiet).await.unwrap();
        for i in 0..1100 {
            ps.publish(&busy, i.to_string()).await.unwrap();
        }
        ps.publish(&quiet, "hello".into()).await.unwrap();
        assert_eq!(stalled.next().await.unwrap(), Delivery::Lagged);
        let first_kept = 1100 - CAPACITY;
        assert_eq!(stalled.next().await.unwrap(), msg(&first_kept.to_string()));
        for _ in first_kept + 1..1100 {
            assert!(matches!(stalled.next().await, Some(Delivery::Message(_))));
        }
        ps.publish(&busy, "after".into()).await.unwrap();
        assert_eq!(stalled.next().await.unwrap(), msg("after"));
        assert_eq!(calm.next().await.unwrap(), msg("hello"));
    }
}
