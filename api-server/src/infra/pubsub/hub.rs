//! The local fan-out shared by both adapters: one `broadcast` channel per pub/sub channel name, created
//! on first subscription and removed when its last subscriber is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Delivery, CAPACITY};

#[derive(Clone, Debug)]
enum Item {
    Message(Arc<str>),
    /// Messages may have been lost upstream (a backend outage).
    Gap,
}

#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<Item>>>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Hands `payload` to the local subscribers of `channel` (none is not an error).
    pub fn deliver(&self, channel: &str, payload: &str) {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(channel) {
            let _ = tx.send(Item::Message(Arc::from(payload)));
        }
    }

    /// Tells every subscriber that messages may have been lost (after a backend outage).
    pub fn gap(&self) {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        for tx in map.values() {
            let _ = tx.send(Item::Gap);
        }
    }

    /// Channels with at least one subscriber; for tests and diagnostics.
    pub fn channel_count(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn subscribe(self: &Arc<Self>, channel: &str) -> BoxStream<'static, Delivery> {
        let rx = {
            let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(channel.to_string())
                .or_insert_with(|| broadcast::channel(CAPACITY).0)
                .subscribe()
        };
        let sub = Subscription {
            rx: Some(rx),
            hub: self.clone(),
            channel: channel.to_string(),
        };
        futures::stream::unfold(sub, |mut sub| async move {
            let rx = sub.rx.as_mut()?;
            let delivery = match rx.recv().await {
                Ok(Item::Message(m)) => Delivery::Message(m.to_string()),
                Ok(Item::Gap) => Delivery::Lagged,
                // The receiver goes on with the oldest message still held.
                Err(RecvError::Lagged(_)) => Delivery::Lagged,
                Err(RecvError::Closed) => return None,
            };
            Some((delivery, sub))
        })
        .boxed()
    }
}

/// One subscriber; removes its channel from the hub when it was the last one.
struct Subscription {
    rx: Option<broadcast::Receiver<Item>>,
    hub: Arc<Hub>,
    channel: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.hub.channels.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.rx.take());
        if map
            .get(&self.channel)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.channel);
        }
    }
}
