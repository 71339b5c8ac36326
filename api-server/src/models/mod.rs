//! Models and providers per organization (docs/models.md): provider credentials (the key encrypted with
//! the connection keyring, never returned), the organization's models with their prices, the default
//! model of the organization and of each application, the model of each agent, the resolution of a
//! run's model, and the usage ledger. The domain speaks no HTTP: it takes plain values and returns
//! [`ModelsError`]; the JSON face maps the errors to problem documents.

mod catalog;
mod credentials;
pub mod provider;
pub mod resolve;
pub mod usage;

use serde::Serialize;
use sidecar::ssrf::{self, Policy, SsrfError};

use crate::config::{Config, LlmApi};
use crate::infra::database::DbError;

pub use catalog::*;
pub use credentials::{
    create_credential, delete_credential, list_credentials, refresh_models, test_credential,
    test_inline, update_credential, CredentialPatch, CredentialView, NewCredential,
};
pub(crate) use credentials::{credential_api, credential_key};
pub use provider::TestResult;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// A bad input field: 400 `validation_failed` naming the field.
    #[error("{field}: {message}")]
    Invalid {
        field: String,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// No usable model for a run: 400 `model_not_configured`, saying what to set.
    #[error("{0}")]
    NotConfigured(String),
    /// The provider refused or could not be reached: 502.
    #[error("{message}")]
    Provider { code: String, message: String },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How the faces see a models error.
impl From<ModelsError> for crate::domain::DomainError {
    fn from(e: ModelsError) -> Self {
        use crate::domain::{DomainError, ErrorKind, FieldError};
        match e {
            ModelsError::Invalid {
                field,
                code,
                message,
            } => DomainError::validation(vec![FieldError::new(field, code, message)]),
            ModelsError::NotFound(m) => DomainError::not_found(m),
            ModelsError::Conflict { code, message } => DomainError::conflict(code, message),
            ModelsError::NotConfigured(m) => DomainError::bad_request("model_not_configured", m),
            ModelsError::Provider { code, message } => {
                DomainError::new(ErrorKind::Upstream, "provider_error", message).with_param(&code)
            }
            ModelsError::Internal(m) => DomainError::internal(m),
            ModelsError::Db(e) => e.into(),
        }
    }
}

pub(crate) fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> ModelsError {
    ModelsError::Invalid {
        field: field.to_string(),
        code,
        message: message.into(),
    }
}

/// A kind of provider: its API shape and default endpoint.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderKind {
    pub provider_id: &'static str,
    pub display_name: &'static str,
    /// `openai-completions` or `anthropic-messages`.
    pub api: &'static str,
    /// `None`: the base URL is required.
    pub default_base_url: Option<&'static str>,
    /// Whether the provider lists its models (`GET /models`).
    pub lists_models: bool,
}

pub const PROVIDERS: [ProviderKind; 3] = [
    ProviderKind {
        provider_id: "openai",
        display_name: "OpenAI",
        api: "openai-completions",
        default_base_url: Some("https://api.openai.com/v1"),
        lists_models: true,
    },
    ProviderKind {
        provider_id: "anthropic",
        display_name: "Anthropic",
        api: "anthropic-messages",
        default_base_url: Some("https://api.anthropic.com"),
        lists_models: true,
    },
    ProviderKind {
        provider_id: "openai-compatible",
        display_name: "OpenAI-compatible endpoint",
        api: "openai-completions",
        default_base_url: None,
        lists_models: true,
    },
];

pub fn provider_kind(id: &str) -> Option<&'static ProviderKind> {
    PROVIDERS.iter().find(|p| p.provider_id == id)
}

pub(crate) fn api_of(kind: &ProviderKind) -> LlmApi {
    if kind.api == "anthropic-messages" {
        LlmApi::AnthropicMessages
    } else {
        LlmApi::OpenAiCompletions
    }
}

/// The SSRF policy of provider calls: the `EGRESS_ALLOW_INTERNAL_HOSTS` exemptions, as for integrations.
pub fn policy(config: &Config) -> Policy {
    Policy::with_exemptions(config.egress_allow_internal_hosts.iter())
}

/// A base URL: absolute `http(s)`, without credentials, query or fragment, whose host passes the
/// literal SSRF check (names are checked again, resolved and pinned, at every call).
pub(crate) fn check_base_url(raw: &str, config: &Config) -> Result<String, ModelsError> {
    let field = "baseUrl";
    if raw.len() > 2048 {
        return Err(invalid(
            field,
            "out_of_range",
            "must be at most 2048 characters",
        ));
    }
    let url = ssrf::parse_url(raw).map_err(|e| {
        invalid(
            field,
            "invalid_format",
            format!("must be an absolute http(s) URL ({e})"),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            field,
            "invalid_value",
            "must not carry credentials; put the key in apiKey",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            field,
            "invalid_value",
            "must not have a query or fragment",
        ));
    }
    ssrf::check_url_literal(&url, &policy(config)).map_err(|e| match e {
        SsrfError::BlockedName(_) | SsrfError::BlockedAddress { .. } => invalid(
            field,
            "blocked_address",
            format!(
                "points at a private, loopback or otherwise internal address ({e}); use a public \
                 endpoint, or list the host in EGRESS_ALLOW_INTERNAL_HOSTS for a trusted internal one"
            ),
        ),
        other => invalid(field, "invalid_value", other.to_string()),
    })?;
    Ok(raw.trim_end_matches('/').to_string())
}

pub(crate) fn check_api_key(key: &str) -> Result<(), ModelsError> {
    if key.is_empty() || key.len() > 4096 {
        return Err(invalid("apiKey", "out_of_range", "must be 1 to 4096 bytes"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "apiKey",
            "invalid_format",
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn label_taken(what: &str, label: &str) -> ModelsError {
    ModelsError::Conflict {
        code: "label_taken",
        message: format!(
            "The organization already has a {what} labelled {label:?}; choose another label"
        ),
    }
}
