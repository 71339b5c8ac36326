//! The people settings (`AUTH_*`, `SMTP_*`), read with the rest of the configuration at boot.

use std::collections::HashMap;

use super::password::Argon2Params;
use crate::config::{ConfigError, Secret};

/// An OAuth2/OIDC client registered with a provider.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Secret<String>,
}

/// A generic OpenID Connect provider found by discovery at `issuer`.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    pub issuer: String,
    pub client: ClientCredentials,
}

/// GitHub's OAuth2 endpoints; overridable for GitHub Enterprise (and the test fake).
#[derive(Debug, Clone)]
pub struct GithubProvider {
    pub client: ClientCredentials,
    pub authorize_url: String,
    pub token_url: String,
    pub api_url: String,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    pub from: String,
    /// `starttls` (default), `tls` or `none` (a local relay).
    pub security: SmtpSecurity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    StartTls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct PeopleConfig {
    pub session_ttl_seconds: u64,
    pub invitation_ttl_seconds: u64,
    /// `AUTH_DISABLE_SIGNUP=true`: only invited people (and the first user of a fresh install) sign up.
    pub signup_disabled: bool,
    /// `AUTH_ALLOWED_SIGNUP_DOMAINS`: when set, open sign-up is limited to these email domains.
    pub allowed_signup_domains: Vec<String>,
    pub argon2: Argon2Params,
    pub google: Option<ClientCredentials>,
    pub github: Option<GithubProvider>,
    pub oidc: Option<OidcProvider>,
    pub smtp: Option<SmtpConfig>,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        Self {
            session_ttl_seconds: 7 * 24 * 3600,
            invitation_ttl_seconds: 7 * 24 * 3600,
            signup_disabled: false,
            allowed_signup_domains: Vec::new(),
            argon2: Argon2Params::default(),
            google: None,
            github: None,
            oidc: None,
            smtp: None,
        }
    }
}

fn get<'a>(env: &'a HashMap<String, String>, var: &str) -> Option<&'a str> {
    env.get(var).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn fail(errors: &mut Vec<ConfigError>, var: &str, reason: impl Into<String>) {
    errors.push(ConfigError {
        var: var.into(),
        reason: reason.into(),
    });
}

fn positive(
    env: &HashMap<String, String>,
    errors: &mut Vec<ConfigError>,
    var: &str,
    d: u64,
) -> u64 {
    match get(env, var) {
        None => d,
        Some(raw) => match raw.parse::<u64>() {
            Ok(v) if v > 0 => v,
            _ => {
                fail(
                    errors,
                    var,
                    format!("must be a positive integer, got {raw:?}"),
                );
                d
            }
        },
    }
}

fn boolean(env: &HashMap<String, String>, errors: &mut Vec<ConfigError>, var: &str) -> bool {
    match get(env, var) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(raw) => {
            fail(errors, var, format!("must be true or false, got {raw:?}"));
            false
        }
    }
}

/// Both halves of a client, or neither.
fn client(
    env: &HashMap<String, String>,
    errors: &mut Vec<ConfigError>,
    prefix: &str,
) -> Option<ClientCredentials> {
    let id_var = format!("{prefix}_CLIENT_ID");
    let secret_var = format!("{prefix}_CLIENT_SECRET");
    match (get(env, &id_var), get(env, &secret_var)) {
        (None, None) => None,
        (Some(id), Some(secret)) => Some(ClientCredentials {
            client_id: id.to_string(),
            client_secret: Secret::new(secret.to_string()),
        }),
        (Some(_), None) => {
            fail(
                errors,
                &secret_var,
                format!("is required when {id_var} is set"),
            );
            None
        }
        (None, Some(_)) => {
            fail(
                errors,
                &id_var,
                format!("is required when {secret_var} is set"),
            );
            None
        }
    }
}

fn http_url(errors: &mut Vec<ConfigError>, var: &str, raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => raw.trim_end_matches('/').to_string(),
        _ => {
            fail(errors, var, format!("must be an http(s) URL, got {raw:?}"));
            String::new()
        }
    }
}

impl PeopleConfig {
    pub fn from_map(env: &HashMap<String, String>, errors: &mut Vec<ConfigError>) -> PeopleConfig {
        let d = PeopleConfig::default();
        let session_ttl_seconds = positive(
            env,
            errors,
            "AUTH_SESSION_TTL_SECONDS",
            d.session_ttl_seconds,
        );
        let invitation_ttl_seconds = positive(
            env,
            errors,
            "AUTH_INVITATION_TTL_SECONDS",
            d.invitation_ttl_seconds,
        );
        let signup_disabled = boolean(env, errors, "AUTH_DISABLE_SIGNUP");
        let allowed_signup_domains = get(env, "AUTH_ALLOWED_SIGNUP_DOMAINS")
            .map(|raw| {
                raw.split(',')
                    .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let argon2 = Argon2Params {
            memory_kib: positive(
                env,
                errors,
                "AUTH_ARGON2_MEMORY_KIB",
                d.argon2.memory_kib as u64,
            )
            .min(u32::MAX as u64) as u32,
            iterations: positive(
                env,
                errors,
                "AUTH_ARGON2_ITERATIONS",
                d.argon2.iterations as u64,
            )
            .min(u32::MAX as u64) as u32,
            parallelism: positive(
                env,
                errors,
                "AUTH_ARGON2_PARALLELISM",
                d.argon2.parallelism as u64,
            )
            .min(u32::MAX as u64) as u32,
        };
        if let Err(e) = argon2.validate() {
            fail(
                errors,
                "AUTH_ARGON2_MEMORY_KIB",
                format!(
                    "invalid argon2id parameters: {e} (memory must be at least 8 KiB per lane)"
                ),
            );
        }
        let google = client(env, errors, "AUTH_GOOGLE");
        let github = client(env, errors, "AUTH_GITHUB").map(|client| GithubProvider {
            client,
            authorize_url: http_url(
                errors,
                "AUTH_GITHUB_AUTHORIZE_URL",
                get(env, "AUTH_GITHUB_AUTHORIZE_URL")
                    .unwrap_or("https://github.com/login/oauth/authorize"),
            ),
            token_url: http_url(
                errors,
                "AUTH_GITHUB_TOKEN_URL",
                get(env, "AUTH_GITHUB_TOKEN_URL")
                    .unwrap_or("https://github.com/login/oauth/access_token"),
            ),
            api_url: http_url(
                errors,
                "AUTH_GITHUB_API_URL",
                get(env, "AUTH_GITHUB_API_URL").unwrap_or("https://api.github.com"),
            ),
        });
        let oidc_client = client(env, errors, "AUTH_OIDC");
        let oidc = match (get(env, "AUTH_OIDC_ISSUER"), oidc_client) {
            (None, None) => None,
            (Some(issuer), Some(client)) => Some(OidcProvider {
                issuer: http_url(errors, "AUTH_OIDC_ISSUER", issuer),
                client,
            }),
            (None, Some(_)) => {
                fail(errors, "AUTH_OIDC_ISSUER", "is required when AUTH_OIDC_CLIENT_ID is set (the issuer URL, e.g. https://id.example.com/realms/main)");
                None
            }
            (Some(_), None) => {
                fail(
                    errors,
                    "AUTH_OIDC_CLIENT_ID",
                    "is required when AUTH_OIDC_ISSUER is set",
                );
                None
            }
        };
        let smtp = get(env, "SMTP_HOST").map(|host| {
            let port = match get(env, "SMTP_PORT") {
                None => 587,
                Some(raw) => raw.parse::<u16>().unwrap_or_else(|_| {
                    fail(errors, "SMTP_PORT", format!("must be a port number, got {raw:?}"));
                    587
                }),
            };
            let security = match get(env, "SMTP_SECURITY") {
                None | Some("starttls") => SmtpSecurity::StartTls,
                Some("tls") => SmtpSecurity::Tls,
                Some("none") => SmtpSecurity::None,
                Some(raw) => {
                    fail(errors, "SMTP_SECURITY", format!("must be starttls, tls or none, got {raw:?}"));
                    SmtpSecurity::StartTls
                }
            };
            let from = match get(env, "SMTP_FROM") {
                Some(f) if f.contains('@') => f.to_string(),
                _ => {
                    fail(errors, "SMTP_FROM", "is required with SMTP_HOST (the sender, e.g. Appstrate <noreply@example.com>)");
                    String::new()
                }
            };
            SmtpConfig {
                host: host.to_string(),
                port,
                username: get(env, "SMTP_USERNAME").map(str::to_string),
                password: get(env, "SMTP_PASSWORD").map(|p| Secret::new(p.to_string())),
                from,
                security,
            }
        });
        PeopleConfig {
            session_ttl_seconds,
            invitation_ttl_seconds,
            signup_disabled,
            allowed_signup_domains,
            argon2,
            google,
            github,
            oidc,
            smtp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (PeopleConfig, Vec<String>) {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut errors = Vec::new();
        let c = PeopleConfig::from_map(&env, &mut errors);
        (c, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn defaults_and_errors() {
        let (c, e) = parse(&[]);
        assert!(e.is_empty());
        assert_eq!(c.session_ttl_seconds, 604_800);
        assert!(c.google.is_none() && c.smtp.is_none());
        let (_, e) = parse(&[("AUTH_GOOGLE_CLIENT_ID", "x")]);
        assert!(e[0].contains("AUTH_GOOGLE_CLIENT_SECRET"), "{e:?}");
        let (_, e) = parse(&[
            ("AUTH_OIDC_CLIENT_ID", "x"),
            ("AUTH_OIDC_CLIENT_SECRET", "y"),
        ]);
        assert!(e[0].contains("AUTH_OIDC_ISSUER"), "{e:?}");
        let (_, e) = parse(&[("AUTH_DISABLE_SIGNUP", "yes")]);
        assert!(e[0].contains("AUTH_DISABLE_SIGNUP"), "{e:?}");
        let (_, e) = parse(&[("SMTP_HOST", "mail")]);
        assert!(e[0].contains("SMTP_FROM"), "{e:?}");
        let (c, e) = parse(&[("AUTH_ALLOWED_SIGNUP_DOMAINS", "Example.com, @corp.io")]);
        assert!(e.is_empty());
        assert_eq!(c.allowed_signup_domains, ["example.com", "corp.io"]);
    }
}
