//! What tool calls may put in the run log and in front of the model: the run's own secrets (the sink
//! secret, the sidecar token) are replaced wherever they appear (a `bash` command could print them),
//! and long values are cut so that a 10 MiB `write` does not become a 10 MiB event.

use serde_json::Value;

pub const REDACTED: &str = "[redacted]";
/// A string in a logged tool call is cut past this many characters.
const LOG_STRING_MAX: usize = 1000;

/// The secrets of one run.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Secrets shorter than 8 characters are ignored (replacing them would garble ordinary text).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        Redactor {
            secrets: secrets
                .into_iter()
                .filter(|s| s.len() >= 8)
                .map(str::to_string)
                .collect(),
        }
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    /// A JSON value for the log: secrets replaced, strings cut to [`LOG_STRING_MAX`] characters.
    pub fn loggable(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(cut(&self.text(s), LOG_STRING_MAX)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.loggable(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.loggable(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// A tool result for the log: secrets replaced, at most [`LOG_STRING_MAX`] characters.
    pub fn summary(&self, s: &str) -> String {
        cut(&self.text(s), LOG_STRING_MAX)
    }
}

fn cut(s: &str, max: usize) -> String {
    let total = s.chars().count();
    if total <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str(&format!("… [{} more characters]", total - max));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_replaced_and_long_strings_cut() {
        let r = Redactor::new(["sct_0123456789abcdef", "short"]);
        assert_eq!(
            r.text("HTTP_PROXY=http://run:sct_0123456789abcdef@sidecar:8081 short"),
            "HTTP_PROXY=http://run:[redacted]@sidecar:8081 short"
        );
        let v = r.loggable(
            &json!({"path": "a", "content": "x".repeat(5000), "n": [1, "sct_0123456789abcdef"]}),
        );
        assert_eq!(v["path"], "a");
        assert_eq!(v["n"], json!([1, "[redacted]"]));
        let c = v["content"].as_str().unwrap();
        assert!(
            c.starts_with(&"x".repeat(1000)) && c.ends_with("… [4000 more characters]"),
            "{c}"
        );
    }
}
