//! End-to-end tests of the sidecar on loopback only: tiny upstream servers on 127.0.0.1:0, a static
//! resolver that never touches the network, and the exemption list to reach loopback fakes.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sidecar::ssrf::{Resolver, StaticResolver};
use sidecar::{
    render_header, ConfigureError, RunningSidecar, Sidecar, SidecarConfig, SidecarOptions, Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "sidecar/mcp.rs"]
mod mcp;

const SECRET: &str = "0123456789abcdef-config-secret";
const LLM_CANARY: &str = "sk-real-CANARY-7f3a9";
/// The run token of every test configuration; [`http`] presents it on every request.
const RUN_TOKEN: &str = "sct_RUNTOKEN-CANARY-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    fn last(&self) -> Seen {
        self.all().last().cloned().expect("upstream saw a request")
    }
    async fn record(&self, req: Request) -> Seen {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let seen = Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
        };
        self.0.lock().unwrap().push(seen.clone());
        seen
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// An upstream that records every request and answers 200 `{"ok":true}`.
async fn echo_upstream() -> (SocketAddr, Recorder) {
    let rec = Recorder::default();
    let r = rec.clone();
    let router = Router::new().fallback(any(move |req: Request| {
        let r = r.clone();
        async move {
            let seen = r.record(req).await;
            (
                [("content-type", "application/json"), ("set-cookie", "a=b")],
                json!({"ok": true, "path": seen.uri}).to_string(),
            )
        }
    }));
    (serve(router).await, rec)
}

fn resolver() -> Arc<dyn Resolver> {
    Arc::new(
        StaticResolver::new()
            .with("internal.test", &["10.0.0.5".parse::<IpAddr>().unwrap()])
            .with("api.test", &["127.0.0.1".parse::<IpAddr>().unwrap()])
            // AAAA answers whose embedded IPv4 address is internal (SIIT, NAT64 local-use, Teredo).
            .with(
                "siit.test",
                &["::ffff:0:a9fe:a9fe".parse::<IpAddr>().unwrap()],
            )
            .with(
                "nat64.test",
                &["64:ff9b:1::a00:1".parse::<IpAddr>().unwrap()],
            )
            .with(
                "teredo.test",
                &["2001:0:5db8:d822::f5ff:fffe".parse::<IpAddr>().unwrap()],
            ),
    )
}

async fn start_with(timeouts: Timeouts) -> RunningSidecar {
    Sidecar::start(
        SidecarOptions::loopback()
            .with_config_secret(SECRET)
            .with_resolver(resolver())
            .with_timeouts(timeouts),
    )
    .await
    .unwrap()
}

async fn start() -> RunningSidecar {
    start_with(Timeouts::default()).await
}

/// A client that presents the run token (`Proxy-Authorization: Bearer`), like the runner.
fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::PROXY_AUTHORIZATION,
        format!("Bearer {RUN_TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A client without the run token: any other local process.
fn bare() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn base_config(llm_base: &str, integrations: Value, allow: &[&str]) -> SidecarConfig {
    serde_json::from_value(json!({
        "runId": "run_test",
        "runToken": RUN_TOKEN,
        "platformUrl": "http://127.0.0.1:9",
        "llm": {"provider": "openai", "baseUrl": llm_base, "apiKey": LLM_CANARY},
        "integrations": integrations,
        "allowInternalHosts": allow,
    }))
    .unwrap()
}

fn integration(id: &str, uris: &[String], allow_all: bool, name: &str, value: &str) -> Value {
    json!({
        "id": id, "authKey": "primary", "authorizedUris": uris, "allowAllUris": allow_all,
        "header": {"name": name, "value": value}
    })
}

async fn proxy_call(
    sc: &RunningSidecar,
    integration: &str,
    target: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut rb = http()
        .post(format!("{}/proxy", sc.api_url()))
        .header("x-integration", integration)
        .header("x-target", target)
        .body("{\"hello\":1}");
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// /health and /configure
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn configure_once_with_bearer() {
    let sc = start().await;
    let c = http();
    let health: Value = c
        .get(format!("{}/health", sc.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health,
        json!({"status": "ok", "configured": false, "handedOver": false})
    );

    let body =
        serde_json::to_value(base_config("https://api.openai.com/v1", json!([]), &[])).unwrap();
    let url = format!("{}/configure", sc.api_url());
    let r = c.post(&url).json(&body).send().await.unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c
        .post(&url)
        .bearer_auth(SECRET)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_config".into()));
    let mut unknown = body.clone();
    unknown["surprise"] = json!(true);
    let r = c
        .post(&url)
        .bearer_auth(SECRET)
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_config".into()));
    let mut blocked = body.clone();
    blocked["llm"]["baseUrl"] = json!("http://169.254.169.254/v1");
    let r = c
        .post(&url)
        .bearer_auth(SECRET)
        .json(&blocked)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "invalid_config".into()));
    assert!(!sc.is_configured());

    let r = c
        .post(&url)
        .bearer_auth(SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "configured"})
    );
    let health: Value = c
        .get(format!("{}/health", sc.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["configured"], json!(true));

    let r = c
        .post(&url)
        .bearer_auth(SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (409, "already_configured".into()));
    // A wrong bearer is still 401 after configuration.
    let r = c
        .post(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        sc.configure(base_config("https://api.openai.com/v1", json!([]), &[])),
        Err(ConfigureError::AlreadyConfigured)
    );
}

#[tokio::test]
async fn direct_configure_validates_like_http() {
    // Process mode: no secret, so the HTTP route is closed; the direct call works.
    let sc = Sidecar::start(SidecarOptions::loopback().with_resolver(resolver()))
        .await
        .unwrap();
    assert_ne!(sc.api_port(), sc.proxy_port());
    let r = http()
        .post(format!("{}/configure", sc.api_url()))
        .bearer_auth("")
        .json(&serde_json::to_value(base_config("https://x.test/v1", json!([]), &[])).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let err = sc
        .configure(base_config("http://127.0.0.1:1/v1", json!([]), &[]))
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (400, "invalid_config"));
    let err = sc
        .configure(base_config("http://[::ffff:127.0.0.1]/v1", json!([]), &[]))
        .unwrap_err();
    assert_eq!(err.code(), "invalid_config");
    // Exempt via allowInternalHosts (the way EGRESS_ALLOW_INTERNAL_HOSTS is passed on).
    sc.configure(base_config(
        "http://127.0.0.1:1/v1",
        json!([]),
        &["127.0.0.1"],
    ))
    .unwrap();
    assert!(sc.is_configured());
    sc.shutdown().await;
}

#[tokio::test]
async fn not_configured_and_host_check() {
    let sc = start().await;
    let r = http()
        .post(format!("{}/llm/openai/chat/completions", sc.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (503, "not_configured".into()));
    let r = proxy_call(&sc, "@a/b", "https://x.test/", &[]).await;
    assert_eq!(error_code(r).await, (503, "not_configured".into()));

    for bad in ["evil.example", "10.0.0.1:8080", "sidecar.evil.example"] {
        let r = http()
            .post(format!("{}/proxy", sc.api_url()))
            .header("host", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (403, "forbidden_host".into()), "{bad}");
        let r = http()
            .get(format!("{}/llm/openai/models", sc.api_url()))
            .header("host", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{bad}");
    }
    for good in ["sidecar:8080", "localhost", "127.0.0.1:1"] {
        let r = http()
            .post(format!("{}/proxy", sc.api_url()))
            .header("host", good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{good}");
    }
    let r = http()
        .get(format!("{}/nope", sc.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let r = http()
        .get(format!("{}/configure", sc.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (405, "method_not_allowed".into()));
}

// ---------------------------------------------------------------------------------------------
// Credential injection per fixture manifest
// ---------------------------------------------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/afps/system")
}

fn read_manifest(path: &Path) -> Value {
    let out = std::process::Command::new("unzip")
        .arg("-p")
        .arg(path)
        .arg("manifest.json")
        .output();
    let bytes = match out {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            let o = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sys,zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('manifest.json'))",
                ])
                .arg(path)
                .output()
                .expect("unzip or python3 is needed to read fixture archives");
            assert!(o.status.success(), "cannot read {}", path.display());
            o.stdout
        }
    };
    serde_json::from_slice(&bytes).unwrap()
}

fn fixture_manifests() -> Vec<Value> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("shared fixtures beside the repository")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "afps"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the system integration fixtures"
    );
    paths.iter().map(|p| read_manifest(p)).collect()
}

fn credential_fields(template: &str) -> Vec<String> {
    template
        .split("{$credential.")
        .skip(1)
        .map(|s| s.split('}').next().unwrap().to_string())
        .collect()
}

/// Expected header value, computed directly from the manifest rule.
fn expected_value(http_rule: &Value, creds: &Map<String, Value>) -> String {
    let mut v = http_rule["value"].as_str().unwrap().to_string();
    for (k, val) in creds {
        v = v.replace(&format!("{{$credential.{k}}}"), val.as_str().unwrap());
    }
    if http_rule["encoding"] == "base64" {
        v = base64::engine::general_purpose::STANDARD.encode(v);
    }
    match http_rule["prefix"].as_str() {
        Some(p) if !p.is_empty() => format!("{p} {v}"),
        _ => v,
    }
}

#[tokio::test]
async fn credentials_injected_exactly_as_each_fixture_delivery_says() {
    let (addr, rec) = echo_upstream().await;
    let manifests = fixture_manifests();
    let mut integrations = Vec::new();
    let mut cases = Vec::new();
    let mut saw = std::collections::BTreeSet::new();
    for m in &manifests {
        let id = m["name"].as_str().unwrap().to_string();
        let slug = id.rsplit('/').next().unwrap().to_string();
        for (auth_key, auth) in m["auths"].as_object().unwrap() {
            // The real authorized_uris compile and match their own hosts (no network needed).
            for pat in auth["authorized_uris"].as_array().unwrap() {
                let p = sidecar::allowlist::UriPattern::parse(pat.as_str().unwrap()).unwrap();
                let sample = pat.as_str().unwrap().replace("**", "x/y").replace('*', "a");
                assert!(
                    p.matches(&url::Url::parse(&sample).unwrap()),
                    "{pat} vs {sample}"
                );
                assert!(!p.matches(&url::Url::parse("https://evil.example/x").unwrap()));
            }
            let Some(http_rule) = auth["delivery"].get("http") else {
                // `delivery.env` is not usable by runs: rendering must refuse it.
                assert!(
                    render_header(&auth["delivery"], &Map::new()).is_err(),
                    "{id}"
                );
                continue;
            };
            let mut creds = Map::new();
            for f in credential_fields(http_rule["value"].as_str().unwrap()) {
                creds.insert(f.clone(), json!(format!("CANARY_{slug}_{f}")));
            }
            let (name, value) = render_header(http_rule, &creds).unwrap();
            assert_eq!(name, http_rule["name"].as_str().unwrap());
            assert_eq!(value, expected_value(http_rule, &creds), "{id}");
            let path = format!("/{slug}/");
            integrations.push(json!({
                "id": id, "authKey": auth_key,
                "authorizedUris": [format!("http://127.0.0.1:{}{path}**", addr.port())],
                "allowAllUris": false,
                "header": {"name": name, "value": value},
            }));
            cases.push((id.clone(), auth_key.clone(), slug.clone(), name, value));
            saw.insert(slug.clone());
        }
    }
    for must in ["github", "slack", "stripe", "twilio", "notion"] {
        assert!(saw.contains(must), "fixture {must} missing");
    }
    let twilio = cases.iter().find(|c| c.2 == "twilio").unwrap();
    assert_eq!(
        twilio.4,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode("CANARY_twilio_account_sid:CANARY_twilio_auth_token")
        )
    );
    let stripe = cases.iter().find(|c| c.2 == "stripe").unwrap();
    assert_eq!(stripe.4, "Bearer CANARY_stripe_api_key");

    let sc = start().await;
    sc.configure(base_config(
        "https://api.openai.com/v1",
        Value::Array(integrations),
        &["127.0.0.1"],
    ))
    .unwrap();
    for (id, key, slug, name, value) in &cases {
        let target = format!("http://127.0.0.1:{}/{slug}/v1/items?x=1", addr.port());
        // The caller sends a same-named header in another case: it must be replaced.
        let caller_name = name.to_ascii_uppercase();
        let r = proxy_call(
            &sc,
            &format!("{id}#{key}"),
            &target,
            &[
                (&caller_name, "Bearer sk-appstrate-placeholder"),
                ("x-custom", "kept"),
            ],
        )
        .await;
        assert_eq!(r.status(), 200, "{id}");
        assert!(r.headers().get("set-cookie").is_none());
        let seen = rec.last();
        assert_eq!(seen.uri, format!("/{slug}/v1/items?x=1"));
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body.as_ref(), b"{\"hello\":1}");
        let values: Vec<_> = seen.headers.get_all(name.as_str()).iter().collect();
        assert_eq!(values.len(), 1, "{id}: {values:?}");
        assert_eq!(values[0].to_str().unwrap(), value, "{id}");
        assert_eq!(seen.headers["x-custom"], "kept");
        assert!(seen.headers.get("x-target").is_none());
        assert!(seen.headers.get("x-integration").is_none());
        assert_eq!(
            seen.headers["host"].to_str().unwrap(),
            format!("127.0.0.1:{}", addr.port())
        );
    }
    // Without `#authKey` the integration's single auth is used.
    let (id, _, slug, name, value) = &cases[0];
    let r = proxy_call(
        &sc,
        id,
        &format!("http://127.0.0.1:{}/{slug}/", addr.port()),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(rec.last().headers[name.as_str()].to_str().unwrap(), value);
}

// ---------------------------------------------------------------------------------------------
// /proxy allowlist and SSRF
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn proxy_refuses_targets_outside_authorized_uris() {
    let (addr, rec) = echo_upstream().await;
    let sc = start().await;
    let uris = vec![format!("http://127.0.0.1:{}/allowed/**", addr.port())];
    sc.configure(base_config(
        "https://api.openai.com/v1",
        json!([integration(
            "@acme/api",
            &uris,
            false,
            "Authorization",
            "Bearer tok"
        )]),
        &["127.0.0.1"],
    ))
    .unwrap();
    for target in [
        format!("http://127.0.0.1:{}/other", addr.port()),
        format!("http://127.0.0.1:{}/allowed/../other", addr.port()),
        format!("http://127.0.0.1:{}/allowedx", addr.port()),
        format!("https://127.0.0.1:{}/allowed/x", addr.port()),
        "http://evil.example/allowed/x".to_string(),
    ] {
        let r = proxy_call(&sc, "@acme/api", &target, &[]).await;
        assert_eq!(
            error_code(r).await,
            (403, "target_not_authorized".into()),
            "{target}"
        );
    }
    assert!(rec.all().is_empty());
    let ok = format!("http://127.0.0.1:{}/allowed/x", addr.port());
    assert_eq!(proxy_call(&sc, "@acme/api", &ok, &[]).await.status(), 200);

    let r = proxy_call(&sc, "@acme/other", &ok, &[]).await;
    assert_eq!(error_code(r).await, (403, "unknown_integration".into()));
    let r = proxy_call(&sc, "@acme/api#secondary", &ok, &[]).await;
    assert_eq!(error_code(r).await, (403, "unknown_integration".into()));
    let r = proxy_call(&sc, "@acme/api", "not a url", &[]).await;
    assert_eq!(error_code(r).await, (400, "invalid_target".into()));
    let r = http()
        .post(format!("{}/proxy", sc.api_url()))
        .header("x-target", &ok)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "missing_integration".into()));
}

#[tokio::test]
async fn ssrf_guard_blocks_private_and_obfuscated_addresses() {
    let sc = start().await;
    // allowAllUris so that only the SSRF guard can refuse; nothing is exempt.
    sc.configure(base_config(
        "https://api.openai.com/v1",
        json!([integration(
            "@acme/any",
            &[],
            true,
            "Authorization",
            "Bearer tok"
        )]),
        &[],
    ))
    .unwrap();
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://internal.test/",
        "http://localhost:8080/",
        "http://sidecar:8080/",
        "http://host.docker.internal/",
        "http://metadata.google.internal/",
        "http://[fd00::1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::ffff:0:127.0.0.1]/",
        "http://[64:ff9b:1::a9fe:a9fe]/",
        "http://[2001:0:7f00:1::]/",
        "http://[2001:0:5db8:d822::f5ff:fffe]/",
        "http://siit.test/",
        "http://nat64.test/",
        "http://teredo.test/",
    ] {
        let r = proxy_call(&sc, "@acme/any", target, &[]).await;
        assert_eq!(
            error_code(r).await,
            (403, "blocked_address".into()),
            "{target}"
        );
    }
    let r = proxy_call(&sc, "@acme/any", "http://unknown.test/", &[]).await;
    assert_eq!(error_code(r).await, (502, "dns_failure".into()));
    let r = proxy_call(&sc, "@acme/any", "file:///etc/passwd", &[]).await;
    assert_eq!(error_code(r).await.0, 400);
}

#[tokio::test]
async fn exemption_lets_loopback_through_in_any_spelling() {
    let (addr, rec) = echo_upstream().await;
    let sc = start().await;
    sc.configure(base_config(
        "https://api.openai.com/v1",
        json!([integration("@acme/any", &[], true, "X-Api-Key", "k")]),
        &["127.0.0.1", "api.test"],
    ))
    .unwrap();
    let port = addr.port();
    for target in [
        format!("http://2130706433:{port}/a"),
        format!("http://0x7f.1:{port}/b"),
        format!("http://api.test:{port}/c"),
    ] {
        let r = proxy_call(&sc, "@acme/any", &target, &[]).await;
        assert_eq!(r.status(), 200, "{target}");
    }
    let seen = rec.all();
    assert_eq!(seen.len(), 3);
    // Pinned to 127.0.0.1 while Host keeps the name.
    assert_eq!(
        seen[2].headers["host"].to_str().unwrap(),
        format!("api.test:{port}")
    );
    // Still blocked: other loopback addresses and names resolving to private ranges.
    let r = proxy_call(&sc, "@acme/any", &format!("http://127.0.0.2:{port}/"), &[]).await;
    assert_eq!(error_code(r).await, (403, "blocked_address".into()));
    let r = proxy_call(&sc, "@acme/any", "http://internal.test/", &[]).await;
    assert_eq!(error_code(r).await, (403, "blocked_address".into()));
}

// ---------------------------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------------------------

async fn redirect_upstream(other: SocketAddr) -> (SocketAddr, Recorder) {
    let rec = Recorder::default();
    let r = rec.clone();
    let router = Router::new().fallback(any(move |req: Request| {
        let r = r.clone();
        async move {
            let seen = r.record(req).await;
            let path = seen.uri.split('?').next().unwrap().to_string();
            let redirect = |status: StatusCode, to: String| {
                Response::builder()
                    .status(status)
                    .header("location", to)
                    .body(Body::empty())
                    .unwrap()
            };
            match path.as_str() {
                "/meta" => redirect(
                    StatusCode::FOUND,
                    "http://169.254.169.254/latest/meta-data/".into(),
                ),
                "/outside" => redirect(StatusCode::FOUND, "http://evil.example/".into()),
                "/relative" => redirect(StatusCode::TEMPORARY_REDIRECT, "/api/final".into()),
                "/see-other" => redirect(StatusCode::SEE_OTHER, "/api/final".into()),
                "/cross" => redirect(
                    StatusCode::FOUND,
                    format!("http://127.0.0.1:{}/elsewhere", other.port()),
                ),
                "/loop" => redirect(StatusCode::FOUND, "/loop".into()),
                _ => (StatusCode::OK, format!("final {}", seen.method)).into_response(),
            }
        }
    }));
    (serve(router).await, rec)
}

#[tokio::test]
async fn redirects_are_rechecked_and_credentials_not_leaked() {
    let (other, other_rec) = echo_upstream().await;
    let (addr, rec) = redirect_upstream(other).await;
    let p = addr.port();
    let sc = start().await;
    let authorized = vec![
        format!("http://127.0.0.1:{p}/**"),
        "http://169.254.169.254/**".to_string(),
    ];
    sc.configure(base_config(
        "https://api.openai.com/v1",
        json!([
            integration("@acme/strict", &authorized, false, "Authorization", "Bearer CANARY-strict"),
            {
                "id": "@acme/loose", "authKey": "primary",
                "authorizedUris": [format!("http://127.0.0.1:{p}/**")], "allowAllUris": true,
                "header": {"name": "Authorization", "value": "Bearer CANARY-loose"}
            }
        ]),
        &["127.0.0.1"],
    ))
    .unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{p}{path}");

    // A redirect to the metadata address is refused even though the allowlist names it.
    let r = proxy_call(&sc, "@acme/strict", &url("/meta"), &[]).await;
    assert_eq!(error_code(r).await, (403, "redirect_not_authorized".into()));
    // Also with allowAllUris.
    let r = proxy_call(&sc, "@acme/loose", &url("/meta"), &[]).await;
    assert_eq!(error_code(r).await, (403, "redirect_not_authorized".into()));
    // A redirect outside authorized_uris.
    let r = proxy_call(&sc, "@acme/strict", &url("/outside"), &[]).await;
    assert_eq!(error_code(r).await, (403, "redirect_not_authorized".into()));

    // 307 keeps the method, the body and the credential (still authorized).
    let r = proxy_call(&sc, "@acme/strict", &url("/relative"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "final POST");
    let last = rec.last();
    assert_eq!(last.uri, "/api/final");
    assert_eq!(last.body.as_ref(), b"{\"hello\":1}");
    assert_eq!(last.headers["authorization"], "Bearer CANARY-strict");

    // 303 turns into a GET without body.
    let r = proxy_call(&sc, "@acme/strict", &url("/see-other"), &[]).await;
    assert_eq!(r.text().await.unwrap(), "final GET");
    assert!(rec.last().body.is_empty());

    // allowAllUris follows the hop to another origin, without the credential.
    let r = proxy_call(
        &sc,
        "@acme/loose",
        &url("/cross"),
        &[("authorization", "Bearer caller")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = other_rec.last();
    assert_eq!(seen.uri, "/elsewhere");
    assert!(
        seen.headers.get("authorization").is_none(),
        "{:?}",
        seen.headers
    );

    // At most 5 hops.
    let before = rec.all().len();
    let r = proxy_call(&sc, "@acme/strict", &url("/loop"), &[]).await;
    assert_eq!(error_code(r).await, (502, "too_many_redirects".into()));
    assert_eq!(rec.all().len() - before, 6);
}

// ---------------------------------------------------------------------------------------------
// Body limits and timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn body_limits_truncation_and_timeout() {
    let big = Bytes::from(vec![b'a'; sidecar::server::MAX_PROXY_RESPONSE_BODY + 1000]);
    let router = Router::new()
        .route(
            "/big",
            any(move || {
                let big = big.clone();
                async move { big }
            }),
        )
        .route("/small", any(|| async { "small" }))
        .route(
            "/slow",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        );
    let addr = serve(router).await;
    let sc = start_with(Timeouts {
        proxy_upstream: Duration::from_millis(400),
        ..Timeouts::default()
    })
    .await;
    sc.configure(base_config(
        "https://api.openai.com/v1",
        json!([integration(
            "@acme/api",
            &[format!("http://127.0.0.1:{}/**", addr.port())],
            false,
            "Authorization",
            "Bearer t"
        )]),
        &["127.0.0.1"],
    ))
    .unwrap();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", addr.port());

    let r = proxy_call(&sc, "@acme/api", &url("/big"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-truncated"], "true");
    assert_eq!(
        r.bytes().await.unwrap().len(),
        sidecar::server::MAX_PROXY_RESPONSE_BODY
    );
    let r = proxy_call(&sc, "@acme/api", &url("/small"), &[]).await;
    assert!(r.headers().get("x-truncated").is_none());
    assert_eq!(r.text().await.unwrap(), "small");

    let r = http()
        .post(format!("{}/proxy", sc.api_url()))
        .header("x-integration", "@acme/api")
        .header("x-target", url("/small"))
        .body(vec![0u8; sidecar::server::MAX_PROXY_REQUEST_BODY + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (413, "payload_too_large".into()));

    let r = proxy_call(&sc, "@acme/api", &url("/slow"), &[]).await;
    assert_eq!(error_code(r).await, (504, "upstream_timeout".into()));
}

// ---------------------------------------------------------------------------------------------
// /llm reverse proxy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn llm_streams_sse_and_swaps_the_key() {
    let rec = Recorder::default();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let r = rec.clone();
    let router = Router::new().fallback(any(move |req: Request| {
        let r = r.clone();
        let mut release = release_rx.clone();
        async move {
            r.record(req).await;
            let stream = async_stream(move |tx| async move {
                let _ = tx
                    .send(Ok::<_, std::io::Error>(Bytes::from("data: {\"n\":1}\n\n")))
                    .await;
                // The rest is sent only once the client has seen the first event: no buffering.
                let _ = release.wait_for(|v| *v).await;
                let _ = tx.send(Ok(Bytes::from("data: {\"n\":2}\n\n"))).await;
                let _ = tx.send(Ok(Bytes::from("data: [DONE]\n\n"))).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("set-cookie", "session=1")
                .header("x-request-id", "abc")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }));
    let llm = serve(router).await;
    let sc = start().await;
    sc.configure(base_config(
        &format!("http://127.0.0.1:{}/v1", llm.port()),
        json!([]),
        &["127.0.0.1"],
    ))
    .unwrap();
    let mut resp = http()
        .post(format!(
            "{}/llm/openai/chat/completions?api-version=1",
            sc.api_url()
        ))
        .header("authorization", "Bearer sk-appstrate-placeholder")
        .header("x-api-key", "caller-key")
        .header("content-type", "application/json")
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-request-id"], "abc");
    assert!(resp.headers().get("set-cookie").is_none());
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("first SSE event arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"data: {\"n\":1}\n\n");
    release_tx.send(true).unwrap();
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"data: {\"n\":2}\n\ndata: [DONE]\n\n");

    let seen = rec.last();
    assert_eq!(seen.uri, "/v1/chat/completions?api-version=1");
    assert_eq!(seen.body.as_ref(), br#"{"stream":true}"#);
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].to_str().unwrap(), format!("Bearer {LLM_CANARY}"));
    assert!(seen.headers.get("x-api-key").is_none());

    let r = http()
        .post(format!("{}/llm/anthropic/v1/messages", sc.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "unknown_provider".into()));
}

/// A channel-backed body stream fed by a producer task.
fn async_stream<F, Fut>(
    producer: F,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(producer(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn llm_anthropic_key_and_upstream_failure() {
    let (llm, rec) = echo_upstream().await;
    let sc = start().await;
    let mut cfg = base_config(
        &format!("http://127.0.0.1:{}", llm.port()),
        json!([]),
        &["127.0.0.1"],
    );
    cfg.llm.provider = sidecar::LlmProvider::Anthropic;
    sc.configure(cfg).unwrap();
    let r = http()
        .post(format!("{}/llm/anthropic/v1/messages", sc.api_url()))
        .header("x-api-key", "sk-appstrate-placeholder")
        .header("authorization", "Bearer sk-appstrate-placeholder")
        .header("anthropic-version", "2023-06-01")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = rec.last();
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], LLM_CANARY);
    assert_eq!(seen.headers.get_all("x-api-key").iter().count(), 1);
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(seen.headers.get("authorization").is_none());

    // An upstream that is down gives 502 llm_upstream_error.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sc2 = start().await;
    sc2.configure(base_config(
        &format!("http://127.0.0.1:{dead}/v1"),
        json!([]),
        &["127.0.0.1"],
    ))
    .unwrap();
    let r = http()
        .post(format!("{}/llm/openai/chat/completions", sc2.api_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (502, "llm_upstream_error".into()));
}

// ---------------------------------------------------------------------------------------------
// Forward proxy
// ---------------------------------------------------------------------------------------------

async fn raw_connect(proxy: SocketAddr, target: &str) -> (u16, tokio::net::TcpStream) {
    let auth = format!("Proxy-Authorization: Bearer {RUN_TOKEN}\r\n");
    raw_connect_with(proxy, target, &auth).await
}

/// `CONNECT` with the given extra header lines (each ending in CRLF).
async fn raw_connect_with(
    proxy: SocketAddr,
    target: &str,
    extra: &str,
) -> (u16, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "proxy closed early: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 200 {
        // Drain the JSON error body so the connection closes cleanly.
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut [0u8; 512])).await;
    }
    (status, s)
}

#[tokio::test]
async fn forward_proxy_allowlist() {
    let (platform, platform_rec) = echo_upstream().await;
    let (api, api_rec) = echo_upstream().await;
    let (other, _) = echo_upstream().await;
    let sc = start().await;
    let mut cfg = base_config(
        "https://api.openai.com/v1",
        json!([integration(
            "@acme/api",
            &[format!("http://api.test:{}/**", api.port())],
            false,
            "Authorization",
            "Bearer CANARY-never-forwarded"
        )]),
        &["api.test"],
    );
    // The platform origin is allowed (and exempt from the private-range block) without being listed.
    cfg.platform_url = format!("http://127.0.0.1:{}", platform.port());
    sc.configure(cfg).unwrap();

    // Nothing authorizes example.org: refused before any DNS (the resolver has no such name anyway).
    let (status, _) = raw_connect(sc.proxy_addr(), "example.org:443").await;
    assert_eq!(status, 403);
    let (status, _) = raw_connect(sc.proxy_addr(), &format!("127.0.0.1:{}", other.port())).await;
    assert_eq!(status, 403);
    // The LLM host is allowed on its port only.
    let (status, _) = raw_connect(sc.proxy_addr(), "api.openai.com:80").await;
    assert_eq!(status, 403);

    // CONNECT to the platform origin works and tunnels bytes.
    let (status, mut tunnel) =
        raw_connect(sc.proxy_addr(), &format!("127.0.0.1:{}", platform.port())).await;
    assert_eq!(status, 200);
    tunnel
        .write_all(b"GET /via-tunnel HTTP/1.1\r\nHost: platform\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tunnel.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(platform_rec.last().uri, "/via-tunnel");

    // Absolute-form HTTP through the proxy.
    // The token as the proxy URL's password, the way the runner's HTTP_PROXY carries it.
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://run:{RUN_TOKEN}@{}", sc.proxy_addr())).unwrap())
        .build()
        .unwrap();
    let r = via_proxy
        .get(format!("http://127.0.0.1:{}/absolute?q=1", platform.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(platform_rec.last().uri, "/absolute?q=1");

    // An integration host (pinned through the resolver), without credential injection.
    let r = via_proxy
        .get(format!("http://api.test:{}/x", api.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = api_rec.last();
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(
        seen.headers["host"].to_str().unwrap(),
        format!("api.test:{}", api.port())
    );

    let r = via_proxy
        .get(format!("http://127.0.0.1:{}/", other.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "egress_denied".into()));
    let r = via_proxy.get("http://example.org/").send().await.unwrap();
    assert_eq!(error_code(r).await, (403, "egress_denied".into()));
}

#[tokio::test]
async fn forward_proxy_requires_configuration() {
    let sc = start().await;
    let (status, _) = raw_connect(sc.proxy_addr(), "example.org:443").await;
    assert_eq!(status, 503);
}

// ---------------------------------------------------------------------------------------------
// Secrets never in logs; shutdown
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn canary_credentials_never_reach_tracing_output() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    const PROXY_CANARY: &str = "ghp_CANARY_b7c1e0";
    let (upstream, rec) = echo_upstream().await;
    let sc = start().await;
    let uris = vec![format!("http://127.0.0.1:{}/**", upstream.port())];
    let cfg = base_config(
        &format!("http://127.0.0.1:{}/v1", upstream.port()),
        json!([integration(
            "@acme/api",
            &uris,
            false,
            "Authorization",
            &format!("Bearer {PROXY_CANARY}")
        )]),
        &["127.0.0.1"],
    );
    tracing::info!(config = ?cfg, "configuring");
    let r = http()
        .post(format!("{}/configure", sc.api_url()))
        .bearer_auth(SECRET)
        .json(&serde_json::to_value(&cfg).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = proxy_call(
        &sc,
        "@acme/api",
        &format!("http://127.0.0.1:{}/repos", upstream.port()),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = http()
        .post(format!("{}/llm/openai/chat/completions", sc.api_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Refusals are logged too.
    let r = proxy_call(&sc, "@acme/api", "http://evil.example/", &[]).await;
    assert_eq!(r.status(), 403);
    // A refused configure is logged without the presented bearer.
    let _ = http()
        .post(format!("{}/configure", sc.api_url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    sc.shutdown().await;

    // The upstreams did receive the real credentials.
    let all = rec.all();
    assert!(all
        .iter()
        .any(|s| s.headers["authorization"] == format!("Bearer {PROXY_CANARY}")));
    assert!(all
        .iter()
        .any(|s| s.headers["authorization"] == format!("Bearer {LLM_CANARY}")));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("proxy call"), "{text}");
    assert!(text.contains("llm call"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    for canary in [PROXY_CANARY, LLM_CANARY, SECRET, RUN_TOKEN] {
        assert!(!text.contains(canary), "{canary} leaked into logs:\n{text}");
    }
}

#[tokio::test]
async fn shutdown_releases_both_listeners() {
    let sc = start().await;
    let (api, proxy) = (sc.api_addr(), sc.proxy_addr());
    assert!(tokio::net::TcpStream::connect(api).await.is_ok());
    sc.shutdown().await;
    assert!(tokio::net::TcpStream::connect(api).await.is_err());
    assert!(tokio::net::TcpStream::connect(proxy).await.is_err());

    let sc = start().await;
    let api = sc.api_addr();
    drop(sc);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(api).await.is_err());
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    // A silent upstream: accepts and never writes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let sc = start_with(Timeouts {
        idle: Duration::from_millis(300),
        ..Timeouts::default()
    })
    .await;
    let mut cfg = base_config("https://api.openai.com/v1", json!([]), &[]);
    cfg.platform_url = format!("http://127.0.0.1:{}", silent_addr.port());
    sc.configure(cfg).unwrap();
    let (status, mut tunnel) = raw_connect(sc.proxy_addr(), &silent_addr.to_string()).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .expect("tunnel closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[test]
fn running_sidecar_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RunningSidecar>();
    check::<SidecarOptions>();
    check::<SidecarConfig>();
}

// ---------------------------------------------------------------------------------------------
// The run token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_route_refuses_a_caller_without_the_run_token() {
    let (upstream, rec) = echo_upstream().await;
    let sc = start().await;
    let uris = vec![format!("http://127.0.0.1:{}/**", upstream.port())];
    sc.configure(base_config(
        &format!("http://127.0.0.1:{}/v1", upstream.port()),
        json!([integration("@acme/api", &uris, false, "X-Api-Token", "tok")]),
        &["127.0.0.1"],
    ))
    .unwrap();
    let llm = format!("{}/llm/openai/chat/completions", sc.api_url());
    let target = format!("http://127.0.0.1:{}/repos", upstream.port());
    let proxy = |c: reqwest::Client| {
        c.post(format!("{}/proxy", sc.api_url()))
            .header("x-integration", "@acme/api")
            .header("x-target", target.as_str())
    };

    // Any other local process: no token, a wrong one, or the token where the route does not take it.
    let wrong = "sct_WRONG-0123456789abcdef0123456789ab";
    let refused = [
        bare().post(&llm),
        bare().post(&llm).bearer_auth(wrong),
        bare().post(&llm).header("x-api-key", wrong),
        bare()
            .post(&llm)
            .header("proxy-authorization", format!("Bearer {wrong}")),
        proxy(bare()),
        proxy(bare()).bearer_auth(RUN_TOKEN),
        proxy(bare()).header("proxy-authorization", format!("Bearer {wrong}")),
    ];
    for rb in refused {
        let r = rb.body("{}").send().await.unwrap();
        assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    }
    assert!(rec.all().is_empty(), "nothing reached the upstream");

    // The forward proxy answers 407 without the token.
    let (status, _) = raw_connect_with(sc.proxy_addr(), "api.openai.com:443", "").await;
    assert_eq!(status, 407);
    let wrong_basic = format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("run:{wrong}"))
    );
    let (status, _) = raw_connect_with(sc.proxy_addr(), "api.openai.com:443", &wrong_basic).await;
    assert_eq!(status, 407);
    let via_proxy = |url: String| {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(url).unwrap())
            .build()
            .unwrap()
    };
    let r = via_proxy(format!("http://{}", sc.proxy_addr()))
        .get(format!("http://127.0.0.1:{}/x", upstream.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    assert!(r.headers().contains_key("proxy-authenticate"));
    assert!(rec.all().is_empty(), "nothing reached the upstream");

    // The runner's forms are accepted; the token never travels further.
    for rb in [
        bare().post(&llm).bearer_auth(RUN_TOKEN),
        bare().post(&llm).header("x-api-key", RUN_TOKEN),
        http().post(&llm),
        proxy(http()),
    ] {
        let r = rb.body("{}").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = via_proxy(format!("http://run:{RUN_TOKEN}@{}", sc.proxy_addr()))
        .get(format!("http://127.0.0.1:{}/x", upstream.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = rec.all();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        for (name, value) in &s.headers {
            assert!(
                !value
                    .as_bytes()
                    .windows(RUN_TOKEN.len())
                    .any(|w| w == RUN_TOKEN.as_bytes()),
                "the run token reached the upstream in {name}"
            );
        }
        assert!(!s.headers.contains_key("proxy-authorization"));
    }
    assert_eq!(seen[3].headers["x-api-token"], "tok");
    assert!(!seen[4].headers.contains_key("x-api-token"));
}

#[tokio::test]
async fn costly_patterns_are_refused_and_long_targets_bounded() {
    let (upstream, rec) = echo_upstream().await;
    let sc = start().await;
    let pathological = format!("http://127.0.0.1:*/{}x", "**/".repeat(12));
    let err = sc
        .configure(base_config(
            "https://api.openai.com/v1",
            json!([integration(
                "@acme/api",
                &[pathological],
                false,
                "X-T",
                "tok"
            )]),
            &["127.0.0.1"],
        ))
        .unwrap_err();
    assert_eq!(err.code(), "invalid_config");
    assert!(
        err.to_string().contains("integrations[0].authorizedUris"),
        "{err}"
    );
    let uris = vec![format!("http://127.0.0.1:{}/**/z", upstream.port())];
    sc.configure(base_config(
        "https://api.openai.com/v1",
        json!([integration("@acme/api", &uris, false, "X-T", "tok")]),
        &["127.0.0.1"],
    ))
    .unwrap();
    let base = format!("http://127.0.0.1:{}", upstream.port());
    let deep = format!("{base}{}/z", "/a".repeat(200));
    let r = proxy_call(&sc, "@acme/api", &deep, &[]).await;
    assert_eq!(r.status(), 200);
    let too_deep = format!("{base}{}/z", "/a".repeat(300));
    let r = proxy_call(&sc, "@acme/api", &too_deep, &[]).await;
    assert_eq!(error_code(r).await, (414, "target_too_long".into()));
    assert_eq!(rec.all().len(), 1);
}

/// A client whose connections come from `from` (any 127.0.0.0/8 address is local on Linux).
fn from_address(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn with_agent(address: &str) -> Value {
    let mut body =
        serde_json::to_value(base_config("https://api.openai.com/v1", json!([]), &[])).unwrap();
    body["agent"] = json!({
        "address": address,
        "env": {"AGENT_RUN_ID": "run_test", "APPSTRATE_SINK_SECRET": "sink-CANARY-0123456789abcdef0123"},
    });
    body
}

async fn post_configure(sc: &RunningSidecar, body: &Value) {
    let r = bare()
        .post(format!("{}/configure", sc.api_url()))
        .bearer_auth(SECRET)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_agent_part_is_handed_over_once_and_only_to_the_agents_address() {
    let agent = from_address("127.0.0.1");
    let other = from_address("127.0.0.2");
    let expected = json!({"env": {"AGENT_RUN_ID": "run_test", "APPSTRATE_SINK_SECRET": "sink-CANARY-0123456789abcdef0123"}});

    // A runner already waiting gets its configuration the moment the platform posts it.
    let sc = start().await;
    let url = format!("{}/agent-config", sc.api_url());
    let r = agent.get(format!("{url}?wait=0")).send().await.unwrap();
    assert_eq!(
        r.status(),
        204,
        "not configured yet: the wait ends with 204"
    );
    let waiting = tokio::spawn({
        let (agent, url) = (agent.clone(), url.clone());
        async move { agent.get(format!("{url}?wait=10")).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    post_configure(&sc, &with_agent("127.0.0.1")).await;
    let r = waiting.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.json::<Value>().await.unwrap(), expected);
    // Forgotten: nothing a second time, to anyone.
    let r = agent.get(&url).send().await.unwrap();
    assert_eq!(error_code(r).await, (410, "already_handed_over".into()));
    let r = other.get(&url).send().await.unwrap();
    assert_eq!(error_code(r).await, (410, "already_handed_over".into()));
    let health: Value = bare()
        .get(format!("{}/health", sc.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health,
        json!({"status": "ok", "configured": true, "handedOver": true})
    );

    // Another address gets nothing and takes nothing, whether it waited or asks after the fact.
    let sc = start().await;
    let url = format!("{}/agent-config", sc.api_url());
    let early = tokio::spawn({
        let (other, url) = (other.clone(), url.clone());
        async move { other.get(format!("{url}?wait=10")).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    post_configure(&sc, &with_agent("127.0.0.1")).await;
    let r = early.await.unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    let r = other.get(&url).send().await.unwrap();
    let (status, text) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 403);
    assert!(!text.contains("CANARY"), "{text}");
    let r = agent.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), expected);

    // A sidecar configured without an agent part (a fresh run) has nothing to hand over.
    let fresh = start().await;
    fresh
        .configure(base_config("https://api.openai.com/v1", json!([]), &[]))
        .unwrap();
    let r = agent
        .get(format!("{}/agent-config", fresh.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "no_agent_config".into()));
}
