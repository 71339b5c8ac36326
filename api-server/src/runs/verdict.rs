//! The terminal verdict (§11.3) and cost (§11.5): pure functions over what the runner reported.

use serde_json::{json, Map, Value};

use crate::config::LlmPricing;

pub const STATUSES: [&str; 4] = ["success", "failed", "timeout", "cancelled"];

/// What a finalize (from the runner or synthesised by the platform) says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub status: Option<String>,
    pub output: Option<Value>,
    pub text: Option<String>,
    pub error: Option<String>,
    pub usage: Option<Value>,
    pub duration_ms: Option<i64>,
}

impl Outcome {
    /// A platform-synthesised outcome with an explicit status and error message.
    pub fn synthetic(status: &str, error: impl Into<String>) -> Self {
        Outcome {
            status: Some(status.to_string()),
            error: Some(error.into()),
            ..Default::default()
        }
    }
}

pub const ZERO_USAGE: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
];

/// A usage object with the four counters, missing ones as 0.
pub fn normalize_usage(v: Option<&Value>) -> Value {
    let mut out = Map::new();
    for k in ZERO_USAGE {
        let n = v
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out.insert(k.to_string(), json!(n));
    }
    Value::Object(out)
}

/// Usage never goes down: the per-counter maximum of what is stored and what arrived.
pub fn max_usage(stored: &Value, incoming: &Value) -> Value {
    let (a, b) = (
        normalize_usage(Some(stored)),
        normalize_usage(Some(incoming)),
    );
    let mut out = Map::new();
    for k in ZERO_USAGE {
        out.insert(k.to_string(), json!(a[k].as_u64().max(b[k].as_u64())));
    }
    Value::Object(out)
}

pub fn total_tokens(usage: &Value) -> u64 {
    ZERO_USAGE
        .iter()
        .map(|k| usage.get(*k).and_then(Value::as_u64).unwrap_or(0))
        .sum()
}

/// Cost in USD and the pricing status (`priced` / `unpriced`).
pub fn cost(usage: &Value, pricing: Option<&LlmPricing>) -> (Option<f64>, &'static str) {
    let Some(p) = pricing else {
        return (None, "unpriced");
    };
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0) as f64;
    let total = n("input_tokens") * p.input
        + n("output_tokens") * p.output
        + n("cache_read_input_tokens") * p.cache_read.unwrap_or(p.input)
        + n("cache_creation_input_tokens") * p.cache_write.unwrap_or(p.input);
    (Some(total / 1_000_000.0), "priced")
}

/// The verdict: (status, error, result).
pub fn verdict(
    outcome: &Outcome,
    output_schema: Option<&Value>,
    usage: &Value,
) -> (String, Option<String>, Option<Value>) {
    let mut result = Map::new();
    if let Some(o) = &outcome.output {
        result.insert("output".into(), o.clone());
    }
    if let Some(t) = &outcome.text {
        result.insert("text".into(), json!(t));
    }
    let result = if result.is_empty() {
        None
    } else {
        Some(Value::Object(result))
    };
    let status = match &outcome.status {
        Some(s) => s.clone(),
        None if outcome.error.is_some() => "failed".into(),
        None => "success".into(),
    };
    if status != "success" {
        let error = outcome
            .error
            .clone()
            .or_else(|| (status == "failed").then(|| "Run failed".to_string()));
        return (status, error, result);
    }
    if let Some(schema) = output_schema {
        match &outcome.output {
            None => {
                return (
                    "failed".into(),
                    Some("Agent finished without calling the required `output` tool".into()),
                    result,
                )
            }
            Some(out) => {
                if let Some(problem) = schema_problem(schema, out) {
                    return (
                        "failed".into(),
                        Some(format!("Output validation failed: {problem}")),
                        result,
                    );
                }
            }
        }
    }
    if total_tokens(usage) == 0 {
        return (
            "failed".into(),
            Some("Agent finished without reaching the LLM".into()),
            result,
        );
    }
    ("success".into(), None, result)
}

/// The first validation problem of `value` against `schema`, as `<path>: <message>`.
pub fn schema_problem(schema: &Value, value: &Value) -> Option<String> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => return Some(format!("(schema): {e}")),
    };
    let problem = validator.iter_errors(value).next().map(|e| {
        let path = e.instance_path().to_string();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        format!("{path}: {e}")
    });
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(n: u64) -> Value {
        json!({"input_tokens": n, "output_tokens": 1})
    }

    #[test]
    fn explicit_status_wins_then_error_then_success() {
        let o = Outcome {
            status: Some("timeout".into()),
            error: Some("Run timed out after 5s".into()),
            ..Default::default()
        };
        assert_eq!(verdict(&o, None, &usage(1)).0, "timeout");
        let o = Outcome {
            error: Some("boom".into()),
            ..Default::default()
        };
        assert_eq!(
            verdict(&o, None, &usage(1)),
            ("failed".into(), Some("boom".into()), None)
        );
        let o = Outcome {
            text: Some("hi".into()),
            ..Default::default()
        };
        assert_eq!(
            verdict(&o, None, &usage(1)),
            ("success".into(), None, Some(json!({"text": "hi"})))
        );
    }

    #[test]
    fn success_is_downgraded() {
        let schema = json!({"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}});
        let o = Outcome::default();
        let (s, e, _) = verdict(&o, Some(&schema), &usage(5));
        assert_eq!(s, "failed");
        assert_eq!(
            e.unwrap(),
            "Agent finished without calling the required `output` tool"
        );
        let o = Outcome {
            output: Some(json!({"topic": 3})),
            ..Default::default()
        };
        let (s, e, _) = verdict(&o, Some(&schema), &usage(5));
        assert_eq!(s, "failed");
        assert!(e.unwrap().starts_with("Output validation failed: /topic: "));
        let o = Outcome {
            output: Some(json!({"topic": "x"})),
            ..Default::default()
        };
        assert_eq!(verdict(&o, Some(&schema), &usage(5)).0, "success");
        let (s, e, _) = verdict(&o, Some(&schema), &json!({}));
        assert_eq!(
            (s.as_str(), e.unwrap().as_str()),
            ("failed", "Agent finished without reaching the LLM")
        );
    }

    #[test]
    fn usage_and_cost() {
        let u = max_usage(
            &json!({"input_tokens": 10, "output_tokens": 5}),
            &json!({"input_tokens": 7, "output_tokens": 9}),
        );
        assert_eq!(u["input_tokens"], 10);
        assert_eq!(u["output_tokens"], 9);
        assert_eq!(u["cache_read_input_tokens"], 0);
        assert_eq!(cost(&u, None), (None, "unpriced"));
        let p = LlmPricing {
            input: 3.0,
            output: 15.0,
            cache_read: None,
            cache_write: None,
        };
        let (c, s) = cost(
            &json!({"input_tokens": 1_000_000, "output_tokens": 100_000}),
            Some(&p),
        );
        assert_eq!(s, "priced");
        assert!((c.unwrap() - 4.5).abs() < 1e-9);
    }
}
