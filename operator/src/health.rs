//! Reading the API's `/health` (§22.3) behind a trait, so reconcile tests inject a fake.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Timeout of one health request.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The parts of the API's `/health` answer the operator uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ApiHealth {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub tier: Option<i64>,
    #[serde(default)]
    pub sidecar_pool: Option<PoolHealth>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PoolHealth {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub desired: i64,
    #[serde(default)]
    pub ready: i64,
}

impl ApiHealth {
    /// `healthy` and `degraded` (Docker trouble) both answer 200; `unhealthy` answers 503.
    pub fn is_serving(&self) -> bool {
        self.status == "healthy" || self.status == "degraded"
    }
}

#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// `GET {base_url}/health`; `Err` carries a one-line reason for the condition message.
    async fn check(&self, base_url: &str) -> Result<ApiHealth, String>;
}

/// The real probe: plain HTTP with a 2 s timeout.
///
/// The reconciler passes the Service's cluster IP when it knows it, so no DNS lookup is needed
/// (the operator image is a static binary without NSS).
#[derive(Clone)]
pub struct HttpHealthProbe {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Default for HttpHealthProbe {
    fn default() -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(HEALTH_TIMEOUT));
        HttpHealthProbe {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

#[async_trait]
impl HealthProbe for HttpHealthProbe {
    async fn check(&self, base_url: &str) -> Result<ApiHealth, String> {
        let uri: http::Uri = format!("{base_url}/health")
            .parse()
            .map_err(|e| format!("bad health URL: {e}"))?;
        let fetch = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading body failed: {e}"))?
                .to_bytes();
            let health: ApiHealth = serde_json::from_slice(&body)
                .map_err(|_| format!("/health answered {status} without the expected JSON"))?;
            Ok(health)
        };
        tokio::time::timeout(HEALTH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer within {} s", HEALTH_TIMEOUT.as_secs()))?
    }
}

/// A probe for tests and for clusters the operator cannot reach: always the same answer.
#[derive(Debug, Clone)]
pub struct StaticHealthProbe(pub Result<ApiHealth, String>);

#[async_trait]
impl HealthProbe for StaticHealthProbe {
    async fn check(&self, _base_url: &str) -> Result<ApiHealth, String> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_health_answer() {
        let body = r#"{"status":"healthy","version":{"app":"0.1.0","commit":"abc1234"},"uptime_ms":1234,"tier":3,"isolation":"container",
 "adapters":{"database":"postgres"},"checks":{},"sidecar_pool":{"enabled":true,"desired":2,"ready":1}}"#;
        let h: ApiHealth = serde_json::from_str(body).unwrap();
        assert!(h.is_serving());
        assert_eq!(h.tier, Some(3));
        assert_eq!(
            h.sidecar_pool,
            Some(PoolHealth {
                enabled: true,
                desired: 2,
                ready: 1
            })
        );
        let starting: ApiHealth = serde_json::from_str(r#"{"status":"starting"}"#).unwrap();
        assert!(!starting.is_serving());
    }

    #[tokio::test]
    async fn unreachable_api_is_an_error_not_a_hang() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let err = HttpHealthProbe::default()
            .check("http://127.0.0.1:9")
            .await
            .unwrap_err();
        assert!(
            err.contains("request failed") || err.contains("no answer"),
            "{err}"
        );
    }
}
