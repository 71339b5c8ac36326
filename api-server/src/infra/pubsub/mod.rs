//! The `PubSub` concern: run updates and cancellations fanned out to every subscriber (SSE streams,
//! long-polls, the instance that holds a run's workload). In-process at Tier 0/1, Redis channels at Tier 2+.
//!
//! The fan-out is partitioned: run events go to one channel per organization
//! (`appstrate:runs:events:<org id>`), so one organization's burst cannot make another's subscribers fall
//! behind; cancellations go to `appstrate:runs:cancel`. Locally every channel is a tokio `broadcast`
//! (capacity 1024 per channel), created on first subscription and removed when its last subscriber is
//! gone. A subscriber that falls behind is not dropped: its stream yields [`Delivery::Lagged`] and goes on
//! with the next messages, and the subscriber re-reads what it missed from the database.

mod hub;
mod local;
mod redis;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use local::LocalPubSub;
pub use redis::RedisPubSub;

/// Capacity of each local channel: a subscriber more than this many messages behind lags.
pub const CAPACITY: usize = 1024;

const EVENTS_PREFIX: &str = "appstrate:runs:events:";
const CANCEL: &str = "appstrate:runs:cancel";

/// A pub/sub channel (§4.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel(String);

impl Channel {
    /// `appstrate:runs:events:<org id>`: run_update, run_log and run_metric frames of one organization.
    pub fn run_events(org_id: &str) -> Channel {
        Channel(format!("{EVENTS_PREFIX}{org_id}"))
    }

    /// `appstrate:runs:cancel`: run ids whose workload must stop.
    pub fn run_cancel() -> Channel {
        Channel(CANCEL.to_string())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message, in publication order.
    Message(String),
    /// Messages were missed (this subscriber fell more than [`CAPACITY`] behind, or the shared backend
    /// was unreachable for a while): the subscriber must re-read the state it follows from the database.
    /// Delivery goes on afterwards.
    Lagged,
}

#[async_trait]
pub trait PubSub: Send + Sync {
    /// `local` or `redis`, as reported by `/health`.
    fn kind(&self) -> &'static str;
    async fn publish(&self, channel: &Channel, payload: String) -> anyhow::Result<()>;
    /// A stream of every message published on `channel` from now on (by any instance, for a shared
    /// backend), with [`Delivery::Lagged`] where messages were missed. Nothing ends it but dropping the
    /// adapter.
    async fn subscribe(&self, channel: &Channel) -> anyhow::Result<BoxStream<'static, Delivery>>;
}
