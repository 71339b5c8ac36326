//! A scripted identity provider on 127.0.0.1 for the social sign-in tests: an OpenID Connect provider
//! (discovery, authorize with auto-consent, token with PKCE, JWKS, userinfo) and, on the same server, a
//! GitHub-style OAuth2 provider (`/login/oauth/authorize`, `/login/oauth/access_token`, `/api/user`,
//! `/api/user/emails`). ID tokens are RS256, signed with `openidconnect`'s provider-side types.
//!
//! Knobs: the identity it vouches for, and [`Tamper`] for the failure cases (an ID token with another
//! nonce, or signed by a key that is not in the JWKS). Codes are good once: a replayed code is
//! `invalid_grant`, as real providers answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use openidconnect::core::{
    CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{
    Audience, EmptyAdditionalClaims, EndUserEmail, EndUserName, IssuerUrl, JsonWebKeyId, Nonce,
    PrivateSigningKey, StandardClaims, SubjectIdentifier,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PROVIDER_KEY: &str = include_str!("keys/provider.pem");
const IMPOSTOR_KEY: &str = include_str!("keys/impostor.pem");

/// Who the provider says is signing in.
#[derive(Debug, Clone)]
pub struct FakeIdentity {
    pub subject: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
}

impl FakeIdentity {
    pub fn new(subject: &str, email: &str) -> Self {
        Self {
            subject: subject.into(),
            email: email.into(),
            email_verified: true,
            name: email.split('@').next().unwrap_or("").into(),
        }
    }
}

/// Deliberate faults in the next ID tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tamper {
    /// The ID token carries another nonce than the one asked for.
    pub wrong_nonce: bool,
    /// The ID token is signed by a key the JWKS does not publish (same `kid`).
    pub foreign_key: bool,
}

struct Grant {
    nonce: Option<String>,
    challenge: String,
    redirect_uri: String,
    used: bool,
    identity: FakeIdentity,
}

struct Inner {
    identity: FakeIdentity,
    tamper: Tamper,
    grants: HashMap<String, Grant>,
    tokens: HashMap<String, FakeIdentity>,
    /// Token requests answered, including refused ones.
    token_requests: usize,
}

#[derive(Clone)]
struct Shared {
    base: String,
    client_id: String,
    client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

pub struct FakeProvider {
    /// `http://127.0.0.1:<port>`: the OIDC issuer, and the GitHub-style endpoints under it.
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    shared: Shared,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            base: base.clone(),
            client_id: "appstrate-test-client".into(),
            client_secret: "appstrate-test-secret".into(),
            inner: Arc::new(Mutex::new(Inner {
                identity: FakeIdentity::new("user-1", "ada@example.com"),
                tamper: Tamper::default(),
                grants: HashMap::new(),
                tokens: HashMap::new(),
                token_requests: 0,
            })),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/jwks", get(jwks))
            .route("/userinfo", get(userinfo))
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(token))
            .route("/api/user", get(github_user))
            .route("/api/user/emails", get(github_emails))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self {
            base,
            client_id: shared.client_id.clone(),
            client_secret: shared.client_secret.clone(),
            shared,
            _task: task,
        }
    }

    pub fn set_identity(&self, identity: FakeIdentity) {
        self.shared.inner.lock().unwrap().identity = identity;
    }

    pub fn tamper(&self, tamper: Tamper) {
        self.shared.inner.lock().unwrap().tamper = tamper;
    }

    pub fn token_requests(&self) -> usize {
        self.shared.inner.lock().unwrap().token_requests
    }

    /// The server environment for this provider as the generic OIDC provider.
    pub fn oidc_env(&self) -> Vec<(String, String)> {
        vec![
            ("AUTH_OIDC_ISSUER".into(), self.base.clone()),
            ("AUTH_OIDC_CLIENT_ID".into(), self.client_id.clone()),
            ("AUTH_OIDC_CLIENT_SECRET".into(), self.client_secret.clone()),
            ("EGRESS_ALLOW_INTERNAL_HOSTS".into(), "127.0.0.1".into()),
        ]
    }

    /// The server environment for this provider as GitHub.
    pub fn github_env(&self) -> Vec<(String, String)> {
        vec![
            ("AUTH_GITHUB_CLIENT_ID".into(), self.client_id.clone()),
            (
                "AUTH_GITHUB_CLIENT_SECRET".into(),
                self.client_secret.clone(),
            ),
            (
                "AUTH_GITHUB_AUTHORIZE_URL".into(),
                format!("{}/login/oauth/authorize", self.base),
            ),
            (
                "AUTH_GITHUB_TOKEN_URL".into(),
                format!("{}/login/oauth/access_token", self.base),
            ),
            ("AUTH_GITHUB_API_URL".into(), format!("{}/api", self.base)),
            ("EGRESS_ALLOW_INTERNAL_HOSTS".into(), "127.0.0.1".into()),
        ]
    }
}

fn signing_key(pem: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new("k1".into())))
        .expect("test signing key")
}

async fn discovery(State(s): State<Shared>) -> Json<Value> {
    let b = &s.base;
    Json(json!({
        "issuer": b,
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "jwks_uri": format!("{b}/jwks"),
        "userinfo_endpoint": format!("{b}/userinfo"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "email", "email_verified", "name"],
    }))
}

async fn jwks() -> Json<Value> {
    let set = CoreJsonWebKeySet::new(vec![signing_key(PROVIDER_KEY).as_verification_key()]);
    Json(serde_json::to_value(set).unwrap())
}

/// Auto-consent: straight back to the client with a code.
async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("client_id") != Some(&s.client_id) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let (Some(redirect_uri), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return (
            StatusCode::BAD_REQUEST,
            "redirect_uri and state are required",
        )
            .into_response();
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return (StatusCode::BAD_REQUEST, "PKCE S256 is required").into_response();
    }
    let code = format!("code-{}", uuid::Uuid::new_v4());
    let mut inner = s.inner.lock().unwrap();
    let identity = inner.identity.clone();
    inner.grants.insert(
        code.clone(),
        Grant {
            nonce: q.get("nonce").cloned(),
            challenge: q.get("code_challenge").cloned().unwrap_or_default(),
            redirect_uri: redirect_uri.clone(),
            used: false,
            identity,
        },
    );
    let mut url = url::Url::parse(redirect_uri).unwrap();
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    Redirect::to(url.as_str()).into_response()
}

fn token_error(code: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// Client credentials from HTTP Basic or the form.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = String::from_utf8(STANDARD.decode(basic).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Some((unescape(id), unescape(secret)));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut inner = s.inner.lock().unwrap();
    inner.token_requests += 1;
    if client_credentials(&headers, &form) != Some((s.client_id.clone(), s.client_secret.clone())) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let code = form.get("code").cloned().unwrap_or_default();
    let tamper = inner.tamper;
    let Some(grant) = inner.grants.get_mut(&code) else {
        return token_error("invalid_grant", "unknown code");
    };
    if grant.used {
        return token_error("invalid_grant", "the code was already used");
    }
    grant.used = true;
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return token_error(
            "invalid_grant",
            "redirect_uri differs from the authorization request",
        );
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return token_error("invalid_grant", "PKCE verification failed");
    }
    let identity = grant.identity.clone();
    let nonce = grant.nonce.clone();
    let access_token = format!("at-{}", uuid::Uuid::new_v4());
    inner.tokens.insert(access_token.clone(), identity.clone());
    let mut body = json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": 3600,
        "scope": "openid email profile",
    });
    // OIDC (a nonce was asked for): an ID token.
    if let Some(nonce) = nonce {
        let nonce = if tamper.wrong_nonce {
            "not-the-nonce".to_string()
        } else {
            nonce
        };
        let now = chrono::Utc::now();
        let claims = CoreIdTokenClaims::new(
            IssuerUrl::new(s.base.clone()).unwrap(),
            vec![Audience::new(s.client_id.clone())],
            now + chrono::Duration::minutes(10),
            now,
            StandardClaims::new(SubjectIdentifier::new(identity.subject.clone()))
                .set_email(Some(EndUserEmail::new(identity.email.clone())))
                .set_email_verified(Some(identity.email_verified))
                .set_name(Some(EndUserName::new(identity.name.clone()).into())),
            EmptyAdditionalClaims {},
        )
        .set_nonce(Some(Nonce::new(nonce)));
        let key = signing_key(if tamper.foreign_key {
            IMPOSTOR_KEY
        } else {
            PROVIDER_KEY
        });
        let id_token = CoreIdToken::new(
            claims,
            &key,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            None,
            None,
        )
        .unwrap();
        body["id_token"] = json!(id_token.to_string());
    }
    Json(body).into_response()
}

fn bearer_identity(s: &Shared, headers: &HeaderMap) -> Option<FakeIdentity> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .or_else(|| {
            headers
                .get("authorization")?
                .to_str()
                .ok()?
                .strip_prefix("bearer ")
        })?
        .to_string();
    s.inner.lock().unwrap().tokens.get(&token).cloned()
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match bearer_identity(&s, &headers) {
        Some(i) => Json(json!({"sub": i.subject, "email": i.email, "email_verified": i.email_verified, "name": i.name})).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn github_user(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match bearer_identity(&s, &headers) {
        Some(i) => Json(json!({
            "id": i.subject.parse::<u64>().unwrap_or(4242),
            "login": i.name,
            "name": i.name,
            "email": null,
        }))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn github_emails(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match bearer_identity(&s, &headers) {
        Some(i) => Json(json!([
            {"email": format!("old-{}", i.email), "primary": false, "verified": true},
            {"email": i.email, "primary": true, "verified": i.email_verified},
        ]))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}
