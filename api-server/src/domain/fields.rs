//! A JSON object validator that collects every problem of a request body or manifest section as
//! [`FieldError`]s, so one answer names every field to fix.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{DomainError, FieldError};

/// Walks one JSON object, collecting a [`FieldError`] for every problem. Call [`Fields::finish`] last: it
/// adds `unknown_field` for every key that was never read.
pub struct Fields<'a> {
    map: Option<&'a Map<String, Value>>,
    prefix: String,
    seen: HashSet<&'a str>,
    pub errors: Vec<FieldError>,
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    pub fn new(value: &'a Value, prefix: &str) -> Self {
        let mut f = Fields {
            map: value.as_object(),
            prefix: prefix.to_string(),
            seen: HashSet::new(),
            errors: Vec::new(),
        };
        if f.map.is_none() {
            let field = if prefix.is_empty() { "body" } else { prefix };
            f.errors.push(FieldError::new(
                field,
                "invalid_type",
                format!("must be an object, got {}", describe(value)),
            ));
        }
        f
    }

    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn error(&mut self, key: &str, code: &'static str, message: impl Into<String>) {
        let field = self.path(key);
        self.errors.push(FieldError::new(field, code, message));
    }

    /// The raw value of `key`, marking it as known.
    pub fn raw(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.insert(key);
        self.map.and_then(|m| m.get(key))
    }

    /// A string of `min..=max` characters. `required` reports a missing key.
    pub fn string(
        &mut self,
        key: &'a str,
        required: bool,
        min: usize,
        max: usize,
    ) -> Option<String> {
        match self.raw(key) {
            None if required => {
                self.error(key, "required", "is required");
                None
            }
            None => None,
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n < min || n > max {
                    self.error(
                        key,
                        "out_of_range",
                        format!("must be {min} to {max} characters, got {n}"),
                    );
                    None
                } else {
                    Some(s.clone())
                }
            }
            Some(v) => {
                let msg = format!("must be a string, got {}", describe(v));
                self.error(key, "invalid_type", msg);
                None
            }
        }
    }

    /// Absent → `None`; `null` → `Some(None)`; a string → `Some(Some(s))`.
    pub fn nullable_string(&mut self, key: &'a str, max: usize) -> Option<Option<String>> {
        match self.raw(key) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => self.string(key, false, 0, max).map(Some),
        }
    }

    pub fn bool(&mut self, key: &'a str) -> Option<bool> {
        match self.raw(key) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                let msg = format!("must be a boolean, got {}", describe(v));
                self.error(key, "invalid_type", msg);
                None
            }
        }
    }

    /// An array of strings.
    pub fn string_array(&mut self, key: &'a str) -> Option<Vec<String>> {
        match self.raw(key) {
            None => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        v => {
                            let msg = format!("must be a string, got {}", describe(v));
                            self.error(&format!("{key}[{i}]"), "invalid_type", msg);
                        }
                    }
                }
                Some(out)
            }
            Some(v) => {
                let msg = format!("must be an array, got {}", describe(v));
                self.error(key, "invalid_type", msg);
                None
            }
        }
    }

    /// Reports unknown fields and returns every collected error as one `validation_failed`.
    pub fn finish(mut self) -> Result<(), DomainError> {
        if let Some(map) = self.map {
            for key in map.keys() {
                if !self.seen.contains(key.as_str()) {
                    let field = self.path(key);
                    self.errors.push(FieldError::new(
                        field,
                        "unknown_field",
                        "is not a known field",
                    ));
                }
            }
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::validation(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_problem_is_reported() {
        let body = json!({"name": 5, "extra": true, "email": "x"});
        let mut f = Fields::new(&body, "");
        f.string("name", true, 1, 100);
        f.string("email", false, 3, 10);
        f.string("missing", true, 1, 10);
        let err = f.finish().unwrap_err();
        let errors = err.errors.unwrap();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            got,
            vec![
                ("name", "invalid_type"),
                ("email", "out_of_range"),
                ("missing", "required"),
                ("extra", "unknown_field")
            ]
        );
    }

    #[test]
    fn nested_prefix_and_non_object() {
        let body = json!({"topic": 1});
        let mut f = Fields::new(&body, "input");
        f.string("topic", true, 1, 10);
        assert_eq!(
            f.finish().unwrap_err().errors.unwrap()[0].field,
            "input.topic"
        );
        let arr = json!([]);
        let f = Fields::new(&arr, "");
        assert_eq!(
            f.finish().unwrap_err().errors.unwrap()[0].code,
            "invalid_type"
        );
    }
}
