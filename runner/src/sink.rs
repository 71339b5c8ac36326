//! The event-sink client (§12): every request is signed with Standard Webhooks headers using the run's
//! sink secret; events are CloudEvents 1.0 with strictly increasing sequences starting at 1.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::cell::Cell;
use std::time::Duration;

/// How often a transient sink failure (connection error, 429, 5xx) is retried, and the first delay.
const SINK_ATTEMPTS: u32 = 4;
const SINK_FIRST_DELAY: Duration = Duration::from_millis(200);
const SINK_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// `v1,<base64 HMAC-SHA256(secret, "{id}.{ts}.{body}")>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// What became of a request to the sink.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// 2xx, with the response body.
    Accepted(Vec<u8>),
    /// 410: the run's sink is closed (finalized elsewhere, e.g. cancelled).
    Closed,
    /// Anything else after retries.
    Failed(String),
}

pub struct Sink {
    http: reqwest::Client,
    secret: String,
    run_id: String,
    events_url: String,
    finalize_url: String,
    heartbeat_url: String,
    sequence: Cell<u64>,
}

impl Sink {
    pub fn new(http: reqwest::Client, cfg: &crate::config::Config) -> Sink {
        Sink {
            http,
            secret: cfg.sink_secret.clone(),
            run_id: cfg.run_id.clone(),
            events_url: cfg.sink_url.clone(),
            finalize_url: cfg.finalize_url.clone(),
            heartbeat_url: cfg.heartbeat_url(),
            sequence: Cell::new(0),
        }
    }

    /// Builds the next CloudEvent of `type` and consumes a sequence number.
    pub fn cloud_event(&self, event_type: &str, data: Value) -> (String, Vec<u8>) {
        let seq = self.sequence.get() + 1;
        self.sequence.set(seq);
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!({
            "specversion": "1.0",
            "type": event_type,
            "source": format!("/afps/runs/{}", self.run_id),
            "id": id,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": data,
            "sequence": seq,
        });
        (id, serde_json::to_vec(&body).expect("serialisable"))
    }

    /// Posts one event. Delivery problems are reported on stderr; the run goes on.
    pub async fn emit(&self, event_type: &str, data: Value) -> Delivery {
        let (id, body) = self.cloud_event(event_type, data);
        let d = self.post(&self.events_url, &id, body).await;
        if let Delivery::Failed(e) = &d {
            eprintln!("[runner] event {event_type} not delivered: {e}");
        }
        d
    }

    pub async fn progress(&self, message: &str, data: Option<Value>) -> Delivery {
        let mut body = json!({ "message": message });
        if let Some(d) = data {
            body["data"] = d;
        }
        self.emit("appstrate.progress", body).await
    }

    pub async fn heartbeat(&self) -> Delivery {
        let id = uuid::Uuid::new_v4().to_string();
        self.post_once(&self.heartbeat_url, &id, b"{}".to_vec())
            .await
    }

    pub async fn finalize(&self, result: &Value) -> Delivery {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::to_vec(result).expect("serialisable");
        self.post(&self.finalize_url, &id, body).await
    }

    /// Signed GET of the run bundle: 5 attempts, backoff 200 ms doubling up to 2 s.
    pub async fn fetch_bundle(&self, url: &str) -> Result<Vec<u8>, BundleFetchError> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=5 {
            let id = uuid::Uuid::new_v4().to_string();
            let ts = chrono::Utc::now().timestamp();
            let res = self
                .http
                .get(url)
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sign(&self.secret, &id, ts, b""))
                .headers(crate::trace::headers())
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => return Ok(b.to_vec()),
                    Err(e) => last = format!("reading bundle: {e}"),
                },
                Ok(r) if r.status().as_u16() == 410 => return Err(BundleFetchError::Closed),
                Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                Err(e) => last = error_chain(&e),
            }
            if attempt < 5 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        Err(BundleFetchError::Failed(last))
    }

    async fn post(&self, url: &str, id: &str, body: Vec<u8>) -> Delivery {
        let mut delay = SINK_FIRST_DELAY;
        let mut last = Delivery::Failed("not attempted".into());
        for attempt in 1..=SINK_ATTEMPTS {
            match self.try_post(url, id, body.clone()).await {
                Attempt::Done(d) => return d,
                Attempt::Transient(e) => last = Delivery::Failed(e),
            }
            if attempt < SINK_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        last
    }

    async fn post_once(&self, url: &str, id: &str, body: Vec<u8>) -> Delivery {
        match self.try_post(url, id, body).await {
            Attempt::Done(d) => d,
            Attempt::Transient(e) => Delivery::Failed(e),
        }
    }

    async fn try_post(&self, url: &str, id: &str, body: Vec<u8>) -> Attempt {
        let ts = chrono::Utc::now().timestamp();
        let sig = sign(&self.secret, id, ts, &body);
        let res = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .headers(crate::trace::headers())
            .body(body)
            .timeout(SINK_REQUEST_TIMEOUT)
            .send()
            .await;
        match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let bytes = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                match status {
                    200..=299 => Attempt::Done(Delivery::Accepted(bytes)),
                    410 => Attempt::Done(Delivery::Closed),
                    429 | 500..=599 => Attempt::Transient(format!("HTTP {status}")),
                    _ => Attempt::Done(Delivery::Failed(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    ))),
                }
            }
            Err(e) => Attempt::Transient(error_chain(&e)),
        }
    }
}

enum Attempt {
    Done(Delivery),
    Transient(String),
}

#[derive(Debug)]
pub enum BundleFetchError {
    Closed,
    Failed(String),
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_standard_webhooks_reference() {
        // Recomputed independently: HMAC-SHA256 over "{id}.{ts}.{body}" with the secret's UTF-8 bytes.
        let sig = sign(
            "whsec-like-secret-with-32-chars!!",
            "msg_1",
            1_700_000_000,
            b"{}",
        );
        assert!(sig.starts_with("v1,"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sig[3..])
            .unwrap();
        assert_eq!(raw.len(), 32);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-like-secret-with-32-chars!!").unwrap();
        mac.update(b"msg_1.1700000000.{}");
        mac.verify_slice(&raw).unwrap();
        assert_ne!(
            sig,
            sign(
                "whsec-like-secret-with-32-chars!!",
                "msg_2",
                1_700_000_000,
                b"{}"
            )
        );
    }
}
