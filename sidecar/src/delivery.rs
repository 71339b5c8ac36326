//! Rendering an integration auth's `delivery.http` into the credential header (SPEC §14.2, §16.2).
//!
//! `{$credential.<field>}` placeholders in `value` are substituted from the connection's credentials,
//! then `encoding: "base64"` (optional) encodes the result, then `prefix` (optional) is prepended with
//! one space. The API server renders the header and passes it to the sidecar through `/configure`.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Why a delivery rule could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The rule is not a usable `delivery.http` header rule.
    #[error("invalid delivery.http: {0}")]
    InvalidRule(String),
    /// A referenced credential field is absent (or not a scalar).
    #[error("credential field `{0}` is missing")]
    MissingCredential(String),
    /// The rendered value cannot be sent as an HTTP header.
    #[error("rendered header value is not a valid HTTP header value")]
    InvalidHeaderValue,
}

const PLACEHOLDER: &str = "{$credential.";

/// Renders `delivery.http` (the `http` object; a whole `delivery` object holding `http` is accepted too)
/// with the given credentials into `(header name, header value)`.
///
/// The returned value is a secret: never log it.
pub fn render_header(
    delivery_http: &Value,
    credentials: &Map<String, Value>,
) -> Result<(String, String), DeliveryError> {
    let rule = match delivery_http {
        Value::Object(o) if !o.contains_key("name") && o.get("http").is_some() => {
            delivery_http.get("http").expect("checked")
        }
        other => other,
    };
    let rule = rule
        .as_object()
        .ok_or_else(|| DeliveryError::InvalidRule("expected an object".into()))?;
    match rule.get("in") {
        None => {}
        Some(Value::String(s)) if s == "header" => {}
        Some(other) => {
            return Err(DeliveryError::InvalidRule(format!(
                "`in` must be \"header\", got {other}"
            )))
        }
    }
    let name = rule
        .get("name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DeliveryError::InvalidRule("`name` is required".into()))?;
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(DeliveryError::InvalidRule(format!(
            "`{name}` is not a valid header name"
        )));
    }
    let template = rule
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| DeliveryError::InvalidRule("`value` must be a string".into()))?;
    let mut value = substitute(template, credentials)?;
    match rule.get("encoding") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) if e == "base64" => {
            value = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        }
        Some(other) => {
            return Err(DeliveryError::InvalidRule(format!(
                "unsupported encoding {other}"
            )))
        }
    }
    match rule.get("prefix") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p.is_empty() => {}
        Some(Value::String(p)) => value = format!("{p} {value}"),
        Some(_) => {
            return Err(DeliveryError::InvalidRule(
                "`prefix` must be a string".into(),
            ))
        }
    }
    if http::HeaderValue::from_str(&value).is_err() {
        return Err(DeliveryError::InvalidHeaderValue);
    }
    Ok((name.to_string(), value))
}

/// Replaces every `{$credential.<field>}` of `template` (an MCP server's environment value, for
/// instance); other text is kept as is. The result is a secret when a placeholder was replaced.
pub fn render_template(
    template: &str,
    credentials: &Map<String, Value>,
) -> Result<String, DeliveryError> {
    substitute(template, credentials)
}

/// Replaces every `{$credential.<field>}`; other text is kept as is.
fn substitute(template: &str, credentials: &Map<String, Value>) -> Result<String, DeliveryError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(PLACEHOLDER) {
        out.push_str(&rest[..start]);
        let after = &rest[start + PLACEHOLDER.len()..];
        let end = after.find('}').ok_or_else(|| {
            DeliveryError::InvalidRule("unterminated {$credential.…} placeholder".into())
        })?;
        let field = &after[..end];
        let v = match credentials.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => return Err(DeliveryError::MissingCredential(field.to_string())),
        };
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn creds(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn bearer_prefix() {
        let rule = json!({"in": "header", "name": "Authorization", "prefix": "Bearer", "value": "{$credential.access_token}"});
        let (n, v) = render_header(&rule, &creds(json!({"access_token": "tok"}))).unwrap();
        assert_eq!((n.as_str(), v.as_str()), ("Authorization", "Bearer tok"));
    }

    #[test]
    fn basic_base64_then_prefix() {
        let rule = json!({"in": "header", "name": "Authorization", "prefix": "Basic", "value": "{$credential.account_sid}:{$credential.auth_token}", "encoding": "base64"});
        let (_, v) = render_header(
            &rule,
            &creds(json!({"account_sid": "AC1", "auth_token": "secret"})),
        )
        .unwrap();
        assert_eq!(v, "Basic QUMxOnNlY3JldA==");
    }

    #[test]
    fn whole_delivery_object_and_no_prefix() {
        let rule =
            json!({"http": {"in": "header", "name": "X-Api-Key", "value": "k-{$credential.key}"}});
        let (n, v) = render_header(&rule, &creds(json!({"key": 42}))).unwrap();
        assert_eq!((n.as_str(), v.as_str()), ("X-Api-Key", "k-42"));
    }

    #[test]
    fn errors() {
        let ok = creds(json!({"access_token": "t"}));
        let rule = json!({"name": "Authorization", "value": "{$credential.missing}"});
        assert_eq!(
            render_header(&rule, &ok).unwrap_err(),
            DeliveryError::MissingCredential("missing".into())
        );
        let rule = json!({"in": "query", "name": "a", "value": "x"});
        assert!(matches!(
            render_header(&rule, &ok),
            Err(DeliveryError::InvalidRule(_))
        ));
        let rule = json!({"env": {"X": {"value": "{$credential.access_token}"}}});
        assert!(render_header(&rule, &ok).is_err());
        let rule = json!({"name": "A", "value": "{$credential.access_token}", "encoding": "hex"});
        assert!(render_header(&rule, &ok).is_err());
        let rule = json!({"name": "A", "value": "{$credential.access_token"});
        assert!(render_header(&rule, &ok).is_err());
        let rule = json!({"name": "A", "value": "{$credential.x}"});
        assert_eq!(
            render_header(&rule, &creds(json!({"x": "a\r\nInjected: 1"}))).unwrap_err(),
            DeliveryError::InvalidHeaderValue
        );
    }
}
