//! OAuth2 connections through the real redirects, against the fake authorization server of test-support:
//! connect, run through the sidecar with the fresh token, refresh on the sidecar's 401 and before
//! expiry (single-flight), revoked refresh tokens, the callback's refusals, the twelve fixtures, and
//! disconnect revoking at the provider.

mod callback;
mod flow;
mod manifests;

use appstrate::packages::afps::build_zip;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::TestApp;
use test_support::fake_llm::Turn;
use test_support::fake_oauth::FakeOAuth;

pub(crate) const API: &str = "@tests/oauthapi";
const API_PATH: &str = "%40tests%2Foauthapi";
const AGENT: &str = "@tests/oauthcaller";

pub(crate) fn integration(base: &str, extra: Value) -> Value {
    let mut auth = json!({
        "type": "oauth2",
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "identity_claims": {"accountId": "$.account.login", "email": "$.email", "sub": "$.sub"},
        "default_scopes": ["items:read"],
        "scope_catalog": [{"value": "items:read", "label": "Read"}, {"value": "items:write", "label": "Write"}],
        "authorization_params": {"access_type": "offline"},
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_method": "client_secret_basic",
        "callback_url_hint": "Register exactly: {{callback_url}}",
        "authorized_uris": [format!("{base}/api/**")],
        "delivery": {"http": {"in": "header", "name": "Authorization", "prefix": "Bearer", "value": "{$credential.access_token}"}},
        "_meta": {"dev.appstrate/oauth": {"scope_separator": " "}}
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            auth.as_object_mut().unwrap().remove(k);
        } else {
            auth[k] = v.clone();
        }
    }
    json!({
        "schema_version": "0.1", "name": API, "version": "1.0.0", "type": "integration",
        "display_name": "OAuth API", "description": "A loopback provider",
        "auths": {"primary": auth}
    })
}

async fn import(app: &TestApp, manifest: &Value, prompt: Option<&str>) -> reqwest::Response {
    let text = manifest.to_string();
    let mut files: Vec<(&str, &[u8])> = vec![("manifest.json", text.as_bytes())];
    if let Some(p) = prompt {
        files.push(("prompt.md", p.as_bytes()));
    }
    app.key(Method::POST, "/api/packages/import")
        .header("content-type", "application/zip")
        .body(build_zip(&files))
        .send()
        .await
        .unwrap()
}

/// The integration and an agent depending on it.
async fn install(app: &TestApp, fake: &FakeOAuth, extra: Value) {
    let r = import(app, &integration(&fake.base, extra), None).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let agent = json!({
        "schema_version": "0.1", "name": AGENT, "version": "1.0.0", "type": "agent",
        "display_name": "Caller", "dependencies": {"integrations": {API: "^1.0.0"}}
    });
    let r = import(app, &agent, Some("Call the API.")).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn register_client(app: &TestApp, fake: &FakeOAuth) -> Value {
    let r = app
        .key(
            Method::POST,
            &format!("/api/integrations/{API_PATH}/auths/primary/oauth-clients"),
        )
        .json(&json!({"clientId": fake.client_id, "clientSecret": fake.client_secret}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    assert!(!text.contains(&fake.client_secret), "the secret came back");
    serde_json::from_str(&text).unwrap()
}

async fn start_connect(app: &TestApp) -> Value {
    let r = app
        .key(
            Method::POST,
            &format!("/api/integrations/{API_PATH}/auths/primary/connect/oauth2"),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// A browser that does not follow redirects (to look at each hop).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The provider's redirect back to the callback (auto-consent), without following it.
async fn authorize(url: &str) -> String {
    let r = browser().get(url).send().await.unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    r.headers()["location"].to_str().unwrap().to_string()
}

async fn callback_json(url: &str) -> (u16, Value) {
    let r = browser()
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Registers the client and connects through the real redirects (a browser following them all).
async fn connect(app: &TestApp, fake: &FakeOAuth) -> Value {
    register_client(app, fake).await;
    let started = start_connect(app).await;
    let r = reqwest::Client::new()
        .get(started["authorizationUrl"].as_str().unwrap())
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn connections(app: &TestApp) -> Vec<Value> {
    let r = app
        .key(
            Method::GET,
            &format!("/api/integrations/{API_PATH}/connections"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("\"at-") && !text.contains("\"rt-"),
        "a token came back: {text}"
    );
    serde_json::from_str::<Value>(&text).unwrap()["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn api_call(base: &str) -> Turn {
    Turn::tool_call(
        "api_call",
        json!({"integration": API, "method": "GET", "url": format!("{base}/api/items")}),
    )
}

fn output() -> Turn {
    Turn::tool_call("output", json!({"data": {"done": true}}))
}
