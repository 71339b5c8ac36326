//! Calls to the provider's authorization server: discovery (RFC 8414, then OpenID Connect), the token
//! endpoint (code exchange and refresh through the `oauth2` crate, with the declared client
//! authentication), userinfo and revocation (RFC 7009). Every call is resolved and pinned through the SSRF
//! guard (`EGRESS_ALLOW_INTERNAL_HOSTS` admits an internal provider), follows no redirects and is bounded
//! in time.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
};
use serde_json::Value;
use sidecar::ssrf::{self, Resolver, SsrfError};

use super::spec::{OAuthSpec, TokenAuth};
use crate::state::AppState;

const TIMEOUT: Duration = Duration::from_secs(15);

/// The endpoints one auth uses, after discovery for the `issuer` form.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
    pub userinfo: Option<String>,
    pub revocation: Option<String>,
    pub pkce: bool,
}

/// The client registered with the provider, secret decrypted.
pub struct ClientCreds {
    pub client_id: String,
    pub client_secret: Option<String>,
}

/// Why a provider call failed.
#[derive(Debug)]
pub enum ProviderError {
    /// The provider answered an OAuth error (`invalid_grant`, `invalid_client`, …) with its description.
    OAuth {
        error: String,
        description: Option<String>,
    },
    /// Not reachable, refused by the SSRF guard, or an unreadable answer.
    Transport(String),
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::OAuth {
                error,
                description: Some(d),
            } => write!(f, "{error} ({d})"),
            ProviderError::OAuth { error, .. } => f.write_str(error),
            ProviderError::Transport(m) => f.write_str(m),
        }
    }
}

fn resolver() -> Arc<dyn Resolver> {
    static R: OnceLock<Arc<dyn Resolver>> = OnceLock::new();
    R.get_or_init(ssrf::system_resolver).clone()
}

/// A client pinned to the resolved address of `url`'s host, after the SSRF checks.
pub async fn pinned_client(state: &AppState, url: &str) -> Result<reqwest::Client, ProviderError> {
    let parsed = ssrf::parse_url(url)
        .map_err(|e| ProviderError::Transport(format!("{url} is not usable: {e}")))?;
    let policy = crate::webhooks::policy(&state.config);
    let pinned = ssrf::resolve_pinned(&parsed, &policy, resolver().as_ref())
        .await
        .map_err(|e| match e {
            SsrfError::BlockedName(_) | SsrfError::BlockedAddress { .. } => ProviderError::Transport(
                format!(
                    "{url} points at a private, loopback or internal address ({e}); list the host in \
                     EGRESS_ALLOW_INTERNAL_HOSTS for a trusted internal provider"
                ),
            ),
            other => ProviderError::Transport(format!("{url}: {other}")),
        })?;
    ssrf::pinned_client_builder(&pinned)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| ProviderError::Transport(format!("client: {e}")))
}

async fn get_json(
    state: &AppState,
    url: &str,
    bearer: Option<&str>,
) -> Result<(u16, Value), ProviderError> {
    let client = pinned_client(state, url).await?;
    let mut req = client.get(url).header("accept", "application/json");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::Transport(format!("{url}: {}", describe(&e))))?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "the provider did not answer in time"
    } else if e.is_connect() {
        "could not connect to the provider"
    } else {
        "the request to the provider failed"
    }
}

/// The endpoints of `spec`: as declared, or from the issuer's metadata (RFC 8414 first, then OpenID
/// Connect discovery). Declared endpoints win over discovered ones.
pub async fn endpoints(state: &AppState, spec: &OAuthSpec) -> Result<Endpoints, ProviderError> {
    let mut meta = Value::Null;
    if let Some(issuer) = &spec.issuer {
        let base = issuer.trim_end_matches('/');
        let mut last = String::new();
        for well_known in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let url = format!("{base}{well_known}");
            match get_json(state, &url, None).await {
                Ok((200, doc)) if doc.is_object() => {
                    let said = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
                    if said.trim_end_matches('/') != base {
                        return Err(ProviderError::Transport(format!(
                            "the metadata at {url} names issuer {said:?}, not {issuer}"
                        )));
                    }
                    meta = doc;
                    break;
                }
                Ok((status, _)) => last = format!("{url} answered HTTP {status}"),
                Err(e) => last = e.to_string(),
            }
        }
        if meta.is_null() {
            return Err(ProviderError::Transport(format!(
                "discovery for issuer {issuer} failed: {last}"
            )));
        }
    }
    let discovered = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
    let missing = |k: &str| {
        ProviderError::Transport(format!(
            "the provider's metadata has no {k}; declare it in the manifest"
        ))
    };
    let pkce = spec.pkce.unwrap_or_else(|| {
        meta.get("code_challenge_methods_supported")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x == "S256"))
    });
    Ok(Endpoints {
        authorization: spec
            .authorization_endpoint
            .clone()
            .or_else(|| discovered("authorization_endpoint"))
            .ok_or_else(|| missing("authorization_endpoint"))?,
        token: spec
            .token_endpoint
            .clone()
            .or_else(|| discovered("token_endpoint"))
            .ok_or_else(|| missing("token_endpoint"))?,
        userinfo: spec
            .userinfo_endpoint
            .clone()
            .or_else(|| discovered("userinfo_endpoint")),
        revocation: spec
            .revocation_endpoint
            .clone()
            .or_else(|| discovered("revocation_endpoint")),
        pkce,
    })
}

type TokenClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// The `oauth2` client for one auth and registered client.
pub fn oauth_client(
    ep: &Endpoints,
    token_auth: TokenAuth,
    creds: &ClientCreds,
    redirect_uri: &str,
) -> Result<TokenClient, ProviderError> {
    let bad = |what: &str, e: url::ParseError| ProviderError::Transport(format!("{what}: {e}"));
    let mut client = BasicClient::new(ClientId::new(creds.client_id.clone()))
        .set_auth_uri(
            AuthUrl::new(ep.authorization.clone()).map_err(|e| bad("authorization_endpoint", e))?,
        )
        .set_token_uri(TokenUrl::new(ep.token.clone()).map_err(|e| bad("token_endpoint", e))?)
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_string()).map_err(|e| bad("redirect URI", e))?,
        )
        .set_auth_type(match token_auth {
            TokenAuth::Basic => AuthType::BasicAuth,
            TokenAuth::Post | TokenAuth::None => AuthType::RequestBody,
        });
    if token_auth != TokenAuth::None {
        if let Some(s) = &creds.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.clone()));
        }
    }
    Ok(client)
}

/// Tokens as the provider answered them.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    /// The granted scopes, when the provider says.
    pub scopes: Option<Vec<String>>,
}

fn tokens(r: BasicTokenResponse) -> Tokens {
    Tokens {
        access_token: r.access_token().secret().clone(),
        refresh_token: r.refresh_token().map(|t| t.secret().clone()),
        token_type: "Bearer".into(),
        expires_in: r.expires_in(),
        scopes: r
            .scopes()
            .map(|s| s.iter().map(|x| x.as_str().to_string()).collect()),
    }
}

fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) => ProviderError::OAuth {
            error: r.error().to_string(),
            description: r.error_description().cloned(),
        },
        RequestTokenError::Request(_) => {
            ProviderError::Transport("the token endpoint could not be reached".into())
        }
        RequestTokenError::Parse(_, _) => ProviderError::Transport(
            "the token endpoint answered something that is not an OAuth token response".into(),
        ),
        RequestTokenError::Other(m) => ProviderError::Transport(m),
    }
}

/// Redeems an authorization code.
pub async fn exchange_code(
    state: &AppState,
    client: &TokenClient,
    token_url: &str,
    code: &str,
    verifier: Option<String>,
) -> Result<Tokens, ProviderError> {
    let http = pinned_client(state, token_url).await?;
    let mut req = client.exchange_code(AuthorizationCode::new(code.to_string()));
    if let Some(v) = verifier {
        req = req.set_pkce_verifier(PkceCodeVerifier::new(v));
    }
    req.request_async(&http)
        .await
        .map(tokens)
        .map_err(token_error)
}

/// Trades a refresh token for new tokens.
pub async fn refresh(
    state: &AppState,
    client: &TokenClient,
    token_url: &str,
    refresh_token: &str,
) -> Result<Tokens, ProviderError> {
    let http = pinned_client(state, token_url).await?;
    let token = RefreshToken::new(refresh_token.to_string());
    client
        .exchange_refresh_token(&token)
        .request_async(&http)
        .await
        .map(tokens)
        .map_err(token_error)
}

/// The userinfo document for `access_token`.
pub async fn userinfo(
    state: &AppState,
    url: &str,
    access_token: &str,
) -> Result<Value, ProviderError> {
    match get_json(state, url, Some(access_token)).await? {
        (200, doc) => Ok(doc),
        (status, _) => Err(ProviderError::Transport(format!(
            "the userinfo endpoint answered HTTP {status}"
        ))),
    }
}

/// RFC 7009 revocation of `token` (with the same client authentication as the token endpoint).
pub async fn revoke(
    state: &AppState,
    url: &str,
    token_auth: TokenAuth,
    creds: &ClientCreds,
    token: &str,
    hint: &str,
) -> Result<(), ProviderError> {
    let http = pinned_client(state, url).await?;
    let mut form = vec![("token", token), ("token_type_hint", hint)];
    let mut req = http.post(url);
    match (token_auth, &creds.client_secret) {
        (TokenAuth::Basic, Some(secret)) => {
            req = req.basic_auth(
                url::form_urlencoded::byte_serialize(creds.client_id.as_bytes())
                    .collect::<String>(),
                Some(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()),
            );
        }
        (TokenAuth::Post, Some(secret)) => {
            form.push(("client_id", &creds.client_id));
            form.push(("client_secret", secret));
        }
        _ => form.push(("client_id", &creds.client_id)),
    }
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| ProviderError::Transport(format!("{url}: {}", describe(&e))))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(ProviderError::Transport(format!(
            "the revocation endpoint answered HTTP {}",
            resp.status().as_u16()
        )))
    }
}
