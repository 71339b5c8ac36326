//! A fresh credential after the provider's 401 (OAuth connections): the sidecar asks the platform once, at
//! the integration's `refresh.url`, and swaps the header in for the retry and every later call.

use std::time::Duration;

use crate::config::{Integration, Validated};

/// Asks the platform for a fresh credential of `integ` (its `refresh` endpoint) and swaps the header
/// in; false when the platform has none (the connection needs a reconnect) or cannot be reached.
pub(crate) async fn refresh_credential(active: &Validated, integ: &Integration) -> bool {
    let Some((url, token)) = &integ.refresh else {
        return false;
    };
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let resp = client
        .post(url.clone())
        .bearer_auth(token.expose())
        .header("x-run-id", &active.run_id)
        .send()
        .await;
    let fresh = match resp {
        Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
        Ok(r) => {
            tracing::info!(run_id = %active.run_id, integration = %integ.id, status = r.status().as_u16(), "the platform has no fresh credential");
            None
        }
        Err(e) => {
            tracing::warn!(run_id = %active.run_id, integration = %integ.id, error = %crate::server::describe(&e), "credential refresh request failed");
            None
        }
    };
    let Some(value) = fresh
        .as_ref()
        .filter(|v| {
            v.get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| n.eq_ignore_ascii_case(integ.header_name.as_str()))
        })
        .and_then(|v| v.get("value"))
        .and_then(|v| v.as_str())
        .and_then(|v| http::HeaderValue::from_str(v).ok())
    else {
        return false;
    };
    let mut value = value;
    value.set_sensitive(true);
    *integ.header_value.write().expect("credential header lock") = value;
    tracing::info!(run_id = %active.run_id, integration = %integ.id, "credential refreshed after a 401");
    true
}
