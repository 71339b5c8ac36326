//! Roles and the one permission table (docs/people.md). Every permission check of a signed-in user, and
//! of an API key a user created, goes through [`Role::allows`].

use std::fmt;
use std::str::FromStr;

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

pub const ROLES: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

/// Organization-level permissions beyond the twelve API scopes.
pub const ORG_PERMISSIONS: [&str; 9] = [
    "applications:write",
    "models:read",
    "models:write",
    "usage:read",
    "api-keys:write",
    "members:write",
    "org:write",
    "org:delete",
    "org:read",
];

/// The permission table: for each permission (an API scope such as `runs:read`, or an organization
/// permission), the least role that holds it. Roles are ordered owner > admin > member > viewer.
const TABLE: [(&str, Role); 21] = [
    ("agents:read", Role::Viewer),
    ("runs:read", Role::Viewer),
    ("packages:read", Role::Viewer),
    ("schedules:read", Role::Viewer),
    ("webhooks:read", Role::Viewer),
    ("end-users:read", Role::Viewer),
    ("org:read", Role::Viewer),
    ("models:read", Role::Viewer),
    ("agents:run", Role::Member),
    ("runs:cancel", Role::Member),
    ("packages:write", Role::Member),
    ("schedules:write", Role::Member),
    ("webhooks:write", Role::Member),
    ("end-users:write", Role::Member),
    ("usage:read", Role::Member),
    ("applications:write", Role::Admin),
    ("api-keys:write", Role::Admin),
    ("members:write", Role::Admin),
    ("org:write", Role::Admin),
    ("models:write", Role::Admin),
    ("org:delete", Role::Owner),
];

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role holds `permission`. Unknown permissions are refused.
    pub fn allows(self, permission: &str) -> bool {
        TABLE
            .iter()
            .find(|(p, _)| *p == permission)
            .is_some_and(|(_, least)| self <= *least)
    }

    /// The permissions of this role, in table order.
    pub fn permissions(self) -> Vec<&'static str> {
        TABLE
            .iter()
            .filter(|(_, least)| self <= *least)
            .map(|(p, _)| *p)
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        ROLES.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        assert!(Role::Viewer.allows("runs:read"));
        assert!(!Role::Viewer.allows("agents:run"));
        assert!(Role::Member.allows("agents:run"));
        assert!(!Role::Member.allows("api-keys:write"));
        assert!(Role::Admin.allows("members:write"));
        assert!(!Role::Admin.allows("org:delete"));
        assert!(Role::Owner.allows("org:delete"));
        assert!(!Role::Owner.allows("no-such:permission"));
        assert_eq!(Role::Owner.permissions().len(), TABLE.len());
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn every_api_scope_is_in_the_table() {
        for s in crate::people::API_SCOPES {
            assert!(
                Role::Owner.allows(s),
                "{s} missing from the permission table"
            );
        }
    }
}
