//! `/api/end-users*`: the people an application acts for.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::types::Json as DbJson;
use utoipa::ToSchema;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::list::{paged_response, ListQuery};
use crate::infra::database::{now, DbError, EndUserFilter, EndUserPatch, EndUserRow};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndUserDto {
    id: String,
    object: &'static str,
    application_id: String,
    name: Option<String>,
    email: Option<String>,
    external_id: Option<String>,
    #[schema(value_type = Object)]
    metadata: Value,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<EndUserRow> for EndUserDto {
    fn from(r: EndUserRow) -> Self {
        Self {
            id: r.id,
            object: "end_user",
            application_id: r.application_id,
            name: r.name,
            email: r.email,
            external_id: r.external_id,
            metadata: r.metadata.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace())
        && s.len() <= 320
}

/// The end-user fields shared by create (absent = unset) and update (null = clear).
struct Parsed {
    name: Option<Option<String>>,
    email: Option<Option<String>>,
    external_id: Option<Option<String>>,
    metadata: Option<Value>,
}

fn parse(body: &Value) -> Result<Parsed, ApiError> {
    let mut f = Fields::new(body, "");
    let name = f.nullable_string("name", 200);
    let email = f.nullable_string("email", 320);
    if let Some(Some(e)) = &email {
        if !valid_email(e) {
            f.error("email", "invalid_format", "must be an email address");
        }
    }
    let external_id = f.nullable_string("externalId", 255);
    let metadata = match f.raw("metadata") {
        None => None,
        Some(Value::Null) => Some(Value::Object(Map::new())),
        Some(Value::Object(map)) => {
            if map.len() > 50 {
                f.error("metadata", "out_of_range", "at most 50 keys");
            }
            for (k, v) in map {
                let n = k.chars().count();
                if !(1..=40).contains(&n) {
                    f.error(
                        &format!("metadata.{k}"),
                        "out_of_range",
                        "keys must be 1 to 40 characters",
                    );
                }
                let ok = match v {
                    Value::String(s) => s.chars().count() <= 500,
                    Value::Number(_) | Value::Bool(_) | Value::Null => true,
                    _ => false,
                };
                if !ok {
                    f.error(
                        &format!("metadata.{k}"),
                        "invalid_value",
                        "values must be a string of at most 500 characters, a number, a boolean or null",
                    );
                }
            }
            Some(Value::Object(map.clone()))
        }
        Some(_) => {
            f.error("metadata", "invalid_type", "must be an object");
            None
        }
    };
    f.finish()?;
    Ok(Parsed {
        name,
        email,
        external_id,
        metadata,
    })
}

fn map_conflict(e: DbError) -> ApiError {
    match e {
        DbError::Conflict(c) if c.contains("external_id") => ApiError::conflict(
            "external_id_taken",
            "Another end-user of this application has this externalId",
        ),
        DbError::Conflict(c) if c.contains("email") => ApiError::conflict(
            "email_taken",
            "Another end-user of this application has this email",
        ),
        other => other.into(),
    }
}

#[utoipa::path(post, path = "/api/end-users", tag = "end-users",
    operation_id = "createEndUser", summary = "Create an end-user",
    request_body = crate::http::openapi::EndUserRequest,
    responses((status = 201, body = EndUserDto), (status = 400), (status = 409)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("end-users:write")?;
    let p = parse(&body)?;
    let app = auth.app()?;
    let at = now();
    let row = EndUserRow {
        id: format!("eu_{}", uuid::Uuid::new_v4()),
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        name: p.name.flatten(),
        email: p.email.flatten(),
        external_id: p.external_id.flatten(),
        metadata: DbJson(p.metadata.unwrap_or_else(|| Value::Object(Map::new()))),
        created_at: at,
        updated_at: at,
    };
    let row = state
        .infra
        .db
        .insert_end_user(&row)
        .await
        .map_err(map_conflict)?;
    Ok((StatusCode::CREATED, Json(EndUserDto::from(row))).into_response())
}

#[utoipa::path(get, path = "/api/end-users", tag = "end-users",
    operation_id = "listEndUsers", summary = "List end-users",
    params(("limit" = Option<u32>, Query), ("startingAfter" = Option<String>, Query),
           ("externalId" = Option<String>, Query), ("email" = Option<String>, Query)),
    responses((status = 200, description = "List of end-users", body = crate::http::openapi::EndUserList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_scope("end-users:read")?;
    let query = ListQuery::parse(q.as_deref())?;
    let filter = EndUserFilter {
        external_id: query.param("externalId"),
        email: query.param("email"),
    };
    let app = auth.app()?;
    let page = state
        .infra
        .db
        .list_end_users(&app.id, &filter, &query.page)
        .await?;
    Ok(paged_response(
        &state.config.app_url,
        "/api/end-users",
        &query,
        page,
        |e| &e.id,
        EndUserDto::from,
    ))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("End-user {id} not found"))
}

#[utoipa::path(get, path = "/api/end-users/{id}", tag = "end-users",
    operation_id = "getEndUser", summary = "Get an end-user",
    responses((status = 200, body = EndUserDto), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("end-users:read")?;
    let app = auth.app()?;
    let row = state
        .infra
        .db
        .get_end_user(&app.id, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(EndUserDto::from(row)).into_response())
}

#[utoipa::path(patch, path = "/api/end-users/{id}", tag = "end-users",
    operation_id = "updateEndUser", summary = "Update an end-user (null clears a field)",
    request_body = crate::http::openapi::EndUserRequest,
    responses((status = 200, body = EndUserDto), (status = 400), (status = 404), (status = 409)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope("end-users:write")?;
    let p = parse(&body)?;
    let app = auth.app()?;
    let patch = EndUserPatch {
        name: p.name,
        email: p.email,
        external_id: p.external_id,
        metadata: p.metadata,
    };
    let row = state
        .infra
        .db
        .update_end_user(&app.id, &id, &patch)
        .await
        .map_err(|e| match e {
            DbError::NotFound => not_found(&id),
            other => map_conflict(other),
        })?;
    Ok(Json(EndUserDto::from(row)).into_response())
}

#[utoipa::path(delete, path = "/api/end-users/{id}", tag = "end-users",
    operation_id = "deleteEndUser", summary = "Delete an end-user",
    responses((status = 204), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_scope("end-users:write")?;
    let app = auth.app()?;
    state
        .infra
        .db
        .delete_end_user(&app.id, &id)
        .await
        .map_err(|e| match e {
            DbError::NotFound => not_found(&id),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails() {
        assert!(valid_email("a@b.co"));
        for bad in ["", "a", "a@b", "@b.co", "a b@c.de", "a@.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn metadata_rules() {
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(1))).collect();
        let err = parse(&json!({"metadata": many})).err().unwrap();
        assert_eq!(err.errors.unwrap()[0].field, "metadata");
        let err = parse(&json!({"metadata": {"a": {"nested": 1}}}))
            .err()
            .unwrap();
        assert_eq!(err.errors.unwrap()[0].field, "metadata.a");
        assert!(parse(&json!({"metadata": {"a": "x", "b": 1, "c": true, "d": null}})).is_ok());
    }
}
