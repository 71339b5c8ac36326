//! Integrations that stay connected (docs/connections.md): OAuth clients per application, the OAuth2
//! connect flow (authorization URL with state and PKCE, callback, code exchange, identity), token refresh
//! before expiry and on the sidecar's 401 (single-flight across instances), and the connection lifecycle
//! (`connected`, `expiring`, `needs_reconnect`, `revoked`).
//!
//! Tokens live in the connection's encrypted credentials (`access_token`, `refresh_token`), so the
//! sidecar's `delivery.http` rendering is the same as for pasted credentials; the OAuth side (client,
//! expiry, scopes, account, status, refresh lease) is in `connection_oauth`.

pub mod clients;
pub mod connect;
pub mod overview;
pub mod provider;
pub mod refresh;
pub mod session;
pub mod spec;
pub mod status;

use serde_json::Value;

use crate::domain::{DomainError, ErrorKind, FieldError};
use crate::packages::PackageId;
use crate::state::AppState;
pub use spec::OAuthSpec;

/// The redirect URI of every integration: `${APP_URL}/api/integrations/callback`.
pub fn callback_url(app_url: &str) -> String {
    format!(
        "{}/api/integrations/callback",
        app_url.trim_end_matches('/')
    )
}

/// The `auths.<auth_key>` object of the latest version of `package_id` visible to the application.
pub(crate) async fn auth_def_for_app(
    state: &AppState,
    application_id: &str,
    package_id: &str,
    auth_key: &str,
) -> Result<Value, DomainError> {
    let db = &state.infra.db;
    let missing = || DomainError::not_found(format!("Integration {package_id} not found"));
    let pkg = db
        .find_visible_package(application_id, package_id)
        .await?
        .filter(|p| p.kind == "integration")
        .ok_or_else(missing)?;
    let version = db
        .get_package_version(&pkg.id, &pkg.latest_version)
        .await?
        .ok_or_else(missing)?;
    version
        .manifest
        .0
        .get("auths")
        .and_then(|a| a.get(auth_key))
        .filter(|a| a.is_object())
        .cloned()
        .ok_or_else(|| DomainError::not_found(format!("{package_id} has no auth {auth_key:?}")))
}

/// The parsed `oauth2` auth; 400 `not_oauth2` for another type, 422 `unsupported_oauth` (naming the
/// fields) for one the flow cannot serve.
pub(crate) fn oauth_spec(
    auth_def: &Value,
    package_id: &str,
    auth_key: &str,
) -> Result<OAuthSpec, DomainError> {
    if auth_def.get("type").and_then(Value::as_str) != Some("oauth2") {
        return Err(DomainError::bad_request(
            "not_oauth2",
            format!(
                "{package_id} auth {auth_key} is not an oauth2 auth; store its credentials with \
                 PUT /api/packages/{package_id}/connections/{auth_key}"
            ),
        ));
    }
    OAuthSpec::parse(auth_def).map_err(|problems| {
        let errors: Vec<FieldError> = problems
            .into_iter()
            .map(|p| FieldError::new(format!("auths.{auth_key}.{}", p.field), p.code, p.message))
            .collect();
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = DomainError::new(
            ErrorKind::Unprocessable,
            "unsupported_oauth",
            format!("{package_id} auth {auth_key} cannot be connected: {detail}"),
        );
        e.errors = Some(errors);
        e
    })
}

/// Parses `packageId` from a path (`@scope/name`, `%40scope%2Fname` decoded by the router).
pub fn parse_package_id(raw: &str) -> Result<PackageId, DomainError> {
    PackageId::parse(raw).ok_or_else(|| {
        DomainError::not_found(format!(
            "Integration {raw} not found (expected @scope/name, URL-encoded as %40scope%2Fname)"
        ))
    })
}
