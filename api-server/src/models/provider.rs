//! Calls to a model provider from the API server: the credential test, the model listing and the model
//! test. Every call goes through the SSRF rules of outbound calls (the host is resolved once, checked and
//! pinned; `EGRESS_ALLOW_INTERNAL_HOSTS` exempts trusted internal hosts), never follows redirects, and
//! never lets the key reach a log or an answer: a provider message that quotes the key is redacted.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use sidecar::ssrf::{self, Policy, Resolver};

use crate::config::LlmApi;

/// How long one provider call may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Where and how to reach a provider.
pub struct Endpoint<'a> {
    pub api: LlmApi,
    pub base_url: &'a str,
    pub api_key: &'a str,
}

/// What a test call found: `ok`, or the provider's refusal (`status`, its `message`) or why the
/// provider could not be reached. `error` is one of `invalid_key`, `provider_error`,
/// `no_model_listing`, `blocked_address`, `unreachable`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    pub ok: bool,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The model ids the provider listed (credential tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

impl TestResult {
    fn failed(started: Instant, status: Option<u16>, error: &str, message: String) -> Self {
        TestResult {
            ok: false,
            latency_ms: started.elapsed().as_millis() as u64,
            status,
            error: Some(error.to_string()),
            message: Some(message),
            models: None,
        }
    }
}

fn resolver() -> Arc<dyn Resolver> {
    static R: OnceLock<Arc<dyn Resolver>> = OnceLock::new();
    R.get_or_init(ssrf::system_resolver).clone()
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The provider's own error text: `error.message` (OpenAI and Anthropic), `message`, or the start of
/// the body, with the key redacted.
fn provider_message(body: &str, key: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error").filter(|e| e.is_string()))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    redact(&text, key)
}

/// `text` with every occurrence of `key` replaced by `[redacted]`.
pub fn redact(text: &str, key: &str) -> String {
    if key.len() < 4 {
        return text.to_string();
    }
    text.replace(key, "[redacted]")
}

/// Sends one request to the provider (pinned, no redirects) and returns (status, body).
async fn send(
    endpoint: &Endpoint<'_>,
    policy: &Policy,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, String), (&'static str, String)> {
    let url = ssrf::parse_url(&join(endpoint.base_url, path))
        .map_err(|e| ("unreachable", format!("The base URL is not usable: {e}")))?;
    let pinned = ssrf::resolve_pinned(&url, policy, resolver().as_ref())
        .await
        .map_err(|e| match e {
            ssrf::SsrfError::BlockedName(_) | ssrf::SsrfError::BlockedAddress { .. } => (
                "blocked_address",
                format!(
                    "{e}: a private, loopback or internal address is refused; list the host in \
                     EGRESS_ALLOW_INTERNAL_HOSTS for a trusted internal endpoint"
                ),
            ),
            other => ("unreachable", other.to_string()),
        })?;
    let client = ssrf::pinned_client_builder(&pinned)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| ("unreachable", format!("client: {e}")))?;
    let mut req = client.request(method, url);
    req = match endpoint.api {
        LlmApi::OpenAiCompletions => req.bearer_auth(endpoint.api_key),
        LlmApi::AnthropicMessages => req
            .header("x-api-key", endpoint.api_key)
            .header("anthropic-version", "2023-06-01"),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        let what = if e.is_timeout() {
            format!("the provider did not answer within {} s", TIMEOUT.as_secs())
        } else if e.is_connect() {
            "could not connect to the provider".to_string()
        } else {
            "the request to the provider failed".to_string()
        };
        ("unreachable", what)
    })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Ok((status, text))
}

fn classify(started: Instant, status: u16, body: &str, key: &str) -> TestResult {
    let code = if status == 401 || status == 403 {
        "invalid_key"
    } else {
        "provider_error"
    };
    TestResult::failed(
        started,
        Some(status),
        code,
        format!(
            "The provider answered {status}: {}",
            provider_message(body, key)
        ),
    )
}

/// Lists the provider's models (`GET /models`, or `/v1/models` for Anthropic). A successful listing
/// also proves the key, so it is the credential test.
pub async fn list_models(endpoint: &Endpoint<'_>, policy: &Policy) -> TestResult {
    let started = Instant::now();
    let path = match endpoint.api {
        LlmApi::OpenAiCompletions => "/models",
        LlmApi::AnthropicMessages => "/v1/models",
    };
    let (status, body) = match send(endpoint, policy, reqwest::Method::GET, path, None).await {
        Ok(r) => r,
        Err((code, message)) => return TestResult::failed(started, None, code, message),
    };
    if status == 404 || status == 405 {
        return TestResult::failed(
            started,
            Some(status),
            "no_model_listing",
            "The endpoint has no model listing, so the key cannot be checked this way; add a model \
             and test it (POST /api/models/{id}/test)"
                .into(),
        );
    }
    if !(200..300).contains(&status) {
        return classify(started, status, &body, endpoint.api_key);
    }
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut ids: Vec<String> = parsed["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    TestResult {
        ok: true,
        latency_ms: started.elapsed().as_millis() as u64,
        status: Some(status),
        error: None,
        message: None,
        models: Some(ids),
    }
}

/// Asks the model for one token: proves the key and the model id together.
pub async fn test_model(endpoint: &Endpoint<'_>, model_id: &str, policy: &Policy) -> TestResult {
    let started = Instant::now();
    let messages = json!([{"role": "user", "content": "Reply with OK."}]);
    let (path, body) = match endpoint.api {
        LlmApi::OpenAiCompletions => (
            "/chat/completions",
            json!({"model": model_id, "messages": messages, "max_tokens": 1, "stream": false}),
        ),
        LlmApi::AnthropicMessages => (
            "/v1/messages",
            json!({"model": model_id, "messages": messages, "max_tokens": 1}),
        ),
    };
    match send(endpoint, policy, reqwest::Method::POST, path, Some(body)).await {
        Ok((status, _)) if (200..300).contains(&status) => TestResult {
            ok: true,
            latency_ms: started.elapsed().as_millis() as u64,
            status: Some(status),
            error: None,
            message: None,
            models: None,
        },
        Ok((status, body)) => classify(started, status, &body, endpoint.api_key),
        Err((code, message)) => TestResult::failed(started, None, code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_messages_are_read_and_never_quote_the_key() {
        let key = "sk-secret-1234567890";
        let openai = r#"{"error":{"message":"Incorrect API key provided: sk-secret-1234567890","code":"invalid_api_key"}}"#;
        assert_eq!(
            provider_message(openai, key),
            "Incorrect API key provided: [redacted]"
        );
        let anthropic = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(provider_message(anthropic, key), "invalid x-api-key");
        assert_eq!(provider_message("Bad Gateway", key), "Bad Gateway");
    }
}
