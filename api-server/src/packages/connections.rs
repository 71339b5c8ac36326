//! Integration connections (§9.3, §7.4, §17): credentials for one auth of an integration package, held
//! by the application or by one of its end-users, validated against the auth's credential schema and
//! stored encrypted. Responses carry field names only, never values.

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::types::Json;

use super::manifest::compile_schema;
use super::{visible_package, PackageId};
use crate::domain::{DomainError, FieldError, Principal};
use crate::infra::database::{now, ConnectionRow, DbError};
use crate::state::AppState;

/// A connection as returned by the API: `{object:"connection", packageId, authKey, endUserId, fields,
/// createdAt, updatedAt}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub object: &'static str,
    pub package_id: String,
    pub auth_key: String,
    pub end_user_id: Option<String>,
    /// Credential field names (never values).
    pub fields: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ConnectionRow> for ConnectionView {
    fn from(r: ConnectionRow) -> Self {
        Self {
            object: "connection",
            package_id: r.package_id,
            auth_key: r.auth_key,
            end_user_id: r.end_user_id,
            fields: r.fields.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn package_not_found(id: &str) -> DomainError {
    DomainError::not_found(format!("Package {id} not found"))
}

/// The `auths.<authKey>` object of the latest version of a visible package; 404 otherwise.
async fn auth_definition(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
) -> Result<Value, DomainError> {
    let id_s = id.to_string();
    let pkg = visible_package(state, auth, id)
        .await?
        .ok_or_else(|| package_not_found(&id_s))?;
    let version = state
        .infra
        .db
        .get_package_version(&pkg.id, &pkg.latest_version)
        .await?
        .ok_or_else(|| package_not_found(&id_s))?;
    version
        .manifest
        .0
        .get("auths")
        .and_then(|a| a.get(auth_key))
        .filter(|a| a.is_object())
        .cloned()
        .ok_or_else(|| DomainError::not_found(format!("{id_s} has no auth {auth_key:?}")))
}

/// JSON Schema errors as field errors under `prefix`. Messages never contain instance values.
pub(crate) fn schema_field_errors(
    validator: &jsonschema::Validator,
    instance: &Value,
    prefix: &str,
) -> Vec<FieldError> {
    use jsonschema::error::ValidationErrorKind as K;
    let mut out = Vec::new();
    for e in validator.iter_errors(instance) {
        let pointer = e.instance_path().as_str().to_string();
        let mut base = prefix.to_string();
        for seg in pointer.split('/').skip(1) {
            let seg = seg.replace("~1", "/").replace("~0", "~");
            base.push('.');
            base.push_str(&seg);
        }
        match e.kind() {
            K::Required { property } => {
                let p = property
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| property.to_string());
                out.push(FieldError::new(
                    format!("{base}.{p}"),
                    "required",
                    "is required",
                ));
            }
            K::AdditionalProperties { unexpected } => {
                for p in unexpected {
                    out.push(FieldError::new(
                        format!("{base}.{p}"),
                        "unknown_field",
                        "is not a known field",
                    ));
                }
            }
            kind => {
                let code = match kind.keyword() {
                    "type" => "invalid_type",
                    "format" | "pattern" => "invalid_format",
                    "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum"
                    | "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
                    | "maxProperties" | "multipleOf" => "out_of_range",
                    _ => "invalid_value",
                };
                out.push(FieldError::new(base, code, e.masked().to_string()));
            }
        }
    }
    out
}

/// Validates a `{credentials:{…}}` body against the auth definition.
fn validate_credentials(auth_def: &Value, body: &Value) -> Result<Map<String, Value>, DomainError> {
    let obj = body.as_object().ok_or_else(|| {
        DomainError::validation(vec![FieldError::new(
            "body",
            "invalid_type",
            "must be an object",
        )])
    })?;
    let mut errors = Vec::new();
    for k in obj.keys() {
        if k != "credentials" {
            errors.push(FieldError::new(
                k.clone(),
                "unknown_field",
                "is not a known field",
            ));
        }
    }
    let creds = match obj.get("credentials") {
        None => {
            errors.push(FieldError::new("credentials", "required", "is required"));
            None
        }
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "credentials",
                "invalid_type",
                "must be an object",
            ));
            None
        }
    };
    if let Some(creds) = &creds {
        let instance = Value::Object(creds.clone());
        if let Some(schema) = auth_def.pointer("/credentials/schema") {
            let validator = compile_schema(schema).map_err(DomainError::internal)?;
            errors.extend(schema_field_errors(&validator, &instance, "credentials"));
        }
        if auth_def.get("type").and_then(Value::as_str) == Some("oauth2") {
            match creds.get("access_token") {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(_) => errors.push(FieldError::new(
                    "credentials.access_token",
                    "invalid_type",
                    "must be a non-empty string",
                )),
                None if !errors.iter().any(|e| e.field == "credentials.access_token") => errors
                    .push(FieldError::new(
                        "credentials.access_token",
                        "required",
                        "oauth2 connections need an access_token",
                    )),
                None => {}
            }
        }
        if creds.is_empty() && errors.is_empty() {
            errors.push(FieldError::new(
                "credentials",
                "required",
                "at least one credential field is required",
            ));
        }
    }
    if errors.is_empty() {
        Ok(creds.unwrap_or_default())
    } else {
        Err(DomainError::validation(errors))
    }
}

/// `PUT …/connections/{authKey}`: stores (or replaces) the actor's connection.
pub async fn put_connection(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
    body: &Value,
) -> Result<ConnectionView, DomainError> {
    let app = auth.app()?;
    let auth_def = auth_definition(state, auth, id, auth_key).await?;
    let creds = validate_credentials(&auth_def, body)?;
    let mut fields: Vec<String> = creds.keys().cloned().collect();
    fields.sort();
    let at = now();
    let row = ConnectionRow {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        end_user_id: auth.end_user.as_ref().map(|e| e.id.clone()),
        package_id: id.to_string(),
        auth_key: auth_key.to_string(),
        credentials_encrypted: state.keyring.encrypt_json(&Value::Object(creds)),
        fields: Json(fields),
        created_at: at,
        updated_at: at,
    };
    let saved = state.infra.db.upsert_connection(&row).await?;
    // Pasted credentials replace an OAuth grant: nothing to refresh any more.
    state.infra.db.clear_connection_oauth(&saved.id).await?;
    Ok(saved.into())
}

fn connection_not_found(id: &PackageId, auth_key: &str) -> DomainError {
    DomainError::not_found(format!("No connection for {id} auth {auth_key:?}"))
}

/// `GET …/connections/{authKey}`: the actor's own connection (the end-user's when impersonating).
pub async fn connection_for_actor(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
) -> Result<ConnectionView, DomainError> {
    let app = auth.app()?;
    auth_definition(state, auth, id, auth_key).await?;
    let eu = auth.end_user.as_ref().map(|e| e.id.as_str());
    state
        .infra
        .db
        .get_connection(&app.id, eu, &id.to_string(), auth_key)
        .await?
        .map(Into::into)
        .ok_or_else(|| connection_not_found(id, auth_key))
}

/// `DELETE …/connections/{authKey}`.
pub async fn delete_connection(
    state: &AppState,
    auth: &Principal,
    id: &PackageId,
    auth_key: &str,
) -> Result<(), DomainError> {
    let app = auth.app()?;
    let eu = auth.end_user.as_ref().map(|e| e.id.as_str());
    // Disconnecting an OAuth connection revokes the grant at the provider when it offers revocation.
    if let Some(conn) = state
        .infra
        .db
        .get_connection(&app.id, eu, &id.to_string(), auth_key)
        .await?
    {
        crate::integrations::status::revoke_at_provider(state, &conn).await;
    }
    state
        .infra
        .db
        .delete_connection(&app.id, eu, &id.to_string(), auth_key)
        .await
        .map_err(|e| match e {
            DbError::NotFound => connection_not_found(id, auth_key),
            other => other.into(),
        })
}

/// The connection a run uses for (integration, auth key): the end-user's when the actor is one and it
/// exists, else the application's.
pub(crate) async fn run_connection(
    state: &AppState,
    auth: &Principal,
    package_id: &str,
    auth_key: &str,
) -> Result<Option<ConnectionRow>, DomainError> {
    let app = auth.app()?;
    let db = &state.infra.db;
    if let Some(eu) = &auth.end_user {
        if let Some(c) = db
            .get_connection(&app.id, Some(&eu.id), package_id, auth_key)
            .await?
        {
            return Ok(Some(c));
        }
    }
    Ok(db
        .get_connection(&app.id, None, package_id, auth_key)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stripe() -> Value {
        json!({"type": "api_key", "credentials": {"schema": {"type": "object",
            "properties": {"api_key": {"type": "string"}}, "required": ["api_key"]}}})
    }

    fn errs(r: Result<Map<String, Value>, DomainError>) -> Vec<(String, &'static str)> {
        r.unwrap_err()
            .errors
            .unwrap()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn credentials_against_schema() {
        assert!(
            validate_credentials(&stripe(), &json!({"credentials": {"api_key": "sk_1"}})).is_ok()
        );
        assert_eq!(
            errs(validate_credentials(&stripe(), &json!({"credentials": {}}))),
            vec![("credentials.api_key".into(), "required")]
        );
        let e = validate_credentials(&stripe(), &json!({"credentials": {"api_key": 12345}}))
            .unwrap_err();
        assert!(!e.detail.contains("12345"), "{}", e.detail);
        assert_eq!(e.errors.unwrap()[0].code, "invalid_type");
        assert_eq!(
            errs(validate_credentials(&stripe(), &json!({"creds": {}}))),
            vec![
                ("creds".into(), "unknown_field"),
                ("credentials".into(), "required")
            ]
        );
    }

    #[test]
    fn oauth2_needs_access_token() {
        let oauth = json!({"type": "oauth2"});
        assert_eq!(
            errs(validate_credentials(
                &oauth,
                &json!({"credentials": {"refresh_token": "r"}})
            )),
            vec![("credentials.access_token".into(), "required")]
        );
        assert!(
            validate_credentials(&oauth, &json!({"credentials": {"access_token": "t"}})).is_ok()
        );
    }
}
