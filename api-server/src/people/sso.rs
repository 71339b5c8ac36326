//! Social and OpenID Connect sign-in: Google and any OIDC issuer through `openidconnect` (discovery,
//! PKCE, state, nonce, ID-token validation against the provider's JWKS), GitHub through `oauth2` (PKCE and
//! state; the email comes from GitHub's API). The application only stores and checks what the crates
//! hand back: the state (hashed) with its PKCE verifier and nonce, for ten minutes, good for one callback.
//!
//! The redirect URI is `APP_URL/api/auth/callback/<provider>`. Accounts link by verified email.

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, TokenUrl};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::Deserialize;

use super::accounts::{self, OpenedSession};
use super::config::ClientCredentials;
use super::{ClientInfo, PeopleError};
use crate::crypto::sha256_hex;
use crate::infra::database::people::{SignInStateRow, UserRow};
use crate::infra::database::{now, DbError};
use crate::state::AppState;

pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
const STATE_TTL_SECONDS: i64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Google,
    Github,
    Oidc,
}

impl Provider {
    pub fn parse(slug: &str) -> Option<Provider> {
        match slug {
            "google" => Some(Provider::Google),
            "github" => Some(Provider::Github),
            "oidc" => Some(Provider::Oidc),
            _ => None,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Github => "github",
            Provider::Oidc => "oidc",
        }
    }
}

/// Why a social sign-in failed; the browser face renders each as a page that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("Sign-in with {0} is not configured on this instance")]
    NotConfigured(&'static str),
    #[error(
        "This page was opened at {request_origin}, but APP_URL is {app_url}. The provider sends you back \
         to {redirect_uri}: set APP_URL to the public URL of this instance, and register exactly \
         {redirect_uri} as the redirect URI with the provider."
    )]
    OriginMismatch {
        app_url: String,
        request_origin: String,
        redirect_uri: String,
    },
    #[error(
        "The sign-in request is unknown, expired or was already used (state mismatch); start again"
    )]
    InvalidState,
    #[error("The provider refused the sign-in: {0}")]
    Provider(String),
    #[error("The provider's ID token is not valid: {0}")]
    IdToken(String),
    #[error("The provider did not confirm an email address for this account; verify it with the provider and try again")]
    NoVerifiedEmail,
    #[error(transparent)]
    Account(#[from] PeopleError),
}

impl From<DbError> for SignInError {
    fn from(e: DbError) -> Self {
        SignInError::Account(e.into())
    }
}

pub type SignInResult<T> = Result<T, SignInError>;

/// The redirect URI to register with `provider`.
pub fn redirect_uri(app_url: &str, provider: Provider) -> String {
    format!(
        "{}/api/auth/callback/{}",
        app_url.trim_end_matches('/'),
        provider.slug()
    )
}

/// The providers configured on this instance.
pub fn configured(state: &AppState) -> Vec<Provider> {
    let p = &state.config.people;
    let mut out = Vec::new();
    if p.google.is_some() {
        out.push(Provider::Google);
    }
    if p.github.is_some() {
        out.push(Provider::Github);
    }
    if p.oidc.is_some() {
        out.push(Provider::Oidc);
    }
    out
}

/// The origin (`scheme://host[:port]`) of `url`.
pub fn origin_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// Refuses a sign-in started or finished at another origin than `APP_URL`'s: the provider would send
/// the browser back elsewhere (or has), and the cookies would not match.
pub fn check_request_origin(
    state: &AppState,
    provider: Provider,
    request_origin: &str,
) -> SignInResult<()> {
    let app_url = &state.config.app_url;
    if origin_of(app_url).as_deref() == Some(request_origin) {
        return Ok(());
    }
    Err(SignInError::OriginMismatch {
        app_url: app_url.clone(),
        request_origin: request_origin.to_string(),
        redirect_uri: redirect_uri(app_url, provider),
    })
}

/// A client for provider calls: no redirects followed, bounded time, and every URL checked against the
/// SSRF rules (`EGRESS_ALLOW_INTERNAL_HOSTS` admits an internal provider).
fn http_client() -> SignInResult<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| SignInError::Provider(e.to_string()))
}

fn check_outbound(state: &AppState, what: &str, url: &str) -> SignInResult<()> {
    crate::webhooks::check_url(url, &state.config)
        .map(|_| ())
        .map_err(|e| SignInError::Provider(format!("{what} {url}: {e}")))
}

fn oidc_settings(
    state: &AppState,
    provider: Provider,
) -> SignInResult<(String, ClientCredentials)> {
    let p = &state.config.people;
    match provider {
        Provider::Google => p
            .google
            .clone()
            .map(|c| (GOOGLE_ISSUER.to_string(), c))
            .ok_or(SignInError::NotConfigured("Google")),
        Provider::Oidc => p
            .oidc
            .clone()
            .map(|o| (o.issuer, o.client))
            .ok_or(SignInError::NotConfigured("OpenID Connect")),
        Provider::Github => Err(SignInError::NotConfigured("GitHub")),
    }
}

async fn discover(
    state: &AppState,
    provider: Provider,
    http: &reqwest::Client,
) -> SignInResult<CoreProviderMetadata> {
    let (issuer, _) = oidc_settings(state, provider)?;
    check_outbound(state, "issuer", &issuer)?;
    let issuer_url = IssuerUrl::new(issuer.clone())
        .map_err(|e| SignInError::Provider(format!("issuer {issuer}: {e}")))?;
    let metadata = CoreProviderMetadata::discover_async(issuer_url, http)
        .await
        .map_err(|e| SignInError::Provider(format!("discovery at {issuer} failed: {e}")))?;
    check_outbound(
        state,
        "token endpoint",
        metadata.token_endpoint().map(|u| u.as_str()).unwrap_or(""),
    )?;
    check_outbound(state, "JWKS", metadata.jwks_uri().as_str())?;
    Ok(metadata)
}

/// The provider's authorization URL to send the browser to, and the state to bind to the browser.
pub struct Started {
    pub authorize_url: String,
    pub state: String,
}

pub async fn start(state: &AppState, provider: Provider) -> SignInResult<Started> {
    let redirect = RedirectUrl::new(redirect_uri(&state.config.app_url, provider))
        .map_err(|e| SignInError::Provider(e.to_string()))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = match provider {
        Provider::Github => {
            let gh = state
                .config
                .people
                .github
                .clone()
                .ok_or(SignInError::NotConfigured("GitHub"))?;
            let client = github_client(&gh)?.set_redirect_uri(redirect);
            let (url, csrf) = client
                .authorize_url(CsrfToken::new_random)
                .add_scope(oauth2::Scope::new("read:user".into()))
                .add_scope(oauth2::Scope::new("user:email".into()))
                .set_pkce_challenge(challenge)
                .url();
            (url, csrf, String::new())
        }
        _ => {
            let http = http_client()?;
            let metadata = discover(state, provider, &http).await?;
            let (_, creds) = oidc_settings(state, provider)?;
            let client = CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(creds.client_id.clone()),
                Some(ClientSecret::new(creds.client_secret.expose().clone())),
            )
            .set_redirect_uri(redirect);
            let (url, csrf, nonce) = client
                .authorize_url(
                    CoreAuthenticationFlow::AuthorizationCode,
                    CsrfToken::new_random,
                    Nonce::new_random,
                )
                .add_scope(Scope::new("email".into()))
                .add_scope(Scope::new("profile".into()))
                .set_pkce_challenge(challenge)
                .url();
            (url, csrf, nonce.secret().clone())
        }
    };
    let at = now();
    state
        .infra
        .db
        .insert_sign_in_state(&SignInStateRow {
            state_hash: sha256_hex(csrf.secret()),
            provider: provider.slug().to_string(),
            pkce_verifier: verifier.secret().clone(),
            nonce,
            created_at: at,
            expires_at: at + ChronoDuration::seconds(STATE_TTL_SECONDS),
        })
        .await?;
    Ok(Started {
        authorize_url: url.to_string(),
        state: csrf.secret().clone(),
    })
}

/// GitHub's OAuth2 client: authorization and token endpoints set.
type GithubClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn github_client(gh: &super::config::GithubProvider) -> SignInResult<GithubClient> {
    let bad = |e: url::ParseError| SignInError::Provider(e.to_string());
    Ok(
        BasicClient::new(oauth2::ClientId::new(gh.client.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(
                gh.client.client_secret.expose().clone(),
            ))
            .set_auth_uri(AuthUrl::new(gh.authorize_url.clone()).map_err(bad)?)
            .set_token_uri(TokenUrl::new(gh.token_url.clone()).map_err(bad)?),
    )
}

/// Who the provider says signed in.
struct Identity {
    subject: String,
    email: Option<String>,
    email_verified: bool,
    name: Option<String>,
}

/// The callback: checks the state (from the query, and bound to the browser by a cookie), redeems the code
/// with the PKCE verifier, validates the ID token (signature against JWKS, issuer, audience, expiry, nonce),
/// then signs in the linked account, links an account with the same verified email, or creates one.
pub async fn finish(
    state: &AppState,
    provider: Provider,
    code: &str,
    state_param: &str,
    state_cookie: Option<&str>,
    client: &ClientInfo,
) -> SignInResult<(UserRow, OpenedSession)> {
    if state_cookie != Some(state_param) {
        return Err(SignInError::InvalidState);
    }
    let stored = state
        .infra
        .db
        .take_sign_in_state(&sha256_hex(state_param))
        .await?
        .filter(|s| s.provider == provider.slug() && s.expires_at > now())
        .ok_or(SignInError::InvalidState)?;
    let redirect = RedirectUrl::new(redirect_uri(&state.config.app_url, provider))
        .map_err(|e| SignInError::Provider(e.to_string()))?;
    let http = http_client()?;
    let identity = match provider {
        Provider::Github => {
            let gh = state
                .config
                .people
                .github
                .clone()
                .ok_or(SignInError::NotConfigured("GitHub"))?;
            check_outbound(state, "token endpoint", &gh.token_url)?;
            let token = github_client(&gh)?
                .set_redirect_uri(redirect)
                .exchange_code(oauth2::AuthorizationCode::new(code.to_string()))
                .set_pkce_verifier(oauth2::PkceCodeVerifier::new(stored.pkce_verifier))
                .request_async(&http)
                .await
                .map_err(|e| SignInError::Provider(describe_token_error(&e)))?;
            github_identity(state, &http, &gh.api_url, token.access_token().secret()).await?
        }
        _ => {
            let metadata = discover(state, provider, &http).await?;
            let (_, creds) = oidc_settings(state, provider)?;
            let client = CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(creds.client_id.clone()),
                Some(ClientSecret::new(creds.client_secret.expose().clone())),
            )
            .set_redirect_uri(redirect);
            let token = client
                .exchange_code(AuthorizationCode::new(code.to_string()))
                .map_err(|e| SignInError::Provider(e.to_string()))?
                .set_pkce_verifier(PkceCodeVerifier::new(stored.pkce_verifier))
                .request_async(&http)
                .await
                .map_err(|e| SignInError::Provider(describe_token_error(&e)))?;
            let id_token = token
                .id_token()
                .ok_or_else(|| SignInError::IdToken("the token answer has no id_token".into()))?;
            let claims = id_token
                .claims(&client.id_token_verifier(), &Nonce::new(stored.nonce))
                .map_err(|e| SignInError::IdToken(e.to_string()))?;
            Identity {
                subject: claims.subject().to_string(),
                email: claims.email().map(|e| e.to_string()),
                email_verified: claims.email_verified().unwrap_or(false),
                name: claims
                    .name()
                    .and_then(|n| n.get(None))
                    .map(|n| n.to_string()),
            }
        }
    };
    let user = account_for(state, provider, identity).await?;
    let opened = accounts::open_session(state, &user.id, client).await?;
    Ok((user, opened))
}

fn describe_token_error<E: std::error::Error>(e: &E) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[derive(Deserialize)]
struct GithubUser {
    id: u64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

async fn github_get(
    state: &AppState,
    http: &reqwest::Client,
    api: &str,
    token: &str,
    path: &str,
) -> SignInResult<reqwest::Response> {
    let url = format!("{api}{path}");
    check_outbound(state, "GitHub API", &url)?;
    http.get(&url)
        .bearer_auth(token)
        .header("Accept", "application/vnd.github+json")
        .header("User-Agent", "appstrate")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| SignInError::Provider(format!("GitHub API {path}: {e}")))
}

async fn github_identity(
    state: &AppState,
    http: &reqwest::Client,
    api: &str,
    token: &str,
) -> SignInResult<Identity> {
    let user: GithubUser = github_get(state, http, api, token, "/user")
        .await?
        .json()
        .await
        .map_err(|e| SignInError::Provider(format!("GitHub API /user: {e}")))?;
    let emails: Vec<GithubEmail> = github_get(state, http, api, token, "/user/emails")
        .await?
        .json()
        .await
        .map_err(|e| SignInError::Provider(format!("GitHub API /user/emails: {e}")))?;
    let primary = emails.into_iter().find(|e| e.primary && e.verified);
    Ok(Identity {
        subject: user.id.to_string(),
        email_verified: primary.is_some(),
        email: primary.map(|e| e.email),
        name: user.name.or(Some(user.login)),
    })
}

/// The linked account, an existing account with the same verified email (linked now), or a new account
/// (subject to the sign-up rules of closed installations).
async fn account_for(state: &AppState, provider: Provider, id: Identity) -> SignInResult<UserRow> {
    let db = &state.infra.db;
    if let Some(user_id) = db.find_identity(provider.slug(), &id.subject).await? {
        if let Some(user) = db.get_user(&user_id).await? {
            return Ok(user);
        }
    }
    let email = match (&id.email, id.email_verified) {
        (Some(e), true) => {
            accounts::normalize_email(e).map_err(|_| SignInError::NoVerifiedEmail)?
        }
        _ => return Err(SignInError::NoVerifiedEmail),
    };
    let user = match db.find_user_by_email(&email).await? {
        Some(user) => {
            if !user.email_verified {
                // Nobody proved owning this address before: whoever set the password may not be its
                // owner (account pre-hijacking). The provider's proof wins; the password and sessions go.
                if user.password_hash.is_some() {
                    db.clear_user_password(&user.id).await?;
                    db.revoke_other_sessions(&user.id, None).await?;
                }
                db.mark_email_verified(&user.id).await?;
            }
            user
        }
        None => {
            accounts::admit_new_account(state, &email).await?;
            let at = now();
            let user = db
                .insert_user(&UserRow {
                    id: format!("usr_{}", uuid::Uuid::new_v4()),
                    email: email.clone(),
                    name: id
                        .name
                        .clone()
                        .filter(|n| !n.trim().is_empty())
                        .unwrap_or_else(|| email.split('@').next().unwrap_or("").to_string()),
                    password_hash: None,
                    email_verified: true,
                    created_at: at,
                    updated_at: at,
                })
                .await?;
            accounts::claim_if_fresh(state, &user).await?;
            user
        }
    };
    db.link_identity(provider.slug(), &id.subject, &user.id, Some(&email))
        .await?;
    Ok(user)
}
