//! The resolved caller of a domain operation: an API key, an admin token or a signed-in user, in one
//! organization, with the application it acts in and the end-user it impersonates. Each face resolves
//! its own credentials into a [`Principal`]; every permission check is decided here and in
//! [`crate::people::Role::allows`].

use super::DomainError;
use crate::infra::database::{ApplicationRow, EndUserRow};
use crate::people::Role;

/// The twelve API scopes (SPEC §7.3), defined by the people domain next to the role table.
pub const SCOPES: [&str; 12] = crate::people::API_SCOPES;

#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey {
        id: String,
        application_id: String,
        scopes: Vec<String>,
    },
    Admin {
        id: String,
    },
    /// A signed-in user (browser session cookie) acting in an organization with their role; also a
    /// schedule made by a user, firing with the user's current role.
    Session {
        user_id: String,
        /// The browser session, or `schedule:<id>` for a schedule firing as its user.
        session_id: String,
        role: Role,
    },
}

/// The resolved caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org_id: String,
    pub credential: Credential,
    /// The application context on app-scoped routes.
    pub application: Option<ApplicationRow>,
    /// The impersonated end-user (`Appstrate-User`), API keys only.
    pub end_user: Option<EndUserRow>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self.credential, Credential::Admin { .. })
    }

    /// `apikey:<id>` or `admin:<id>`: the rate-limit identity.
    pub fn identity(&self) -> String {
        match &self.credential {
            Credential::ApiKey { id, .. } => format!("apikey:{id}"),
            Credential::Admin { id } => format!("admin:{id}"),
            Credential::Session { user_id, .. } => format!("user:{user_id}"),
        }
    }

    pub fn api_key_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey { id, .. } => Some(id),
            Credential::Admin { .. } | Credential::Session { .. } => None,
        }
    }

    /// The signed-in user, for session credentials.
    pub fn user_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session { user_id, .. } => Some(user_id),
            _ => None,
        }
    }

    pub fn require_scope(&self, scope: &str) -> Result<(), DomainError> {
        match &self.credential {
            Credential::Admin { .. } => Ok(()),
            Credential::ApiKey { scopes, .. } if scopes.iter().any(|s| s == scope) => Ok(()),
            Credential::Session { role, .. } if role.allows(scope) => Ok(()),
            Credential::ApiKey { .. } | Credential::Session { .. } => Err(DomainError::forbidden(
                format!("Insufficient permissions: {scope} required"),
            )),
        }
    }

    /// An organization-level permission (`applications:write`, `api-keys:write`…): admin tokens hold
    /// them all, a signed-in user through their role (docs/people.md), API keys none.
    pub fn require_permission(&self, permission: &str) -> Result<(), DomainError> {
        match &self.credential {
            Credential::Admin { .. } => Ok(()),
            Credential::Session { role, .. } if role.allows(permission) => Ok(()),
            Credential::Session { role, .. } => Err(DomainError::forbidden(format!(
                "Insufficient permissions: {permission} required (your role is {role})"
            ))),
            Credential::ApiKey { .. } => Err(DomainError::forbidden(
                "This route requires an admin token or a signed-in administrator; API keys are not allowed",
            )),
        }
    }

    pub fn require_admin(&self) -> Result<(), DomainError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(DomainError::forbidden(
                "This route requires an admin token; API keys are not allowed",
            ))
        }
    }

    /// The application context; app-scoped routes always have one.
    pub fn app(&self) -> Result<&ApplicationRow, DomainError> {
        self.application.as_ref().ok_or_else(|| {
            DomainError::internal("application context missing on an app-scoped route")
        })
    }
}
