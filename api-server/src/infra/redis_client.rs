//! The shared Redis connection of Tier 2 (`REDIS_URL`): one auto-reconnecting multiplexed connection for
//! commands and scripts (the queue, the rate limiter, pub/sub publishing, `/health`), plus the client that
//! pub/sub uses to open its dedicated subscriber connection.
//!
//! Never log the URL: it may carry a password. [`Redis::endpoint`] is the `host:port` part only.
//!
//! `rediss://` connects over TLS (rustls). The server certificate is checked against the system's CA
//! store, or against the CA certificate(s) of `REDIS_CA_CERT` (a PEM file) for a private CA.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Client;

/// How long one command may take before it fails (and the caller falls back: fail-open rate limiting,
/// a retried queue poll, a warning for a publish).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected Redis: cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct Redis {
    client: Client,
    conn: ConnectionManager,
    endpoint: String,
}

/// Why Redis could not be reached at boot. The display never contains the URL.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("REDIS_URL is not a valid Redis URL ({0})")]
    Url(String),
    #[error("cannot connect to Redis at {endpoint} ({reason})")]
    Connect { endpoint: String, reason: String },
}

/// `host:port` of a parsed client, without credentials.
fn endpoint_of(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// A redis error as text, scrubbed of anything that looks like the URL's password.
pub fn describe(e: &redis::RedisError, url: &str) -> String {
    let text = e.to_string();
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(p) if !p.is_empty() => text.replace(&p, "[redacted]"),
        _ => text,
    }
}

/// A client for `url`; for `rediss://`, with TLS verified against `ca_pem` (PEM certificates) when
/// given, else against the system's CA store.
pub fn open_client(url: &str, ca_pem: Option<Vec<u8>>) -> Result<Client, ConnectError> {
    let tls = url.starts_with("rediss://");
    if tls {
        // redis' rustls support uses the process-wide provider; several are compiled in, so pick one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }
    let client = match ca_pem {
        Some(root_cert) if tls => Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
        _ => Client::open(url),
    };
    client.map_err(|e| ConnectError::Url(describe(&e, url)))
}

impl Redis {
    /// Connects and checks the server answers `PING` (TLS against the system's CA store for
    /// `rediss://`).
    pub async fn connect(url: &str) -> Result<Redis, ConnectError> {
        Self::connect_with_ca(url, None).await
    }

    /// Like [`Redis::connect`], trusting the PEM CA certificate(s) `ca_pem` for `rediss://`.
    pub async fn connect_with_ca(
        url: &str,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Redis, ConnectError> {
        let client = open_client(url, ca_pem)?;
        let endpoint = endpoint_of(&client);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // A command during an outage waits for at most a few quick reconnection attempts, then fails
            // (the next command tries again): callers never hang on a dead Redis.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 3,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| ConnectError::Connect {
            endpoint: endpoint.clone(),
            reason: "timed out".into(),
        })?
        .map_err(|e| ConnectError::Connect {
            endpoint: endpoint.clone(),
            reason: describe(&e, url),
        })?;
        let redis = Redis {
            client,
            conn,
            endpoint,
        };
        redis.ping().await.map_err(|e| ConnectError::Connect {
            endpoint: redis.endpoint.clone(),
            reason: e.to_string(),
        })?;
        Ok(redis)
    }

    /// A handle on the shared, auto-reconnecting connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `host:port`, safe to log.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `PING`, for `/health`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let pong: String =
            tokio::time::timeout(RESPONSE_TIMEOUT, redis::cmd("PING").query_async(&mut conn))
                .await
                .map_err(|_| anyhow::anyhow!("PING timed out"))??;
        anyhow::ensure!(pong == "PONG", "unexpected PING answer {pong:?}");
        Ok(())
    }
}

/// Logs at most one warning per outage of a background worker, and one info line when it recovers, so a
/// Redis restart does not flood the logs.
#[derive(Default)]
pub struct OutageLog {
    down: std::sync::atomic::AtomicBool,
}

impl OutageLog {
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %error, "{what}: Redis unavailable; retrying");
        }
    }

    pub fn ok(&self, what: &str) {
        if self.down.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("{what}: Redis available again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_the_password() {
        let url = "redis://user:s3cr3t-pass@127.0.0.1:1/0";
        let e = redis::RedisError::from((
            redis::ErrorKind::Io,
            "boom",
            "while talking to redis://user:s3cr3t-pass@127.0.0.1:1".to_string(),
        ));
        let text = describe(&e, url);
        assert!(!text.contains("s3cr3t-pass"), "{text}");
        let client = Client::open(url).unwrap();
        assert_eq!(endpoint_of(&client), "127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_endpoint_not_the_password() {
        // Port 1 on loopback: nothing listens there.
        let err = Redis::connect("redis://:hunter2-secret@127.0.0.1:1")
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("hunter2-secret"), "{text}");
    }
}
