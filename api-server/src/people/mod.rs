//! People: accounts, browser sessions, organizations, members, roles and invitations (docs/people.md).
//! The domain speaks no HTTP: it takes plain values and returns [`PeopleError`]; the JSON face maps the
//! errors to problem documents.

pub mod accounts;
pub mod api_keys;
pub mod config;
pub mod mail;
pub mod orgs;
pub mod password;
pub mod roles;
pub mod session;
pub mod sso;

pub use roles::Role;

use crate::infra::database::DbError;

/// The twelve API scopes (SPEC §7.3).
pub const API_SCOPES: [&str; 12] = [
    "agents:read",
    "agents:run",
    "runs:read",
    "runs:cancel",
    "packages:read",
    "packages:write",
    "schedules:read",
    "schedules:write",
    "webhooks:read",
    "webhooks:write",
    "end-users:read",
    "end-users:write",
];

/// Who is asking, as far as the request can tell (for session rows and rate limits).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    /// Unknown email or wrong password: one answer for both.
    #[error("Invalid email or password")]
    InvalidCredentials,
    #[error("An account with this email already exists")]
    EmailTaken,
    #[error("Sign-up is closed on this instance; ask an administrator for an invitation")]
    SignUpDisabled,
    #[error("Sign-up is limited to addresses at {0}; ask an administrator for an invitation")]
    EmailDomainNotAllowed(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("The organization must keep at least one owner; make another member owner first")]
    LastOwner,
    #[error("This invitation has expired; ask for a new one")]
    InvitationExpired,
    #[error("This invitation has already been used or was withdrawn")]
    InvitationUsed,
    #[error("This invitation was sent to another email address; sign in with that account")]
    InvitationWrongAccount,
    #[error("Email delivery is not configured on this instance (set SMTP_HOST); ask an administrator to reset your password")]
    EmailUnavailable,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

pub type PeopleResult<T> = Result<T, PeopleError>;

impl PeopleError {
    pub fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        PeopleError::Invalid {
            field,
            code,
            message: message.into(),
        }
    }
}
