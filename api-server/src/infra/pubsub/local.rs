//! In-process pub/sub on tokio `broadcast` channels (capacity 1024 each).

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;

use super::{PubSub, Topic};

const CAPACITY: usize = 1024;

pub struct LocalPubSub {
    events: broadcast::Sender<String>,
    cancel: broadcast::Sender<String>,
}

impl Default for LocalPubSub {
    fn default() -> Self {
        Self {
            events: broadcast::channel(CAPACITY).0,
            cancel: broadcast::channel(CAPACITY).0,
        }
    }
}

impl LocalPubSub {
    fn sender(&self, topic: Topic) -> &broadcast::Sender<String> {
        match topic {
            Topic::RunEvents => &self.events,
            Topic::RunCancel => &self.cancel,
        }
    }
}

#[async_trait]
impl PubSub for LocalPubSub {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, topic: Topic, payload: String) -> anyhow::Result<()> {
        // No subscribers is not an error.
        let _ = self.sender(topic).send(payload);
        Ok(())
    }

    async fn subscribe(&self, topic: Topic) -> anyhow::Result<BoxStream<'static, String>> {
        let rx = self.sender(topic).subscribe();
        // A lagging subscriber is dropped: the stream ends at the first `Lagged`.
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(msg) => Some((msg, rx)),
                Err(_) => None,
            }
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fan_out_and_topic_isolation() {
        let ps = LocalPubSub::default();
        let mut a = ps.subscribe(Topic::RunEvents).await.unwrap();
        let mut b = ps.subscribe(Topic::RunEvents).await.unwrap();
        let mut c = ps.subscribe(Topic::RunCancel).await.unwrap();
        ps.publish(Topic::RunEvents, "one".into()).await.unwrap();
        ps.publish(Topic::RunCancel, "run_1".into()).await.unwrap();
        assert_eq!(a.next().await.unwrap(), "one");
        assert_eq!(b.next().await.unwrap(), "one");
        assert_eq!(c.next().await.unwrap(), "run_1");
    }

    #[tokio::test]
    async fn lagging_subscriber_is_dropped() {
        let ps = LocalPubSub::default();
        let mut slow = ps.subscribe(Topic::RunEvents).await.unwrap();
        for i in 0..(CAPACITY + 10) {
            ps.publish(Topic::RunEvents, i.to_string()).await.unwrap();
        }
        assert!(slow.next().await.is_none());
    }
}
