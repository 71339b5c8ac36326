//! Application webhooks (§19): matching run events to webhooks, Standard-Webhooks signing, delivery with
//! the SSRF guard and DNS pinning on every attempt, and the retry ladder on the job queue (durable with
//! Redis). No axum types here; the routes live in `http/routes/webhooks.rs`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use sidecar::ssrf::{self, Policy, Resolver, SsrfError};
use url::Url;

use crate::config::Config;
use crate::infra::database::now;
use crate::infra::database::runs::RunRow;
use crate::infra::database::webhooks::{DeliveryRow, WebhookRow};
use crate::infra::queue::Job;
use crate::metrics::ResultLabel;
use crate::state::AppState;

pub mod manage;

/// The run events a webhook can subscribe to. `run.connection_missing` is emitted when a run is refused
/// because a required connection is missing or needs a reconnect (no run exists then).
pub const EVENTS: [&str; 6] = [
    "run.started",
    "run.success",
    "run.failed",
    "run.timeout",
    "run.cancelled",
    "run.connection_missing",
];
/// Webhooks per application.
pub const MAX_PER_APPLICATION: i64 = 20;
/// Past this many bytes of envelope, `result` then `input` are dropped.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The queue job kind of one delivery attempt.
pub const JOB_KIND: &str = "webhook.deliver";
/// How long the previous secret keeps signing after a rotation, unless the request says otherwise.
pub const DEFAULT_ROTATION_GRACE_SECONDS: i64 = 24 * 3600;
/// The longest rotation window a request may ask for.
pub const MAX_ROTATION_GRACE_SECONDS: i64 = 7 * 24 * 3600;

mod connection_missing;

pub use connection_missing::{emit_connection_missing, ConnectionMissing};

type HmacSha256 = Hmac<Sha256>;

/// `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The HMAC key of a `whsec_…` secret: the base64-decoded part after the prefix.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The `webhook-signature` header: one space-separated `v1,<sig>` entry per key (two during a rotation).
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    keys.iter()
        .map(|k| format!("v1,{}", sign(k, id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The SSRF policy of webhook deliveries: the `EGRESS_ALLOW_INTERNAL_HOSTS` exemptions.
pub fn policy(config: &Config) -> Policy {
    Policy::with_exemptions(config.egress_allow_internal_hosts.iter())
}

/// The checks of a webhook URL at create and update (400 `invalid_url` with this message): an absolute
/// `https` URL (`http` only for a loopback host outside production), without credentials, whose host
/// passes the literal SSRF check (a private or loopback address is refused unless listed in
/// `EGRESS_ALLOW_INTERNAL_HOSTS`).
pub fn check_url(raw: &str, config: &Config) -> Result<Url, String> {
    if raw.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    let url = ssrf::parse_url(raw).map_err(|e| format!("url is not a valid http(s) URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not carry credentials; sign requests with the webhook secret".into());
    }
    match url.scheme() {
        "https" => {}
        "http" if !config.is_production() && is_loopback_host(&url) => {}
        "http" if config.is_production() => {
            return Err("url must use https:// in production".into());
        }
        _ => {
            return Err(
                "url must use https:// (http:// is accepted only for localhost outside production)"
                    .into(),
            );
        }
    }
    ssrf::check_url_literal(&url, &policy(config)).map_err(|e| match e {
        SsrfError::BlockedName(_) | SsrfError::BlockedAddress { .. } => format!(
            "url points at a private, loopback or otherwise internal address ({e}); use a public \
             endpoint, or list the host in EGRESS_ALLOW_INTERNAL_HOSTS for a trusted internal receiver"
        ),
        other => format!("url is not allowed ({other})"),
    })?;
    Ok(url)
}

/// The event envelope of §19. `summary` mode omits `result` and `input`; past [`MAX_PAYLOAD_BYTES`],
/// `result` is dropped (`resultTruncated: true`), then `input` (`inputTruncated: true`).
pub fn envelope(
    event_id: &str,
    event_type: &str,
    created: i64,
    run: &RunRow,
    mode: &str,
) -> String {
    let mut object = Map::new();
    object.insert("object".into(), json!("run"));
    object.insert("id".into(), json!(run.id));
    object.insert("packageId".into(), json!(run.package_id));
    object.insert("status".into(), json!(run.status));
    if let Some(e) = &run.error {
        object.insert("error".into(), json!(e));
    }
    if mode != "summary" {
        if let Some(r) = &run.result {
            object.insert("result".into(), r.0.clone());
        }
        object.insert("input".into(), run.input.0.clone());
    }
    if let Some(d) = run.duration {
        object.insert("duration".into(), json!(d));
    }
    let render = |object: &Map<String, Value>| {
        json!({
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": created,
            "data": {"object": object},
        })
        .to_string()
    };
    let mut body = render(&object);
    for (field, flag) in [("result", "resultTruncated"), ("input", "inputTruncated")] {
        if body.len() <= MAX_PAYLOAD_BYTES {
            break;
        }
        if object.remove(field).is_some() {
            object.insert(flag.into(), json!(true));
            body = render(&object);
        }
    }
    body
}

/// What one job carries: everything an attempt needs, so a durable queue can replay it after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryJob {
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub body: String,
    pub attempt: u32,
}

impl DeliveryJob {
    pub fn job(&self) -> Job {
        Job {
            kind: JOB_KIND.into(),
            payload: serde_json::to_value(self).expect("serialisable"),
        }
    }
}

/// Whether `hook` wants `event_type` for `run` (§19 matching).
fn matches(hook: &WebhookRow, event_type: &str, run: &RunRow) -> bool {
    hook.enabled
        && hook.event_types().iter().any(|e| e == event_type)
        && match &hook.package_id {
            None => true,
            Some(p) => run.package_id.as_deref() == Some(p.as_str()),
        }
}

/// Queues the first attempt of `event_type` for every matching webhook of the run's application. Called
/// by the single winner of a transition (`mark_running`, `finalize_run`), so each event is emitted once.
pub async fn emit(state: &AppState, run: &RunRow, event_type: &str) {
    let hooks = match state.infra.db.enabled_webhooks(&run.application_id).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "could not list webhooks");
            return;
        }
    };
    let event_id = format!("evt_{}", uuid::Uuid::new_v4());
    let created = now().timestamp();
    for hook in hooks.iter().filter(|h| matches(h, event_type, run)) {
        let job = DeliveryJob {
            webhook_id: hook.id.clone(),
            event_id: event_id.clone(),
            event_type: event_type.to_string(),
            body: envelope(&event_id, event_type, created, run, &hook.payload_mode),
            attempt: 1,
        };
        if let Err(e) = state
            .infra
            .queue
            .enqueue_delayed(job.job(), Duration::ZERO)
            .await
        {
            tracing::warn!(webhook_id = %hook.id, run_id = %run.id, error = %e, "could not queue a webhook delivery");
        }
    }
}

/// The outcome class of one attempt (§19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Worth another attempt: 5xx, 408, 429, 3xx (redirects are never followed), timeouts, network errors.
    Retry,
    /// 4xx other than 408/429, or a blocked address.
    Permanent,
}

/// The result of one HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub class: Class,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

fn classify(code: u16) -> (Class, Option<String>) {
    match code {
        200..=299 => (Class::Success, None),
        300..=399 => (
            Class::Retry,
            Some(format!("HTTP {code}: redirect not followed")),
        ),
        408 | 429 => (Class::Retry, Some(format!("HTTP {code}"))),
        400..=499 => (Class::Permanent, Some(format!("HTTP {code}"))),
        _ => (Class::Retry, Some(format!("HTTP {code}"))),
    }
}

/// Resolves and pins the host (refusing blocked addresses on every attempt), then POSTs once, without
/// following redirects, within `timeout`.
pub async fn attempt_once(
    url: &str,
    headers: &[(&str, String)],
    body: &str,
    policy: &Policy,
    resolver: &dyn Resolver,
    timeout: Duration,
) -> Attempt {
    let started = Instant::now();
    let elapsed = |s: Instant| s.elapsed().as_millis() as i64;
    let url = match ssrf::parse_url(url) {
        Ok(u) => u,
        Err(e) => {
            return Attempt {
                class: Class::Permanent,
                status_code: None,
                latency_ms: 0,
                error: Some(format!("invalid URL: {e}")),
            }
        }
    };
    let pinned = match ssrf::resolve_pinned(&url, policy, resolver).await {
        Ok(p) => p,
        Err(e) => {
            let class = match e {
                SsrfError::DnsFailure { .. } => Class::Retry,
                _ => Class::Permanent,
            };
            return Attempt {
                class,
                status_code: None,
                latency_ms: elapsed(started),
                error: Some(format!("{}: {e}", e.code())),
            };
        }
    };
    let client = match ssrf::pinned_client_builder(&pinned)
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return Attempt {
                class: Class::Retry,
                status_code: None,
                latency_ms: elapsed(started),
                error: Some(format!("client: {e}")),
            }
        }
    };
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("Appstrate-Webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let (class, error) = classify(code);
            Attempt {
                class,
                status_code: Some(code),
                latency_ms: elapsed(started),
                error,
            }
        }
        Err(e) => {
            let what = if e.is_timeout() {
                format!("timed out after {} s", timeout.as_secs())
            } else if e.is_connect() {
                "connection failed".to_string()
            } else {
                "request failed".to_string()
            };
            Attempt {
                class: Class::Retry,
                status_code: None,
                latency_ms: elapsed(started),
                error: Some(what),
            }
        }
    }
}

fn resolver() -> Arc<dyn Resolver> {
    static R: OnceLock<Arc<dyn Resolver>> = OnceLock::new();
    R.get_or_init(ssrf::system_resolver).clone()
}

/// The signing keys of `hook` now: its secret, plus the previous one while its rotation window is open.
fn signing_keys(state: &AppState, hook: &WebhookRow) -> anyhow::Result<Vec<Vec<u8>>> {
    let open = |enc: &str| -> anyhow::Result<Vec<u8>> {
        let secret = String::from_utf8(state.keyring.decrypt(enc)?)?;
        secret_key(&secret).ok_or_else(|| anyhow::anyhow!("stored webhook secret is malformed"))
    };
    let mut keys = vec![open(&hook.secret_enc)?];
    if let (Some(prev), Some(until)) = (&hook.previous_secret_enc, hook.previous_secret_expires_at)
    {
        if until > now() {
            keys.push(open(prev)?);
        }
    }
    Ok(keys)
}

/// The queue handler of [`JOB_KIND`]: one attempt, one delivery record, and the next attempt queued on
/// the retry ladder (`WEBHOOK_RETRY_DELAYS_SECONDS`) when the outcome is retryable.
pub async fn deliver(state: &AppState, job: DeliveryJob) -> anyhow::Result<()> {
    let Some(hook) = state.infra.db.get_webhook_by_id(&job.webhook_id).await? else {
        tracing::debug!(webhook_id = %job.webhook_id, "webhook deleted; delivery dropped");
        return Ok(());
    };
    if !hook.enabled {
        tracing::info!(webhook_id = %hook.id, event_id = %job.event_id, "webhook disabled; delivery dropped");
        return Ok(());
    }
    let keys = signing_keys(state, &hook)?;
    let timestamp = now().timestamp();
    let headers = [
        ("webhook-id", job.event_id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            signature_header(&keys, &job.event_id, timestamp, &job.body),
        ),
        ("webhook-attempt", job.attempt.to_string()),
    ];
    let config = &state.config;
    let attempt = attempt_once(
        &hook.url,
        &headers,
        &job.body,
        &policy(config),
        resolver().as_ref(),
        Duration::from_secs(config.webhook_timeout_seconds),
    )
    .await;
    let delays = &config.webhook_retry_delays_seconds;
    let next_delay = match attempt.class {
        Class::Retry => delays.get(job.attempt as usize - 1).copied(),
        _ => None,
    };
    let status = match (attempt.class, next_delay) {
        (Class::Success, _) => "success",
        (_, Some(_)) => "retrying",
        _ => "failed",
    };
    let row = DeliveryRow {
        id: format!("whd_{}", uuid::Uuid::new_v4()),
        webhook_id: hook.id.clone(),
        event_id: job.event_id.clone(),
        event_type: job.event_type.clone(),
        attempt: job.attempt as i64,
        status: status.to_string(),
        status_code: attempt.status_code.map(i64::from),
        latency_ms: Some(attempt.latency_ms),
        error: attempt.error.clone(),
        created_at: now(),
    };
    let first_record = state.infra.db.insert_delivery(&row).await?;
    state
        .metrics
        .webhook_deliveries
        .get_or_create(&ResultLabel {
            result: status.into(),
        })
        .inc();
    tracing::info!(
        webhook_id = %hook.id,
        event_id = %job.event_id,
        attempt = job.attempt,
        status,
        status_code = ?attempt.status_code,
        latency_ms = attempt.latency_ms,
        error = ?attempt.error,
        "webhook delivery attempt"
    );
    // A re-delivered job whose attempt was already recorded does not queue a second successor.
    if let (Some(delay), true) = (next_delay, first_record) {
        let next = DeliveryJob {
            attempt: job.attempt + 1,
            ..job
        };
        state
            .infra
            .queue
            .enqueue_delayed(next.job(), Duration::from_secs(delay))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar::ssrf::StaticResolver;
    use std::net::IpAddr;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (standard-webhooks/libraries test vectors).
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_keys_give_two_entries() {
        let a = secret_key(&new_secret()).unwrap();
        let b = secret_key(&new_secret()).unwrap();
        assert_eq!(a.len(), 32);
        let h = signature_header(&[a.clone(), b.clone()], "evt_1", 10, "{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], format!("v1,{}", sign(&a, "evt_1", 10, "{}")));
        assert_eq!(parts[1], format!("v1,{}", sign(&b, "evt_1", 10, "{}")));
    }

    #[test]
    fn classes_follow_section_19() {
        assert_eq!(classify(200).0, Class::Success);
        assert_eq!(classify(204).0, Class::Success);
        assert_eq!(classify(302).0, Class::Retry);
        assert_eq!(classify(408).0, Class::Retry);
        assert_eq!(classify(429).0, Class::Retry);
        assert_eq!(classify(404).0, Class::Permanent);
        assert_eq!(classify(410).0, Class::Permanent);
        assert_eq!(classify(500).0, Class::Retry);
        assert_eq!(classify(503).0, Class::Retry);
    }

    fn run_row(result: Value, input: Value) -> RunRow {
        let json: Value = json!({
            "id": "run_1", "org_id": "o", "application_id": "app_1", "package_id": "@a/b",
            "end_user_id": null, "api_key_id": null, "schedule_id": null, "kind": "package",
            "agent_scope": "@a", "agent_name": "b", "version_ref": null, "run_number": 1,
            "status": "success", "input": input, "result": result, "error": null, "model_label": null,
            "timeout_seconds": 300, "started_at": null, "completed_at": null, "duration": 1200,
            "created_at": "2026-01-01T00:00:00Z", "token_usage": {}, "cost": null,
            "cost_pricing_status": "unpriced", "sink_secret_encrypted": "x", "sink_closed_at": null,
            "last_event_sequence": 0, "last_heartbeat_at": null, "first_event_at": null,
            "boot_deadline_at": null, "scheduled_for": null, "inline_manifest": null,
            "inline_prompt": null, "output_schema": null, "last_output": null
        });
        serde_json::from_value(json).expect("a run row")
    }

    #[test]
    fn envelope_modes_and_truncation() {
        let run = run_row(json!({"output": {"a": 1}}), json!({"q": "x"}));
        let full: Value =
            serde_json::from_str(&envelope("evt_1", "run.success", 5, &run, "full")).unwrap();
        assert_eq!(full["id"], "evt_1");
        assert_eq!(full["object"], "event");
        assert_eq!(full["type"], "run.success");
        assert_eq!(full["created"], 5);
        let o = &full["data"]["object"];
        assert_eq!(o["object"], "run");
        assert_eq!(o["packageId"], "@a/b");
        assert_eq!(o["result"]["output"]["a"], 1);
        assert_eq!(o["input"]["q"], "x");
        assert_eq!(o["duration"], 1200);

        let summary: Value =
            serde_json::from_str(&envelope("evt_1", "run.success", 5, &run, "summary")).unwrap();
        assert!(summary["data"]["object"].get("result").is_none());
        assert!(summary["data"]["object"].get("input").is_none());

        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        let run = run_row(json!({"output": big}), json!({"q": "small"}));
        let body = envelope("evt_1", "run.success", 5, &run, "full");
        assert!(body.len() <= MAX_PAYLOAD_BYTES);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["data"]["object"]["resultTruncated"], true);
        assert!(v["data"]["object"].get("result").is_none());
        assert_eq!(v["data"]["object"]["input"]["q"], "small");
        assert!(v["data"]["object"].get("inputTruncated").is_none());

        let run = run_row(json!({"output": big.clone()}), json!({"q": big}));
        let v: Value =
            serde_json::from_str(&envelope("evt_1", "run.success", 5, &run, "full")).unwrap();
        assert_eq!(v["data"]["object"]["resultTruncated"], true);
        assert_eq!(v["data"]["object"]["inputTruncated"], true);
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_at_delivery() {
        let resolver = StaticResolver::new().with(
            "hooks.example.test",
            &["10.1.2.3".parse::<IpAddr>().unwrap()],
        );
        let a = attempt_once(
            "https://hooks.example.test/in",
            &[],
            "{}",
            &Policy::new(),
            &resolver,
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(a.class, Class::Permanent);
        assert_eq!(a.status_code, None);
        assert!(a.error.unwrap().contains("blocked_address"));

        let none = StaticResolver::new();
        let a = attempt_once(
            "https://nowhere.example.test/in",
            &[],
            "{}",
            &Policy::new(),
            &none,
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(a.class, Class::Retry, "a DNS failure is retried");
    }
}
