//! What an `oauth2` auth of an integration manifest declares, parsed once (pure): endpoints or an
//! `issuer`, client authentication, scopes, extra authorization parameters, PKCE, identity claims and the
//! scope separator. Import refuses an auth the connect flow could not serve, naming the field.

use serde_json::{Map, Value};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuth {
    /// HTTP Basic (`client_secret_basic`, the RFC 6749 default).
    Basic,
    /// In the form (`client_secret_post`).
    Post,
    /// A public client (`none`): `client_id` only.
    None,
}

/// A parsed `oauth2` auth.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthSpec {
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub token_auth: TokenAuth,
    pub default_scopes: Vec<String>,
    /// The scope values a caller may choose from (empty: any).
    pub scope_catalog: Vec<String>,
    pub authorization_params: Vec<(String, String)>,
    /// `Some(true)` when `code_challenge_methods_supported` lists S256; `None` when not declared (the
    /// issuer's metadata decides).
    pub pkce: Option<bool>,
    /// Output name → path (`$.a.b`, `$.list[0]`).
    pub identity_claims: Vec<(String, String)>,
    pub callback_url_hint: Option<String>,
    pub scope_separator: String,
}

/// One problem with a field of the auth (`field` is relative to `auths.<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// Parameters the connect flow sets itself; a manifest may not override them.
const RESERVED_PARAMS: [&str; 7] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
];

fn http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn valid_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('$') else {
        return false;
    };
    rest.is_empty()
        || (rest.starts_with('.') || rest.starts_with('[')) && parse_path(rest).is_some()
}

enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(rest: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut key = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    key.push(n);
                    chars.next();
                }
                if key.is_empty() {
                    return None;
                }
                steps.push(Step::Key(key));
            }
            '[' => {
                let mut idx = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    idx.push(n);
                }
                steps.push(Step::Index(idx.parse().ok()?));
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// The value at a `$.a.b[0]` path of `doc`.
pub fn claim<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let steps = parse_path(path.strip_prefix('$')?)?;
    let mut cur = doc;
    for s in steps {
        cur = match s {
            Step::Key(k) => cur.get(&k)?,
            Step::Index(i) => cur.get(i)?,
        };
    }
    Some(cur)
}

/// Maps a userinfo document through `identity_claims`; unset claims are left out.
pub fn map_identity(claims: &[(String, String)], doc: &Value) -> Value {
    let mut out = Map::new();
    for (name, path) in claims {
        if let Some(v) = claim(doc, path).filter(|v| !v.is_null()) {
            out.insert(name.clone(), v.clone());
        }
    }
    Value::Object(out)
}

impl OAuthSpec {
    /// Parses an `oauth2` auth object, reporting every problem.
    pub fn parse(auth: &Value) -> Result<OAuthSpec, Vec<SpecProblem>> {
        let mut problems = Vec::new();
        let mut err = |field: &str, code: &'static str, message: String| {
            problems.push(SpecProblem {
                field: field.to_string(),
                code,
                message,
            })
        };
        let empty = Map::new();
        let obj = auth.as_object().unwrap_or(&empty);
        let url_field =
            |name: &str, err: &mut dyn FnMut(&str, &'static str, String)| match obj.get(name) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if http_url(s) => Some(s.clone()),
                Some(_) => {
                    err(
                        name,
                        "invalid_format",
                        "must be an absolute http(s) URL".into(),
                    );
                    None
                }
            };
        let issuer = url_field("issuer", &mut err);
        let authorization_endpoint = url_field("authorization_endpoint", &mut err);
        let token_endpoint = url_field("token_endpoint", &mut err);
        let userinfo_endpoint = url_field("userinfo_endpoint", &mut err);
        let revocation_endpoint = url_field("revocation_endpoint", &mut err);
        if issuer.is_none() && !obj.contains_key("issuer") {
            for (name, v) in [
                ("authorization_endpoint", &authorization_endpoint),
                ("token_endpoint", &token_endpoint),
            ] {
                if v.is_none() && !obj.contains_key(name) {
                    err(
                        name,
                        "required",
                        "is required unless `issuer` is given (resolved by discovery)".into(),
                    );
                }
            }
        }
        let token_auth = match obj.get("token_endpoint_auth_method") {
            None => TokenAuth::Basic,
            Some(Value::String(s)) if s == "client_secret_basic" => TokenAuth::Basic,
            Some(Value::String(s)) if s == "client_secret_post" => TokenAuth::Post,
            Some(Value::String(s)) if s == "none" => TokenAuth::None,
            Some(_) => {
                err(
                    "token_endpoint_auth_method",
                    "invalid_value",
                    "must be client_secret_basic, client_secret_post or none".into(),
                );
                TokenAuth::Basic
            }
        };
        let strings = |v: Option<&Value>| -> Option<Vec<String>> {
            match v {
                None => Some(Vec::new()),
                Some(Value::Array(a)) => a.iter().map(|s| s.as_str().map(str::to_string)).collect(),
                Some(_) => None,
            }
        };
        let default_scopes = strings(obj.get("default_scopes")).unwrap_or_else(|| {
            err(
                "default_scopes",
                "invalid_type",
                "must be an array of strings".into(),
            );
            Vec::new()
        });
        let mut scope_catalog = Vec::new();
        match obj.get("scope_catalog") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item.get("value").and_then(Value::as_str).or(item.as_str()) {
                        Some(v) => scope_catalog.push(v.to_string()),
                        None => err(
                            &format!("scope_catalog[{i}].value"),
                            "required",
                            "each entry needs a string value".into(),
                        ),
                    }
                }
            }
            Some(_) => err(
                "scope_catalog",
                "invalid_type",
                "must be an array of {value, label}".into(),
            ),
        }
        let mut authorization_params = Vec::new();
        match obj.get("authorization_params") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let field = format!("authorization_params.{k}");
                    if RESERVED_PARAMS.contains(&k.as_str()) {
                        err(
                            &field,
                            "invalid_value",
                            format!("{k} is set by the connect flow and cannot be overridden"),
                        );
                    } else if let Some(s) = v.as_str() {
                        authorization_params.push((k.clone(), s.to_string()));
                    } else {
                        err(&field, "invalid_type", "must be a string".into());
                    }
                }
            }
            Some(_) => err(
                "authorization_params",
                "invalid_type",
                "must be an object of strings".into(),
            ),
        }
        let pkce = match strings(obj.get("code_challenge_methods_supported")) {
            None => {
                err(
                    "code_challenge_methods_supported",
                    "invalid_type",
                    "must be an array of strings".into(),
                );
                None
            }
            Some(m) if m.is_empty() => None,
            Some(m) if m.iter().any(|x| x == "S256") => Some(true),
            Some(_) => {
                err(
                    "code_challenge_methods_supported",
                    "invalid_value",
                    "only S256 is supported for PKCE (plain is not)".into(),
                );
                None
            }
        };
        let mut identity_claims = Vec::new();
        match obj.get("identity_claims") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v.as_str() {
                        Some(p) if valid_path(p) => {
                            identity_claims.push((k.clone(), p.to_string()))
                        }
                        _ => err(
                            &format!("identity_claims.{k}"),
                            "invalid_format",
                            "must be a path like $.email or $.data.id".into(),
                        ),
                    }
                }
            }
            Some(_) => err(
                "identity_claims",
                "invalid_type",
                "must be an object of paths".into(),
            ),
        }
        if !identity_claims.is_empty() && userinfo_endpoint.is_none() && issuer.is_none() {
            err(
                "userinfo_endpoint",
                "required",
                "identity_claims need a userinfo_endpoint (or an issuer that publishes one)".into(),
            );
        }
        let callback_url_hint = match obj.get("callback_url_hint") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                err(
                    "callback_url_hint",
                    "invalid_type",
                    "must be a string".into(),
                );
                None
            }
        };
        let scope_separator = match auth.pointer("/_meta/dev.appstrate~1oauth/scope_separator") {
            None => " ".to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                err(
                    "_meta.dev.appstrate/oauth.scope_separator",
                    "invalid_value",
                    "must be a non-empty string".into(),
                );
                " ".to_string()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(OAuthSpec {
            issuer,
            authorization_endpoint,
            token_endpoint,
            userinfo_endpoint,
            revocation_endpoint,
            token_auth,
            default_scopes,
            scope_catalog,
            authorization_params,
            pkce,
            identity_claims,
            callback_url_hint,
            scope_separator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_follow_paths() {
        let doc = json!({"id": 7, "data": {"login": "ada", "emails": ["a@x", "b@x"]}});
        assert_eq!(claim(&doc, "$.id"), Some(&json!(7)));
        assert_eq!(claim(&doc, "$.data.login"), Some(&json!("ada")));
        assert_eq!(claim(&doc, "$.data.emails[1]"), Some(&json!("b@x")));
        assert_eq!(claim(&doc, "$.nope"), None);
        let mapped = map_identity(
            &[
                ("accountId".into(), "$.data.login".into()),
                ("missing".into(), "$.x".into()),
            ],
            &doc,
        );
        assert_eq!(mapped, json!({"accountId": "ada"}));
    }

    #[test]
    fn problems_name_the_field() {
        let bad = json!({"type": "oauth2", "token_endpoint": "not a url",
            "token_endpoint_auth_method": "private_key_jwt",
            "authorization_params": {"redirect_uri": "x", "prompt": 1},
            "code_challenge_methods_supported": ["plain"],
            "identity_claims": {"sub": "id"},
            "_meta": {"dev.appstrate/oauth": {"scope_separator": ""}}});
        let mut fields: Vec<String> = OAuthSpec::parse(&bad)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            vec![
                "_meta.dev.appstrate/oauth.scope_separator",
                "authorization_endpoint",
                "authorization_params.prompt",
                "authorization_params.redirect_uri",
                "code_challenge_methods_supported",
                "identity_claims.sub",
                "token_endpoint",
                "token_endpoint_auth_method",
            ]
        );
    }

    #[test]
    fn issuer_form_and_defaults() {
        let spec = OAuthSpec::parse(
            &json!({"type": "oauth2", "issuer": "https://accounts.example.com",
            "default_scopes": ["openid"], "identity_claims": {"email": "$.email"}}),
        )
        .unwrap();
        assert_eq!(spec.token_auth, TokenAuth::Basic);
        assert_eq!(spec.scope_separator, " ");
        assert_eq!(spec.pkce, None);
        assert!(spec.authorization_endpoint.is_none());
    }
}
