//! Domain errors: a kind (what happened, in the caller's terms), a stable machine code, a message that
//! says what to fix, and optionally the field(s) at fault. No status codes and no headers: the faces
//! decide how each kind is shown.

use serde::Serialize;

use crate::infra::database::DbError;

/// One field at fault in a request body or manifest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// What kind of failure an error is. The JSON face maps each to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or invalid (400).
    Invalid,
    /// No valid credential (401).
    Unauthenticated,
    /// The caller may not do this (403).
    Forbidden,
    /// Nothing by that id, or nothing the caller may see (404).
    NotFound,
    /// The state of the resource forbids it (409).
    Conflict,
    /// The resource existed and is gone for good (410).
    Gone,
    /// A precondition on other resources is not met, e.g. a missing connection (412).
    PreconditionFailed,
    /// The input is larger than allowed (413).
    TooLarge,
    /// Well-formed input that cannot be processed (422).
    Unprocessable,
    /// Too many requests; `retry_after` says when to come back (429).
    RateLimited,
    /// A dependency is unavailable for now (503).
    Unavailable,
    /// An upstream service (e.g. a model provider) answered with an error (502).
    Upstream,
    /// A bug or an unexpected failure; details are logged, never shown (500).
    Internal,
}

/// An error of the domain, carrying the documented machine code.
#[derive(Debug, Clone)]
pub struct DomainError {
    pub kind: ErrorKind,
    pub code: String,
    pub detail: String,
    pub param: Option<String>,
    pub errors: Option<Vec<FieldError>>,
    /// Seconds after which a retry may succeed (rate limits, temporary unavailability).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for DomainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for DomainError {}

impl DomainError {
    pub fn new(kind: ErrorKind, code: &str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.to_string(),
            detail: detail.into(),
            param: None,
            errors: None,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = code.to_string();
        self
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, detail)
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::bad_request("invalid_request", detail)
    }

    /// Every field at fault, as one `validation_failed`.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = Self::bad_request("validation_failed", detail);
        e.errors = Some(errors);
        e
    }

    pub fn unauthorized(detail: &str) -> Self {
        Self::new(ErrorKind::Unauthenticated, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", detail)
    }

    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, detail)
    }

    /// An unexpected failure: the cause is logged here, the caller sees a generic message.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal_error",
            "An unexpected error occurred.",
        )
    }

    pub fn unavailable(code: &str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, detail)
    }
}

impl From<DbError> for DomainError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => DomainError::not_found("Resource not found"),
            DbError::UnknownCursor => DomainError::invalid_request("Unknown startingAfter cursor")
                .with_param("startingAfter"),
            DbError::Conflict(c) => DomainError::conflict("conflict", format!("Conflict on {c}")),
            other => DomainError::internal(other),
        }
    }
}

impl From<crate::people::PeopleError> for DomainError {
    fn from(e: crate::people::PeopleError) -> Self {
        use crate::people::PeopleError as P;
        let detail = e.to_string();
        match e {
            P::InvalidCredentials => {
                DomainError::unauthorized(&detail).with_code("invalid_credentials")
            }
            P::EmailTaken => DomainError::conflict("email_taken", detail).with_param("email"),
            P::SignUpDisabled => DomainError::forbidden(detail).with_code("sign_up_disabled"),
            P::EmailDomainNotAllowed(_) => DomainError::forbidden(detail)
                .with_code("email_domain_not_allowed")
                .with_param("email"),
            P::Invalid {
                field,
                code,
                message,
            } => DomainError::validation(vec![FieldError::new(field, code, message)]),
            P::NotFound(_) => DomainError::not_found(detail),
            P::Forbidden(_) => DomainError::forbidden(detail),
            P::LastOwner => DomainError::conflict("last_owner", detail),
            P::InvitationExpired => DomainError::new(ErrorKind::Gone, "invitation_expired", detail),
            P::InvitationUsed => DomainError::conflict("invitation_used", detail),
            P::InvitationWrongAccount => {
                DomainError::forbidden(detail).with_code("invitation_wrong_account")
            }
            P::EmailUnavailable => DomainError::unavailable("email_unavailable", detail),
            P::Db(db) => db.into(),
            P::Internal(m) => DomainError::internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_joins_every_field_into_the_detail() {
        let e = DomainError::validation(vec![
            FieldError::new("name", "required", "is required"),
            FieldError::new("cron", "invalid", "is not a cron expression"),
        ]);
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(e.code, "validation_failed");
        assert_eq!(
            e.detail,
            "name: is required; cron: is not a cron expression"
        );
        assert_eq!(e.errors.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = DomainError::internal("connection reset by peer at 10.0.0.7");
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(!e.detail.contains("10.0.0.7"));
    }
}
