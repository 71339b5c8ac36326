//! The runner → platform event sink protocol (§12): Standard-Webhooks signature checks and the CloudEvent
//! → run log mapping. Pure functions; the HTTP handlers live in `http::routes::sink`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::verdict::Outcome;
use crate::domain::FieldError;
use crate::infra::database::runs::NewLog;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    MissingHeaders,
    InvalidTimestamp,
    OutOfTolerance,
    Invalid,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::MissingHeaders => "missing_signature_headers",
            SignatureError::InvalidTimestamp => "invalid_timestamp",
            SignatureError::OutOfTolerance => "timestamp_out_of_tolerance",
            SignatureError::Invalid => "invalid_signature",
        }
    }
}

/// `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Verifies Standard-Webhooks headers (§12.1–12.2 step 3–4). The key is the run's sink secret as UTF-8.
pub fn verify(
    key: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), SignatureError> {
    let (Some(id), Some(ts), Some(sig)) = (id, timestamp, signature) else {
        return Err(SignatureError::MissingHeaders);
    };
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::InvalidTimestamp)?;
    // `abs_diff` cannot overflow, whatever the timestamp (`now - i64::MIN` would).
    if now.abs_diff(ts) > tolerance.max(0).unsigned_abs() {
        return Err(SignatureError::OutOfTolerance);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    for entry in sig.split(' ') {
        let Some(b64) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        // Constant-time comparison.
        if mac.clone().verify_slice(&raw).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Invalid)
}

/// A validated CloudEvent from the runner.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunEvent {
    pub event_type: String,
    pub sequence: i64,
    pub data: Value,
}

/// Strict CloudEvents 1.0 parsing (§12.3). Every problem is reported.
pub fn parse_event(body: &Value, run_id: &str) -> Result<RunEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new(
            "body",
            "invalid_type",
            "must be an object",
        )]);
    };
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    if s("specversion") != Some("1.0") {
        errors.push(FieldError::new(
            "specversion",
            "invalid_value",
            "must be \"1.0\"",
        ));
    }
    let event_type = s("type").unwrap_or("").to_string();
    if event_type.is_empty() {
        errors.push(FieldError::new("type", "required", "is required"));
    }
    if s("source") != Some(&format!("/afps/runs/{run_id}")) {
        errors.push(FieldError::new(
            "source",
            "invalid_value",
            format!("must be \"/afps/runs/{run_id}\""),
        ));
    }
    if s("id").is_none_or(str::is_empty) {
        errors.push(FieldError::new("id", "required", "is required"));
    }
    match s("time") {
        Some(t) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {}
        _ => errors.push(FieldError::new(
            "time",
            "invalid_format",
            "must be an RFC 3339 timestamp",
        )),
    }
    if s("datacontenttype") != Some("application/json") {
        errors.push(FieldError::new(
            "datacontenttype",
            "invalid_value",
            "must be \"application/json\"",
        ));
    }
    let data = obj.get("data").cloned().unwrap_or(Value::Null);
    if !data.is_object() {
        errors.push(FieldError::new("data", "invalid_type", "must be an object"));
    }
    let sequence = obj.get("sequence").and_then(Value::as_i64).unwrap_or(0);
    if sequence < 1 {
        errors.push(FieldError::new(
            "sequence",
            "out_of_range",
            "must be an integer >= 1",
        ));
    }
    let known = [
        "specversion",
        "type",
        "source",
        "id",
        "time",
        "datacontenttype",
        "data",
        "sequence",
        "subject",
    ];
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            errors.push(FieldError::new(
                k.clone(),
                "unknown_field",
                "is not a known field",
            ));
        }
    }
    if errors.is_empty() {
        Ok(RunEvent {
            event_type,
            sequence,
            data,
        })
    } else {
        Err(errors)
    }
}

/// What an event does (§11.5).
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Log(NewLogSpec),
    Output(Value),
    Metric(Value),
    Ignored,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewLogSpec {
    pub log_type: &'static str,
    pub event: &'static str,
    pub level: String,
    pub message: String,
    pub data: Option<Value>,
}

impl From<NewLogSpec> for NewLog {
    fn from(s: NewLogSpec) -> Self {
        NewLog {
            log_type: s.log_type.into(),
            level: s.level,
            event: s.event.into(),
            message: s.message,
            data: s.data,
        }
    }
}

const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

fn level_or(v: Option<&Value>, default: &str) -> String {
    match v.and_then(Value::as_str) {
        Some(l) if LEVELS.contains(&l) => l.to_string(),
        _ => default.to_string(),
    }
}

pub fn classify(event: &RunEvent) -> EventKind {
    let d = &event.data;
    let message = d
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match event.event_type.as_str() {
        "appstrate.progress" => EventKind::Log(NewLogSpec {
            log_type: "progress",
            event: "progress",
            level: level_or(d.get("data").and_then(|x| x.get("level")), "info"),
            message,
            data: d.get("data").cloned(),
        }),
        "log.written" => EventKind::Log(NewLogSpec {
            log_type: "progress",
            event: "log",
            level: level_or(d.get("level"), "info"),
            message,
            data: None,
        }),
        "appstrate.error" => EventKind::Log(NewLogSpec {
            log_type: "system",
            event: "adapter_error",
            level: "error".into(),
            message,
            data: d.get("data").cloned(),
        }),
        "output.emitted" => EventKind::Output(d.get("data").cloned().unwrap_or(Value::Null)),
        "appstrate.metric" => EventKind::Metric(d.get("usage").cloned().unwrap_or(json!({}))),
        _ => EventKind::Ignored,
    }
}

/// Parses a finalize body (§12.4): `status`, `output` and `error` are strict, other bad fields are dropped.
pub fn parse_finalize(body: &Value) -> Result<Outcome, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new(
            "body",
            "invalid_type",
            "must be an object",
        )]);
    };
    let status = match obj.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if super::verdict::STATUSES.contains(&s.as_str()) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "status",
                "invalid_value",
                "must be success, failed, timeout or cancelled",
            ));
            None
        }
    };
    let error = match obj.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => match e.get("message").and_then(Value::as_str) {
            Some(m) => {
                if e.get("code")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.len() > 64)
                {
                    errors.push(FieldError::new(
                        "error.code",
                        "out_of_range",
                        "at most 64 characters",
                    ));
                }
                Some(m.to_string())
            }
            None => {
                errors.push(FieldError::new("error.message", "required", "is required"));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "error",
                "invalid_type",
                "must be an object",
            ));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let text = obj
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| t.len() <= 64 * 1024)
        .map(str::to_string);
    Ok(Outcome {
        status,
        output: obj.get("output").filter(|v| !v.is_null()).cloned(),
        text,
        error,
        usage: obj.get("usage").filter(|v| v.is_object()).cloned(),
        duration_ms: obj.get("durationMs").and_then(Value::as_i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let key = "a".repeat(43);
        let body = br#"{"x":1}"#;
        let sig = format!("v1,{}", sign(key.as_bytes(), "msg_1", 1000, body));
        let ok = |s: &str, ts: &str, now: i64| {
            verify(&key, Some("msg_1"), Some(ts), Some(s), body, now, 300)
        };
        assert_eq!(ok(&sig, "1000", 1000), Ok(()));
        assert_eq!(ok(&format!("v2,xxx {sig}"), "1000", 1000), Ok(()));
        assert_eq!(ok(&sig, "1000", 1301), Err(SignatureError::OutOfTolerance));
        assert_eq!(ok(&sig, "1000", 1300), Ok(()));
        assert_eq!(ok(&sig, "abc", 1000), Err(SignatureError::InvalidTimestamp));
        // Extreme timestamps are out of tolerance, never an overflow.
        for (ts, now) in [
            (i64::MIN.to_string(), 1000),
            (i64::MAX.to_string(), 1000),
            (i64::MIN.to_string(), i64::MAX),
            (i64::MAX.to_string(), i64::MIN),
        ] {
            assert_eq!(
                ok(&sig, &ts, now),
                Err(SignatureError::OutOfTolerance),
                "{ts}"
            );
        }
        assert_eq!(
            ok(&sig, "99999999999999999999", 1000),
            Err(SignatureError::InvalidTimestamp)
        );
        assert_eq!(ok("v1,AAAA", "1000", 1000), Err(SignatureError::Invalid));
        assert_eq!(
            verify(&key, None, Some("1"), Some(&sig), body, 1, 300),
            Err(SignatureError::MissingHeaders)
        );
        // Another body under the same signature.
        assert_eq!(
            verify(
                &key,
                Some("msg_1"),
                Some("1000"),
                Some(&sig),
                b"{}",
                1000,
                300
            ),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn cloud_events_are_strict() {
        let good = json!({"specversion":"1.0","type":"log.written","source":"/afps/runs/run_1","id":"e1",
            "time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{"level":"warn","message":"hi"},"sequence":2});
        let e = parse_event(&good, "run_1").unwrap();
        assert_eq!(e.sequence, 2);
        match classify(&e) {
            EventKind::Log(l) => assert_eq!(
                (l.event, l.level.as_str(), l.message.as_str()),
                ("log", "warn", "hi")
            ),
            other => panic!("{other:?}"),
        }
        let mut bad = good.clone();
        bad["source"] = json!("/afps/runs/other");
        bad["sequence"] = json!(0);
        bad["extra"] = json!(1);
        let errs = parse_event(&bad, "run_1").unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["source", "sequence", "extra"]);
    }

    #[test]
    fn finalize_bodies() {
        let o = parse_finalize(&json!({"status":"success","output":{"a":1},"text":"done","usage":{"input_tokens":3},"durationMs":5,"junk":1})).unwrap();
        assert_eq!(o.status.as_deref(), Some("success"));
        assert_eq!(o.duration_ms, Some(5));
        assert!(parse_finalize(&json!({"status":"weird"})).is_err());
        assert!(parse_finalize(&json!({"error":"text"})).is_err());
        assert_eq!(
            parse_finalize(&json!({"error":{"message":"x"}}))
                .unwrap()
                .error
                .as_deref(),
            Some("x")
        );
    }
}
