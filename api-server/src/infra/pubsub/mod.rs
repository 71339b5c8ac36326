//! The `PubSub` concern: run updates and cancellations fanned out to every subscriber (SSE streams,
//! long-polls, the instance that holds a run's workload). In-process at Tier 0/1, Redis channels at Tier 2+.

mod local;
mod redis;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use local::LocalPubSub;
pub use redis::RedisPubSub;

/// The channels of §4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `appstrate:runs:events`: run_update, run_log and run_metric frames.
    RunEvents,
    /// `appstrate:runs:cancel`: run ids whose workload must stop.
    RunCancel,
}

impl Topic {
    pub fn channel(self) -> &'static str {
        match self {
            Topic::RunEvents => "appstrate:runs:events",
            Topic::RunCancel => "appstrate:runs:cancel",
        }
    }
}

#[async_trait]
pub trait PubSub: Send + Sync {
    /// `local` or `redis`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    async fn publish(&self, topic: Topic, payload: String) -> anyhow::Result<()>;
    /// A stream of every message published on `topic` from now on (by any instance, for a shared
    /// backend). A subscriber that falls too far behind is dropped: its stream ends. Nothing else ends
    /// it: a backend outage pauses delivery (messages published meanwhile may be lost), it does not end
    /// the stream.
    async fn subscribe(&self, topic: Topic) -> anyhow::Result<BoxStream<'static, String>>;
}
