//! The OpenAPI document's shared parts: the security schemes, the conventions applied to every operation,
//! the `/llms.txt` rendering of the document, and (in [`schemas`]) the documentation-only body types.

mod integration_schemas;
mod model_schemas;
mod schemas;

pub use integration_schemas::*;
pub use model_schemas::*;
pub use schemas::*;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::Required;
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::Modify;

/// Security schemes of the document. `apiKey` and `adminToken` are the two bearer credentials of §7;
/// `realtimeToken` is the same credential in `?token=` for `EventSource`; `runSignature` signs the runner's
/// calls to the event sink (Standard Webhooks headers with the run's secret).
pub const API_KEY: &str = "apiKey";
pub const ADMIN_TOKEN: &str = "adminToken";
pub const REALTIME_TOKEN: &str = "realtimeToken";
pub const RUN_SIGNATURE: &str = "runSignature";

const PROBLEM: &str = "application/problem+json";

/// Adds the security schemes and gives every operation its error bodies: each 4xx/5xx answer is a
/// problem+json [`Problem`], and each authenticated operation documents its 401.
pub struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ask_…")
                    .description(Some(
                        "An API key (`ask_…`), pinned to one application and limited to its scopes",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("adm_…")
                    .description(Some(
                        "An admin token (`adm_…`, from `appstrate bootstrap`): every application of the \
                         organization, named by the `X-App-Id` header on application routes",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            REALTIME_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "An API key or admin token in the query, for `EventSource` clients that cannot send headers",
            ))),
        );
        components.add_security_scheme(
            RUN_SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "Runner calls only: `v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}` \
                 with the run's secret (Standard Webhooks), sent with the `webhook-id` and \
                 `webhook-timestamp` headers",
            ))),
        );

        let default_security = openapi.security.clone().unwrap_or_default();
        let problem = ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "Problem",
            ))))
            .build();
        let admin = SecurityRequirement::new(ADMIN_TOKEN, Vec::<String>::new());
        let api_key = SecurityRequirement::new(API_KEY, Vec::<String>::new());
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in operations(item) {
                let security = op.security.as_ref().unwrap_or(&default_security);
                let authenticated = !security.is_empty()
                    && !security
                        .iter()
                        .any(|s| *s == SecurityRequirement::default());
                let mut headers = Vec::new();
                // With an admin token, application routes name their application in a header.
                if security.contains(&admin) && !path.starts_with("/api/applications") {
                    headers.push((
                        "X-App-Id",
                        "The application (`app_…`); required with an admin token, optional with an API key \
                         (which is pinned to its application)",
                    ));
                }
                if security.contains(&api_key) && impersonating(path) {
                    headers.push((
                        "Appstrate-User",
                        "Act for this end-user (`eu_…` of the key's application); API keys only",
                    ));
                }
                if op
                    .operation_id
                    .as_deref()
                    .is_some_and(|id| IDEMPOTENT.contains(&id))
                {
                    headers.push((
                        "Idempotency-Key",
                        "A retry with the same key and body gets the first answer instead of acting twice",
                    ));
                }
                for (name, description) in headers {
                    op.parameters.get_or_insert_with(Vec::new).push(
                        ParameterBuilder::new()
                            .name(name)
                            .parameter_in(ParameterIn::Header)
                            .required(Required::False)
                            .description(Some(description))
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
                            .build(),
                    );
                }
                if authenticated && !op.responses.responses.contains_key("401") {
                    op.responses.responses.insert(
                        "401".into(),
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(
                                    "unauthorized: missing, invalid, expired or revoked credential",
                                )
                                .build(),
                        ),
                    );
                }
                for (status, response) in op.responses.responses.iter_mut() {
                    let error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(r)) = (error, response) {
                        if r.content.is_empty() {
                            r.content.insert(PROBLEM.into(), problem.clone());
                        }
                        if r.description.is_empty() {
                            r.description = "Error (problem+json)".into();
                        }
                    }
                }
            }
        }
    }
}

/// The operations that honour `Idempotency-Key` (§8).
const IDEMPOTENT: [&str; 4] = ["runAgent", "runInline", "createEndUser", "createWebhook"];

/// The routes on which an API key may act for an end-user (`Appstrate-User`, §7).
fn impersonating(path: &str) -> bool {
    [
        "/api/agents",
        "/api/runs",
        "/api/schedules",
        "/api/realtime",
        "/api/documents",
        "/api/uploads",
    ]
    .iter()
    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || path.contains("/connections/")
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// `/llms.txt`: the API summarised for language models (llmstxt.org format): what it is, where the full
/// references are, and one line per operation, grouped by tag.
pub fn llms_txt(doc: &Value, app_url: &str) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("Appstrate API");
    let description = doc["info"]["description"].as_str().unwrap_or("");
    let mut out = format!("# {title}\n\n> {description}\n\n");
    out.push_str(
        "Authenticate with `Authorization: Bearer <API key ask_… or admin token adm_…>`; with an admin \
         token, name the application with `X-App-Id: app_…`. Errors are RFC 9457 problem+json with a \
         stable `code`. Lists are `{\"object\":\"list\",\"data\":[…],\"hasMore\":bool}`, paged with \
         `limit` and `startingAfter`.\n\n## Docs\n\n",
    );
    let _ = writeln!(
        out,
        "- [OpenAPI document]({app_url}/api/openapi.json): OpenAPI 3.1, every operation with its schemas"
    );
    let _ = writeln!(
        out,
        "- [API reference]({app_url}/api/docs): interactive reference of the same document"
    );
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let Some(id) = op["operationId"].as_str() else {
                    continue;
                };
                let tag = op["tags"][0].as_str().unwrap_or("other").to_string();
                let summary = op["summary"]
                    .as_str()
                    .or_else(|| op["description"].as_str())
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let mut line = format!("- `{} {path}` ({id})", method.to_uppercase());
                if !summary.is_empty() {
                    line.push_str(": ");
                    line.push_str(&summary);
                }
                groups.entry(tag).or_default().push(line);
            }
        }
    }
    for (tag, lines) in groups {
        let _ = write!(out, "\n## {tag}\n\n");
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

    fn document() -> Value {
        serde_json::from_str(&crate::http::openapi_json("http://localhost:3000")).unwrap()
    }

    #[test]
    fn every_operation_has_a_unique_id_a_summary_and_a_documented_answer() {
        let doc = document();
        let mut ids = HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m} {path}: no operationId"));
                assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{id}: no summary"
                );
                let responses = op["responses"].as_object().unwrap();
                let success: Vec<_> = responses
                    .keys()
                    .filter(|k| k.starts_with('2') || *k == "304")
                    .collect();
                assert!(!success.is_empty(), "{id}: no success answer");
                for code in success {
                    if code != "204" && code != "304" {
                        assert!(
                            responses[code]["content"]
                                .as_object()
                                .is_some_and(|c| !c.is_empty()),
                            "{id}: answer {code} has no content"
                        );
                    }
                }
                for (code, r) in responses {
                    if code.starts_with('4') || code.starts_with('5') {
                        let problem = r["content"].get("application/problem+json");
                        // /health answers 503 with its own document.
                        assert!(
                            problem.is_some() || id == "getHealth",
                            "{id}: error {code} is not problem+json"
                        );
                    }
                }
                for p in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = p.trim_matches(|c| c == '{' || c == '}');
                    let declared = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|x| x["name"] == name && x["in"] == "path")
                    });
                    assert!(declared, "{id}: path parameter {name} is not declared");
                }
            }
        }
        assert!(ids.len() >= 57, "only {} operations", ids.len());
    }

    #[test]
    fn security_per_kind_of_route() {
        let doc = document();
        let op = |m: &str, p: &str| doc["paths"][p][m].clone();
        let schemes = |v: &Value| -> Vec<String> {
            v["security"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .flat_map(|s| s.as_object().unwrap().keys().cloned())
                        .collect()
                })
                .unwrap_or_else(|| vec!["(default)".into()])
        };
        assert_eq!(schemes(&op("get", "/health")), Vec::<String>::new());
        assert_eq!(schemes(&op("get", "/api/docs")), Vec::<String>::new());
        assert_eq!(
            schemes(&op("post", "/api/runs/{id}/events")),
            ["runSignature"]
        );
        assert_eq!(schemes(&op("post", "/api/api-keys")), ["adminToken"]);
        assert_eq!(
            schemes(&op("get", "/api/realtime/runs")),
            ["apiKey", "adminToken", "realtimeToken"]
        );
        assert_eq!(schemes(&op("get", "/api/end-users")), ["(default)"]);
        assert_eq!(schemes(&doc), ["apiKey", "adminToken"]);
        let header = |m: &str, p: &str| {
            op(m, p)["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|x| x["name"] == "X-App-Id"))
        };
        assert!(header("get", "/api/end-users"));
        assert!(!header("get", "/api/applications"));
        assert!(!header("post", "/api/runs/{id}/events"));
        assert!(op("get", "/api/end-users")["responses"]["401"].is_object());
        assert!(op("get", "/health")["responses"].get("401").is_none());
    }

    #[test]
    fn llms_txt_lists_every_operation() {
        let doc = document();
        let text = super::llms_txt(&doc, "https://appstrate.example.com");
        assert!(text.starts_with("# Appstrate API\n\n> "));
        assert!(
            text.contains("- [OpenAPI document](https://appstrate.example.com/api/openapi.json)")
        );
        assert!(text.contains("- `POST /api/end-users` (createEndUser): Create an end-user\n"));
        let ops = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|i| METHODS.iter().filter(|m| i.get(**m).is_some()).count())
            .sum::<usize>();
        assert_eq!(text.lines().filter(|l| l.starts_with("- `")).count(), ops);
    }
}
