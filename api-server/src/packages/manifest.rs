//! AFPS manifest validation (§16.2). Every problem is collected, each as a [`FieldError`] whose field is
//! `manifest.<path>`; unknown fields are preserved untouched.

use std::fmt;

use serde_json::{Map, Value};

use crate::domain::FieldError;

/// `agent`, `skill`, `integration` or `mcp-server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackageType {
    Agent,
    Skill,
    Integration,
    McpServer,
}

impl PackageType {
    pub fn as_str(&self) -> &'static str {
        match self {
            PackageType::Agent => "agent",
            PackageType::Skill => "skill",
            PackageType::Integration => "integration",
            PackageType::McpServer => "mcp-server",
        }
    }

    pub fn parse(s: &str) -> Option<PackageType> {
        match s {
            "agent" => Some(PackageType::Agent),
            "skill" => Some(PackageType::Skill),
            "integration" => Some(PackageType::Integration),
            "mcp-server" => Some(PackageType::McpServer),
            _ => None,
        }
    }
}

/// A package id, `@scope/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageId {
    /// Without the `@`.
    pub scope: String,
    pub name: String,
}

impl PackageId {
    /// Parses `@scope/name`; `%40scope/name` is accepted too.
    pub fn parse(s: &str) -> Option<PackageId> {
        match s.strip_prefix("%40") {
            Some(rest) => Self::parse_exact(&format!("@{rest}")),
            None => Self::parse_exact(s),
        }
    }

    fn parse_exact(s: &str) -> Option<PackageId> {
        let rest = s.strip_prefix('@')?;
        let (scope, name) = rest.split_once('/')?;
        (valid_segment(scope) && valid_segment(name)).then(|| PackageId {
            scope: scope.to_string(),
            name: name.to_string(),
        })
    }

    /// From the two path parameters (`{scope}` with its `@`, possibly still `%40`-encoded).
    pub fn from_parts(scope: &str, name: &str) -> Option<PackageId> {
        let scope = scope
            .strip_prefix('@')
            .or_else(|| scope.strip_prefix("%40"))?;
        (valid_segment(scope) && valid_segment(name)).then(|| PackageId {
            scope: scope.to_string(),
            name: name.to_string(),
        })
    }

    /// `@scope`
    pub fn at_scope(&self) -> String {
        format!("@{}", self.scope)
    }
}

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}/{}", self.scope, self.name)
    }
}

/// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`
pub fn valid_segment(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A validated manifest: the interpreted fields plus the original JSON (unknown fields kept).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub raw: Value,
    pub schema_version: String,
    pub id: PackageId,
    pub version: semver::Version,
    pub kind: PackageType,
    pub display_name: Option<String>,
    pub description: Option<String>,
}

pub(crate) struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    pub(crate) fn err(&mut self, path: &str, code: &'static str, message: impl Into<String>) {
        let field = if path.is_empty() {
            "manifest".to_string()
        } else {
            format!("manifest.{path}")
        };
        self.errors.push(FieldError::new(field, code, message));
    }

    pub(crate) fn type_name(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// A required or optional string.
    pub(crate) fn string<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<&'v str> {
        match obj.get(key) {
            None if required => {
                self.err(path, "required", "is required");
                None
            }
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => {
                self.err(
                    path,
                    "invalid_type",
                    format!("must be a string, got {}", Self::type_name(v)),
                );
                None
            }
        }
    }

    pub(crate) fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(o) => Some(o),
            other => {
                self.err(
                    path,
                    "invalid_type",
                    format!("must be an object, got {}", Self::type_name(other)),
                );
                None
            }
        }
    }

    /// `<parent>.schema`: a JSON Schema object that compiles.
    fn schema_holder(&mut self, obj: &Map<String, Value>, key: &str) {
        let Some(holder) = obj.get(key) else { return };
        let Some(holder) = self.object(holder, key) else {
            return;
        };
        if let Some(schema) = holder.get("schema") {
            self.schema(schema, &format!("{key}.schema"));
        }
    }

    fn schema(&mut self, schema: &Value, path: &str) {
        if !schema.is_object() {
            self.err(path, "invalid_schema", "must be a JSON Schema object");
            return;
        }
        if let Err(e) = compile_schema(schema) {
            self.err(path, "invalid_schema", format!("does not compile: {e}"));
        }
    }
}

/// Compiles a JSON Schema (no remote references are fetched).
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

fn is_auth_key(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Validates a manifest object, reporting every problem.
pub fn validate_manifest(v: &Value) -> Result<Manifest, Vec<FieldError>> {
    let mut c = Check { errors: Vec::new() };
    let Some(obj) = c.object(v, "") else {
        return Err(c.errors);
    };

    let schema_version = c.string(obj, "schema_version", "schema_version", true);
    if let Some(sv) = schema_version {
        match sv.split_once('.') {
            Some(("0", minor)) if minor == "0" || valid_minor(minor) => {}
            Some((major, minor))
                if !major.is_empty()
                    && major.bytes().all(|b| b.is_ascii_digit())
                    && (minor == "0" || valid_minor(minor)) =>
            {
                c.err(
                    "schema_version",
                    "unsupported_schema_version",
                    format!("schema_version {sv} is not supported; this platform reads 0.x"),
                )
            }
            _ => c.err(
                "schema_version",
                "invalid_format",
                "must look like 0.<minor>, e.g. 0.1",
            ),
        }
    }

    let id = c
        .string(obj, "name", "name", true)
        .and_then(|n| match PackageId::parse_exact(n) {
            Some(id) => Some(id),
            None => {
                c.err(
                    "name",
                    "invalid_format",
                    "must be @scope/name with lowercase letters, digits and inner dashes",
                );
                None
            }
        });

    let version =
        c.string(obj, "version", "version", true)
            .and_then(|s| match semver::Version::parse(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    c.err(
                        "version",
                        "invalid_format",
                        format!("must be a SemVer 2.0 version: {e}"),
                    );
                    None
                }
            });

    let kind = c
        .string(obj, "type", "type", true)
        .and_then(|t| match PackageType::parse(t) {
            Some(k) => Some(k),
            None => {
                c.err(
                    "type",
                    "invalid_value",
                    "must be one of agent, skill, integration, mcp-server",
                );
                None
            }
        });

    let display_name = c
        .string(
            obj,
            "display_name",
            "display_name",
            kind == Some(PackageType::Agent),
        )
        .map(str::to_string);
    let description = c
        .string(obj, "description", "description", false)
        .map(str::to_string);

    c.schema_holder(obj, "input");
    c.schema_holder(obj, "output");

    if let Some(t) = obj.get("timeout") {
        if t.as_u64().is_none_or(|n| n == 0) {
            c.err(
                "timeout",
                "invalid_value",
                "must be a positive integer (seconds)",
            );
        }
    }

    if let Some(deps) = obj.get("dependencies") {
        if let Some(deps) = c.object(deps, "dependencies") {
            for key in ["skills", "integrations", "mcp_servers"] {
                let path = format!("dependencies.{key}");
                let Some(map) = deps.get(key) else { continue };
                let Some(map) = c.object(map, &path) else {
                    continue;
                };
                for (dep, range) in map {
                    let p = format!("{path}.{dep}");
                    if PackageId::parse_exact(dep).is_none() {
                        c.err(&p, "invalid_format", "dependency ids must be @scope/name");
                    }
                    match range {
                        Value::String(r) if semver::VersionReq::parse(r).is_ok() => {}
                        _ => c.err(&p, "invalid_format", "must be a semver range string"),
                    }
                }
            }
        }
    }

    if let Some(auths) = obj.get("auths") {
        if let Some(auths) = c.object(auths, "auths") {
            for (key, auth) in auths {
                validate_auth(&mut c, key, auth);
            }
        }
    }

    if kind == Some(PackageType::McpServer) {
        super::mcp::validate_server(&mut c, obj);
    }

    if let Some(meta) = obj.get("_meta") {
        if let Some(meta) = c.object(meta, "_meta") {
            if let Some(ws) = meta.get("dev.appstrate/workspace") {
                let path = "_meta.dev.appstrate/workspace";
                if c.object(ws, path).is_some() {
                    for (at, code, message) in super::workspace_meta::file_problems(ws) {
                        c.err(&format!("{path}.{at}"), code, message);
                    }
                }
            }
            if let Some(res) = meta.get("dev.appstrate/resources") {
                let path = "_meta.dev.appstrate/resources";
                if let Some(res) = c.object(res, path) {
                    for k in ["memory_mb", "cpu"] {
                        if let Some(v) = res.get(k) {
                            if !v.as_f64().is_some_and(|n| n > 0.0) {
                                c.err(
                                    &format!("{path}.{k}"),
                                    "invalid_value",
                                    "must be a positive number",
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    match (schema_version, id, version, kind) {
        (Some(sv), Some(id), Some(version), Some(kind)) if c.errors.is_empty() => Ok(Manifest {
            raw: v.clone(),
            schema_version: sv.to_string(),
            id,
            version,
            kind,
            display_name,
            description,
        }),
        _ => Err(c.errors),
    }
}

fn valid_minor(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit())
}

fn validate_auth(c: &mut Check, key: &str, auth: &Value) {
    let path = format!("auths.{key}");
    if !is_auth_key(key) {
        c.err(
            &path,
            "invalid_format",
            "auth keys must match ^[a-z][a-z0-9_]*$",
        );
    }
    let Some(auth) = c.object(auth, &path) else {
        return;
    };
    match c.string(auth, "type", &format!("{path}.type"), true) {
        Some("oauth2") => {
            // An oauth2 auth the connect flow could not serve is refused here, naming the field.
            if let Err(problems) =
                crate::integrations::OAuthSpec::parse(&Value::Object(auth.clone()))
            {
                for p in problems {
                    c.err(&format!("{path}.{}", p.field), p.code, p.message);
                }
            }
        }
        Some("api_key" | "basic" | "custom") | None => {}
        Some(_) => c.err(
            &format!("{path}.type"),
            "invalid_value",
            "must be one of oauth2, api_key, basic, custom",
        ),
    }
    if let Some(uris) = auth.get("authorized_uris") {
        let ok = uris
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            c.err(
                &format!("{path}.authorized_uris"),
                "invalid_type",
                "must be an array of strings",
            );
        } else {
            // The sidecar compiles the same patterns for every run: a pattern it would refuse (including
            // one too costly to match) is refused here, at import, rather than failing each run.
            let patterns = uris
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            for (i, pattern) in patterns.enumerate() {
                if let Err(e) = sidecar::allowlist::UriPattern::parse(pattern) {
                    c.err(&format!("{path}.authorized_uris[{i}]"), "invalid_value", e);
                }
            }
        }
    }
    if let Some(all) = auth.get("allow_all_uris") {
        if !all.is_boolean() {
            c.err(
                &format!("{path}.allow_all_uris"),
                "invalid_type",
                "must be a boolean",
            );
        }
    }
    if let Some(creds) = auth.get("credentials") {
        let cpath = format!("{path}.credentials");
        if let Some(creds) = c.object(creds, &cpath) {
            if let Some(schema) = creds.get("schema") {
                c.schema(schema, &format!("{cpath}.schema"));
            }
        }
    }
    let dpath = format!("{path}.delivery");
    match auth.get("delivery") {
        None => c.err(&dpath, "required", "is required"),
        Some(d) => {
            if let Some(d) = c.object(d, &dpath) {
                match (d.get("http"), d.get("env")) {
                    (None, None) => c.err(
                        &dpath,
                        "invalid_value",
                        "must hold an http or an env delivery",
                    ),
                    (Some(http), _) => validate_http_delivery(c, http, &format!("{dpath}.http")),
                    (None, Some(env)) => {
                        c.object(env, &format!("{dpath}.env"));
                    }
                }
            }
        }
    }
    if let Some(Value::Object(meta)) = auth.get("_meta") {
        if let Some(a) = meta.get("dev.appstrate/auth") {
            let req = a.get("required");
            if req.is_some_and(|r| !r.is_boolean()) {
                c.err(
                    &format!("{path}._meta.dev.appstrate/auth.required"),
                    "invalid_type",
                    "must be a boolean",
                );
            }
        }
    }
}

fn validate_http_delivery(c: &mut Check, http: &Value, path: &str) {
    let Some(h) = c.object(http, path) else {
        return;
    };
    match h.get("in") {
        Some(Value::String(s)) if s == "header" => {}
        None => c.err(&format!("{path}.in"), "required", "is required"),
        Some(_) => c.err(
            &format!("{path}.in"),
            "invalid_value",
            "only \"header\" is supported",
        ),
    }
    if let Some(name) = c.string(h, "name", &format!("{path}.name"), true) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.err(
                &format!("{path}.name"),
                "invalid_format",
                "must be an HTTP header name",
            );
        }
    }
    c.string(h, "value", &format!("{path}.value"), true);
    c.string(h, "prefix", &format!("{path}.prefix"), false);
    match h.get("encoding") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "base64" => {}
        Some(_) => c.err(
            &format!("{path}.encoding"),
            "invalid_value",
            "the only encoding is \"base64\"",
        ),
    }
}

/// Whether an auth must have a connection for a run: `_meta["dev.appstrate/auth"].required`, default true.
pub fn auth_required(auth: &Value) -> bool {
    auth.pointer("/_meta/dev.appstrate~1auth/required")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<(String, &'static str)> {
        validate_manifest(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn ids() {
        assert_eq!(
            PackageId::parse("@appstrate/github").unwrap().to_string(),
            "@appstrate/github"
        );
        assert_eq!(
            PackageId::parse("%40a/b").unwrap(),
            PackageId::from_parts("@a", "b").unwrap()
        );
        assert_eq!(
            PackageId::from_parts("%40a", "b-c").unwrap().to_string(),
            "@a/b-c"
        );
        for bad in [
            "a/b", "@A/b", "@a/-b", "@a/b-", "@a", "@/b", "@a/b/c", "@a_b/c",
        ] {
            assert!(PackageId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let got = fields(json!({
            "schema_version": "1.0",
            "name": "acme/x",
            "version": "1.0",
            "type": "plugin",
            "timeout": 0,
            "input": {"schema": {"type": "nope"}},
        }));
        for want in [
            ("manifest.schema_version", "unsupported_schema_version"),
            ("manifest.name", "invalid_format"),
            ("manifest.version", "invalid_format"),
            ("manifest.type", "invalid_value"),
            ("manifest.timeout", "invalid_value"),
            ("manifest.input.schema", "invalid_schema"),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1)),
                "{want:?} in {got:?}"
            );
        }
        let got = fields(json!({}));
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(_, c)| *c == "required"));
        assert_eq!(fields(json!([]))[0], ("manifest".into(), "invalid_type"));
        assert_eq!(
            fields(
                json!({"schema_version": "0.01", "name": "@a/b", "version": "1.0.0", "type": "skill"})
            ),
            vec![("manifest.schema_version".into(), "invalid_format")]
        );
    }

    #[test]
    fn agent_needs_display_name_and_unknown_fields_kept() {
        let m =
            json!({"schema_version": "0.1", "name": "@a/b", "version": "1.0.0", "type": "agent"});
        assert_eq!(
            fields(m),
            vec![("manifest.display_name".into(), "required")]
        );
        let m = json!({"$schema": "x", "schema_version": "0.0", "name": "@a/b", "version": "1.0.0-rc.1+b",
                       "type": "agent", "display_name": "B", "author": "me"});
        let ok = validate_manifest(&m).unwrap();
        assert_eq!(ok.raw["author"], "me");
    }

    #[test]
    fn auths_and_dependencies() {
        let got = fields(json!({
            "schema_version": "0.1", "name": "@a/i", "version": "1.0.0", "type": "integration",
            "auths": {
                "Bad": {"type": "oauth2", "delivery": {"http": {"in": "header", "name": "A", "value": "x"}}},
                "k": {"type": "weird", "credentials": {"schema": {"type": 5}},
                      "delivery": {"http": {"in": "query", "name": "A", "value": "x", "encoding": "hex"}}},
                "n": {"type": "custom"}
            },
            "dependencies": {"integrations": {"nope": "^1", "@a/b": "not a range"}}
        }));
        for want in [
            ("manifest.auths.Bad", "invalid_format"),
            ("manifest.auths.Bad.token_endpoint", "required"),
            ("manifest.auths.Bad.authorization_endpoint", "required"),
            ("manifest.auths.k.type", "invalid_value"),
            ("manifest.auths.k.credentials.schema", "invalid_schema"),
            ("manifest.auths.k.delivery.http.in", "invalid_value"),
            ("manifest.auths.k.delivery.http.encoding", "invalid_value"),
            ("manifest.auths.n.delivery", "required"),
            ("manifest.dependencies.integrations.nope", "invalid_format"),
            ("manifest.dependencies.integrations.@a/b", "invalid_format"),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1)),
                "{want:?} in {got:?}"
            );
        }
        assert!(auth_required(&json!({})));
        assert!(!auth_required(
            &json!({"_meta": {"dev.appstrate/auth": {"required": false}}})
        ));
    }
}
