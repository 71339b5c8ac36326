//! The waiting state of a run slot's runner (docs/runner.md "Waiting for a run"): with
//! `RUNNER_CONFIG_URL` set, the runner starts before its run exists and holds nothing run-specific.
//! It long-polls its own sidecar's `GET /agent-config` until the platform has configured that sidecar,
//! receives the run's variables once, and merges them over its own environment.

use std::collections::BTreeMap;
use std::time::Duration;

/// How long a runner waits for its run when `RUNNER_CONFIG_WAIT_SECONDS` is not set.
pub const DEFAULT_WAIT_SECS: u64 = 600;

/// The bound of the waiting state: `RUNNER_CONFIG_WAIT_SECONDS`, else [`DEFAULT_WAIT_SECS`].
pub fn wait_bound(get: impl Fn(&str) -> Option<String>) -> Result<Duration, String> {
    match get("RUNNER_CONFIG_WAIT_SECONDS") {
        None => Ok(Duration::from_secs(DEFAULT_WAIT_SECS)),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => Err(format!(
                "RUNNER_CONFIG_WAIT_SECONDS must be a positive integer, got {raw:?}"
            )),
        },
    }
}

#[derive(serde::Deserialize)]
struct Handed {
    env: BTreeMap<String, String>,
}

/// Waits for the run's variables at `url` for at most `bound`. The sidecar is on the run network and
/// is reached directly (never through a proxy). A refusal (403, 404, 410) is final.
pub async fn fetch(url: &str, bound: Duration) -> Result<BTreeMap<String, String>, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .hickory_dns(true)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no run configuration arrived within {} s (RUNNER_CONFIG_WAIT_SECONDS)",
                bound.as_secs()
            ));
        }
        let wait = left.as_secs().clamp(1, 25);
        let res = client
            .get(url)
            .query(&[("wait", wait)])
            .timeout(Duration::from_secs(wait + 5))
            .send()
            .await;
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::OK => {
                let handed: Handed = r
                    .json()
                    .await
                    .map_err(|e| format!("the run configuration is not valid JSON: {e}"))?;
                return Ok(handed.env);
            }
            // Not configured yet: ask again.
            Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => {}
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                return Err(format!(
                    "the sidecar refused the run configuration (HTTP {status}): {}",
                    text.chars().take(200).collect::<String>()
                ));
            }
            // The sidecar is not listening yet (slots start both at once): retry shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_bound_defaults_and_validates() {
        assert_eq!(
            wait_bound(|_| None).unwrap(),
            Duration::from_secs(DEFAULT_WAIT_SECS)
        );
        assert_eq!(
            wait_bound(|_| Some("30".into())).unwrap(),
            Duration::from_secs(30)
        );
        let err = wait_bound(|_| Some("0".into())).unwrap_err();
        assert!(err.contains("RUNNER_CONFIG_WAIT_SECONDS"), "{err}");
    }
}
