//! A scripted OAuth2 authorization server on 127.0.0.1 for the integration-connection tests, speaking
//! the protocol as real providers do: `/authorize` (auto-consent or denial, redirect URI checked against
//! the registered one), `/token` (authorization code with PKCE S256, refresh with rotation; client
//! authentication by `client_secret_basic` or `client_secret_post`, as configured), `/revoke` (RFC
//! 7009), `/userinfo`, RFC 8414 / OIDC discovery for the `issuer` form, and a protected API
//! (`/api/items`) that answers 401 to an expired or unknown access token.
//!
//! Codes are good once; a refresh token is good until rotated or revoked. Counters let the tests see
//! what reached the provider (code exchanges, refreshes, revocations, API calls).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How the token endpoint expects the client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form (`client_secret_post`).
    Post,
}

/// What the consent screen does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    Approve,
    /// The user clicks "Deny": back to the client with `error=access_denied`.
    Deny,
}

/// Counters of what reached the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub authorizations: usize,
    pub code_exchanges: usize,
    pub refreshes: usize,
    pub revocations: usize,
    /// `/api/items` calls answered 200.
    pub api_ok: usize,
    /// `/api/items` calls answered 401.
    pub api_unauthorized: usize,
}

struct Grant {
    challenge: Option<String>,
    redirect_uri: String,
    scope: String,
    used: bool,
}

struct Inner {
    consent: Consent,
    client_auth: ClientAuth,
    registered_redirect: Option<String>,
    expires_in: u64,
    rotate: bool,
    refresh_delay: Duration,
    grants: HashMap<String, Grant>,
    /// access token → (expiry, scope)
    access: HashMap<String, (Instant, String)>,
    /// live refresh tokens → scope
    refresh: HashMap<String, String>,
    counters: Counters,
    /// The last `/authorize` query, for assertions on what the client asked for.
    last_authorize: Option<HashMap<String, String>>,
}

#[derive(Clone)]
struct Shared {
    base: String,
    client_id: String,
    client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

/// The running provider.
pub struct FakeOAuth {
    /// `http://127.0.0.1:<port>`: the issuer; endpoints are under it.
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOAuth {
    /// Starts with auto-consent, `client_secret_basic`, one-hour tokens and refresh-token rotation.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            base: base.clone(),
            client_id: "fake-client-id".into(),
            client_secret: "fake-client-secret-7c1e".into(),
            inner: Arc::new(Mutex::new(Inner {
                consent: Consent::Approve,
                client_auth: ClientAuth::Basic,
                registered_redirect: None,
                expires_in: 3600,
                rotate: true,
                refresh_delay: Duration::ZERO,
                grants: HashMap::new(),
                access: HashMap::new(),
                refresh: HashMap::new(),
                counters: Counters::default(),
                last_authorize: None,
            })),
        };
        let app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(discovery))
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/userinfo", get(userinfo))
            .route("/api/items", get(items))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self {
            base,
            client_id: shared.client_id.clone(),
            client_secret: shared.client_secret.clone(),
            shared,
            task,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.shared.inner.lock().unwrap())
    }

    pub fn set_consent(&self, consent: Consent) {
        self.with(|i| i.consent = consent);
    }

    pub fn set_client_auth(&self, auth: ClientAuth) {
        self.with(|i| i.client_auth = auth);
    }

    /// The one redirect URI registered for the client; `/authorize` refuses any other (as providers do).
    pub fn register_redirect(&self, uri: &str) {
        self.with(|i| i.registered_redirect = Some(uri.to_string()));
    }

    /// `expires_in` of the next access tokens.
    pub fn set_expires_in(&self, seconds: u64) {
        self.with(|i| i.expires_in = seconds);
    }

    /// Whether a refresh answers a new refresh token (and invalidates the old one).
    pub fn set_rotation(&self, rotate: bool) {
        self.with(|i| i.rotate = rotate);
    }

    /// Time the token endpoint takes to answer a refresh (to make concurrent refreshes overlap).
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.with(|i| i.refresh_delay = delay);
    }

    /// Every access token expires now (the next API call answers 401).
    pub fn expire_access_tokens(&self) {
        self.with(|i| {
            let now = Instant::now();
            for (exp, _) in i.access.values_mut() {
                *exp = now;
            }
        });
    }

    /// The user removed the application at the provider: every refresh token is revoked.
    pub fn revoke_all_refresh_tokens(&self) {
        self.with(|i| i.refresh.clear());
    }

    pub fn counters(&self) -> Counters {
        self.with(|i| i.counters)
    }

    /// The query of the last `/authorize` request.
    pub fn last_authorize(&self) -> Option<HashMap<String, String>> {
        self.with(|i| i.last_authorize.clone())
    }

    /// Whether `token` is a live access token.
    pub fn access_token_valid(&self, token: &str) -> bool {
        self.with(|i| {
            i.access
                .get(token)
                .is_some_and(|(exp, _)| *exp > Instant::now())
        })
    }

    /// Whether `token` is a live refresh token.
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.with(|i| i.refresh.contains_key(token))
    }
}

async fn discovery(State(s): State<Shared>) -> Json<Value> {
    let b = &s.base;
    Json(json!({
        "issuer": b,
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "revocation_endpoint": format!("{b}/revoke"),
        "userinfo_endpoint": format!("{b}/userinfo"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

fn page(status: StatusCode, text: &str) -> Response {
    (status, text.to_string()).into_response()
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut inner = s.inner.lock().unwrap();
    inner.counters.authorizations += 1;
    inner.last_authorize = Some(q.clone());
    if q.get("client_id") != Some(&s.client_id) {
        return page(StatusCode::BAD_REQUEST, "invalid_client: unknown client_id");
    }
    if q.get("response_type").map(String::as_str) != Some("code") {
        return page(StatusCode::BAD_REQUEST, "unsupported_response_type");
    }
    let (Some(redirect_uri), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return page(
            StatusCode::BAD_REQUEST,
            "invalid_request: redirect_uri and state are required",
        );
    };
    // Providers never redirect to an unregistered URI: they show an error page.
    if let Some(registered) = &inner.registered_redirect {
        if registered != redirect_uri {
            return page(
                StatusCode::BAD_REQUEST,
                &format!("redirect_uri_mismatch: {redirect_uri} is not registered for this client"),
            );
        }
    }
    let challenge = match (
        q.get("code_challenge"),
        q.get("code_challenge_method").map(String::as_str),
    ) {
        (Some(c), Some("S256")) => Some(c.clone()),
        (None, None) => None,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "invalid_request: PKCE must be S256",
            )
        }
    };
    let mut url = url::Url::parse(redirect_uri).unwrap();
    if inner.consent == Consent::Deny {
        url.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("error_description", "The user denied access")
            .append_pair("state", state);
        return Redirect::to(url.as_str()).into_response();
    }
    let code = format!("code-{}", uuid::Uuid::new_v4());
    inner.grants.insert(
        code.clone(),
        Grant {
            challenge,
            redirect_uri: redirect_uri.clone(),
            scope: q.get("scope").cloned().unwrap_or_default(),
            used: false,
        },
    );
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    Redirect::to(url.as_str()).into_response()
}

fn token_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// The client's credentials as the configured method carries them; `None` if absent or the wrong method.
fn client_credentials(
    method: ClientAuth,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    match method {
        ClientAuth::Basic => {
            let decoded = String::from_utf8(STANDARD.decode(basic?).ok()?).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let unescape = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some((unescape(id), unescape(secret)))
        }
        ClientAuth::Post if basic.is_none() => Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        )),
        ClientAuth::Post => None,
    }
}

fn issue(inner: &mut Inner, scope: &str, refresh: Option<String>) -> Value {
    let access_token = format!("at-{}", uuid::Uuid::new_v4());
    inner.access.insert(
        access_token.clone(),
        (
            Instant::now() + Duration::from_secs(inner.expires_in),
            scope.to_string(),
        ),
    );
    let refresh_token = refresh.unwrap_or_else(|| format!("rt-{}", uuid::Uuid::new_v4()));
    inner
        .refresh
        .insert(refresh_token.clone(), scope.to_string());
    json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": inner.expires_in,
        "refresh_token": refresh_token,
        "scope": scope,
    })
}

async fn token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let delay = {
        let inner = s.inner.lock().unwrap();
        if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
            inner.refresh_delay
        } else {
            Duration::ZERO
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = s.inner.lock().unwrap();
    if client_credentials(inner.client_auth, &headers, &form)
        != Some((s.client_id.clone(), s.client_secret.clone()))
    {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            inner.counters.code_exchanges += 1;
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(grant) = inner.grants.get_mut(&code) else {
                return token_error(StatusCode::BAD_REQUEST, "invalid_grant", "Unknown code");
            };
            if grant.used {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The authorization code was already used",
                );
            }
            grant.used = true;
            if form.get("redirect_uri") != Some(&grant.redirect_uri) {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri does not match the authorization request",
                );
            }
            if let Some(challenge) = &grant.challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != *challenge {
                    return token_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "PKCE verification failed: code_verifier does not match code_challenge",
                    );
                }
            }
            let scope = grant.scope.clone();
            Json(issue(&mut inner, &scope, None)).into_response()
        }
        Some("refresh_token") => {
            inner.counters.refreshes += 1;
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(scope) = inner.refresh.get(&presented).cloned() else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Token has been expired or revoked.",
                );
            };
            let keep = if inner.rotate {
                inner.refresh.remove(&presented);
                None
            } else {
                Some(presented)
            };
            Json(issue(&mut inner, &scope, keep)).into_response()
        }
        _ => token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

async fn revoke(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut inner = s.inner.lock().unwrap();
    if client_credentials(inner.client_auth, &headers, &form)
        != Some((s.client_id.clone(), s.client_secret.clone()))
    {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    inner.counters.revocations += 1;
    let token = form.get("token").cloned().unwrap_or_default();
    // Revoking a refresh token revokes the grant: its access tokens go too (RFC 7009 §2.1 allows it).
    if inner.refresh.remove(&token).is_some() {
        inner.access.clear();
    }
    inner.access.remove(&token);
    StatusCode::OK.into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::to_string)
}

fn live_scope(s: &Shared, headers: &HeaderMap) -> Option<String> {
    let token = bearer(headers)?;
    let inner = s.inner.lock().unwrap();
    let (exp, scope) = inner.access.get(&token)?;
    (*exp > Instant::now()).then(|| scope.clone())
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match live_scope(&s, &headers) {
        Some(_) => Json(json!({
            "sub": "user-42",
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "account": {"id": 42, "login": "ada"},
        }))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn items(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let scope = live_scope(&s, &headers);
    let mut inner = s.inner.lock().unwrap();
    match scope {
        Some(scope) => {
            inner.counters.api_ok += 1;
            Json(json!({"items": ["alpha", "beta"], "scope": scope})).into_response()
        }
        None => {
            inner.counters.api_unauthorized += 1;
            token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "The access token expired",
            )
        }
    }
}
