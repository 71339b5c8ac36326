//! The run form generated from an agent's input JSON Schema, and the form post turned back into the JSON
//! input. Top-level properties become fields (string, integer, number, boolean, enum; anything else is a
//! JSON text area); `required`, `default`, `description` and `title` are honoured. Validation is the
//! domain's (`packages::validate_input`); its errors come back next to their field.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// One field of the run form.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    pub label: String,
    pub description: Option<String>,
    /// `string`, `integer`, `number`, `boolean`, `enum` or `json`.
    pub kind: &'static str,
    pub required: bool,
    pub options: Vec<String>,
    /// The value shown: what was submitted, else the schema's default.
    pub value: String,
    pub error: Option<String>,
}

fn kind_of(prop: &Value) -> &'static str {
    if prop.get("enum").and_then(Value::as_array).is_some() {
        return "enum";
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("string") => "string",
        Some("integer") => "integer",
        Some("number") => "number",
        Some("boolean") => "boolean",
        _ => "json",
    }
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(_) | Value::Array(_) => serde_json::to_string_pretty(v).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn properties(schema: Option<&Value>) -> Vec<(String, Value)> {
    schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The fields of `schema`, filled with `values` (by property name) and `errors`.
pub fn fields(
    schema: Option<&Value>,
    values: &HashMap<String, String>,
    errors: &HashMap<String, String>,
) -> Vec<Field> {
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    properties(schema)
        .into_iter()
        .map(|(name, prop)| {
            let kind = kind_of(&prop);
            let value = values
                .get(&name)
                .cloned()
                .or_else(|| prop.get("default").map(display))
                .unwrap_or_default();
            Field {
                label: prop
                    .get("title")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| name.clone()),
                description: prop
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                kind,
                required: required.contains(&name.as_str()),
                options: prop
                    .get("enum")
                    .and_then(Value::as_array)
                    .map(|o| o.iter().map(display).collect())
                    .unwrap_or_default(),
                error: errors.get(&name).cloned(),
                value,
                name,
            }
        })
        .collect()
}

/// The submitted `input.<name>` values of a form post.
pub fn submitted(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("input.").map(|n| (n.to_string(), v.clone())))
        .collect()
}

/// The JSON input of a form post, or the errors of fields whose text is not what their type needs
/// (a JSON area that does not parse). Empty optional fields are left out, so defaults apply; a value of
/// the wrong type is passed through for the schema to name.
pub fn input(
    schema: Option<&Value>,
    values: &HashMap<String, String>,
) -> Result<Value, HashMap<String, String>> {
    let mut out = Map::new();
    let mut errors = HashMap::new();
    for (name, prop) in properties(schema) {
        let raw = values.get(&name).map(|s| s.trim().to_string());
        let value = match kind_of(&prop) {
            "boolean" => Some(Value::Bool(raw.as_deref() == Some("true"))),
            _ if raw.as_deref().unwrap_or("").is_empty() => None,
            "enum" => {
                let raw = raw.unwrap_or_default();
                prop.get("enum")
                    .and_then(Value::as_array)
                    .and_then(|o| o.iter().find(|v| display(v) == raw).cloned())
                    .or(Some(Value::String(raw)))
            }
            "integer" => {
                let raw = raw.unwrap_or_default();
                Some(
                    raw.parse::<i64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(raw)),
                )
            }
            "number" => {
                let raw = raw.unwrap_or_default();
                Some(
                    raw.parse::<f64>()
                        .ok()
                        .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                        .unwrap_or(Value::String(raw)),
                )
            }
            "json" => match serde_json::from_str::<Value>(raw.as_deref().unwrap_or("")) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.insert(name.clone(), format!("is not valid JSON: {e}"));
                    None
                }
            },
            _ => raw.map(Value::String),
        };
        if let Some(v) = value {
            out.insert(name, v);
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(errors)
    }
}

/// Domain validation errors (`input.<name>…`) by property name, for display next to the fields; errors
/// that name no property are returned apart.
pub fn errors_by_field(
    errors: &[crate::domain::FieldError],
    schema: Option<&Value>,
) -> (HashMap<String, String>, Vec<String>) {
    let names: Vec<String> = properties(schema).into_iter().map(|(n, _)| n).collect();
    let mut by_field = HashMap::new();
    let mut other = Vec::new();
    for e in errors {
        let path = e.field.strip_prefix("input").unwrap_or(&e.field);
        let first = path
            .trim_start_matches('.')
            .split(['.', '['])
            .next()
            .unwrap_or("");
        if names.iter().any(|n| n == first) {
            by_field
                .entry(first.to_string())
                .or_insert_with(|| e.message.clone());
        } else {
            other.push(format!("{}: {}", e.field, e.message));
        }
    }
    (by_field, other)
}

/// A domain error of a dashboard form: the messages of the fields the form has (`known`; a field error
/// `input.x` belongs to the form's `input`, and a `param` counts as a field), and what else there is to
/// say above the form.
pub fn form_errors(
    e: &crate::domain::DomainError,
    known: &[&str],
) -> (HashMap<String, String>, Option<String>) {
    let mut by_field = HashMap::new();
    let mut other = Vec::new();
    let mut errors: Vec<(String, String)> = e
        .errors
        .iter()
        .flatten()
        .map(|f| (f.field.clone(), f.message.clone()))
        .collect();
    if errors.is_empty() {
        if let Some(p) = &e.param {
            errors.push((p.clone(), e.detail.clone()));
        }
    }
    for (field, message) in errors {
        let head = field.split(['.', '[']).next().unwrap_or("");
        match known.iter().find(|k| **k == head) {
            Some(k) => {
                by_field.entry(k.to_string()).or_insert(message);
            }
            None => other.push(format!("{field}: {message}")),
        }
    }
    let general = if by_field.is_empty() && other.is_empty() {
        Some(e.detail.clone())
    } else if other.is_empty() {
        None
    } else {
        Some(other.join("; "))
    };
    (by_field, general)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object",
               "properties": {"name": {"type": "string", "description": "Who to greet"},
                              "language": {"type": "string", "enum": ["en", "fr"], "default": "en"},
                              "count": {"type": "integer"}, "loud": {"type": "boolean"},
                              "extra": {"type": "object"}},
               "required": ["name"]})
    }

    #[test]
    fn fields_follow_the_schema() {
        let s = schema();
        let f = fields(Some(&s), &HashMap::new(), &HashMap::new());
        let kinds: Vec<_> = f
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.required))
            .collect();
        assert_eq!(
            kinds,
            [
                ("name", "string", true),
                ("language", "enum", false),
                ("count", "integer", false),
                ("loud", "boolean", false),
                ("extra", "json", false)
            ]
        );
        assert_eq!(f[1].value, "en", "the default is shown");
        assert_eq!(f[1].options, ["en", "fr"]);
        assert_eq!(f[0].description.as_deref(), Some("Who to greet"));
    }

    #[test]
    fn form_values_become_typed_input() {
        let s = schema();
        let values: HashMap<String, String> = [
            ("name", "Ada"),
            ("language", "fr"),
            ("count", "3"),
            ("loud", "true"),
            ("extra", "{\"a\": 1}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            input(Some(&s), &values).unwrap(),
            json!({"name": "Ada", "language": "fr", "count": 3, "loud": true, "extra": {"a": 1}})
        );
        let mut bad = values.clone();
        bad.insert("extra".into(), "{".into());
        assert!(input(Some(&s), &bad).unwrap_err()["extra"].contains("not valid JSON"));
        // Empty optional fields are left out so that defaults apply; a wrong type goes to the schema.
        let sparse: HashMap<String, String> = [("name", ""), ("count", "many")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            input(Some(&s), &sparse).unwrap(),
            json!({"count": "many", "loud": false})
        );
    }
}
