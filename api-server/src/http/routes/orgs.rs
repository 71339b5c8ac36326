//! Organizations, members and invitations for signed-in users (`/api/orgs*`, `/api/me/orgs`,
//! `/invite/{token}/*`). Thin: every rule lives in `people::orgs`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::json::{Fields, JsonBody};
use crate::http::session::{require_user, SignedIn};
use crate::infra::database::people::{InvitationRow, MemberRow, MembershipRow};
use crate::infra::database::{ApplicationRow, OrgRow};
use crate::people::orgs::{self, parse_role};
use crate::people::Role;
use crate::state::AppState;

pub fn router(state: &AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/api/me/orgs", get(my_orgs))
        .route("/api/orgs", get(my_orgs).post(create_org))
        .route(
            "/api/orgs/{org_id}",
            get(get_org).put(update_org).delete(delete_org),
        )
        .route("/api/orgs/{org_id}/members", post(invite_member))
        .route(
            "/api/orgs/{org_id}/members/{user_id}",
            put(update_member).delete(remove_member),
        )
        .route(
            "/api/orgs/{org_id}/invitations/{invitation_id}",
            put(update_invitation).delete(revoke_invitation),
        )
        .route("/invite/{token}/accept", post(accept_invitation))
        .route_layer(from_fn_with_state(state.clone(), require_user));
    Router::new()
        .route("/invite/{token}/info", get(invitation_info))
        .merge(signed_in)
}

fn org_dto(o: &OrgRow, role: Option<Role>) -> Value {
    let mut v = json!({
        "id": o.id,
        "object": "organization",
        "name": o.name,
        "slug": o.slug,
        "createdAt": o.created_at,
        "updatedAt": o.updated_at,
    });
    if let Some(r) = role {
        v["role"] = json!(r.as_str());
    }
    v
}

fn membership_dto(m: &MembershipRow) -> Value {
    org_dto(&m.org, m.role.parse::<Role>().ok())
}

fn member_dto(m: &MemberRow) -> Value {
    json!({
        "userId": m.user_id,
        "object": "member",
        "email": m.email,
        "name": m.name,
        "role": m.role,
        "createdAt": m.created_at,
    })
}

fn invitation_dto(i: &InvitationRow) -> Value {
    json!({
        "id": i.id,
        "object": "invitation",
        "orgId": i.org_id,
        "email": i.email,
        "role": i.role,
        "createdAt": i.created_at,
        "expiresAt": i.expires_at,
    })
}

fn application_dto(a: &ApplicationRow) -> Value {
    json!({
        "id": a.id,
        "object": "application",
        "orgId": a.org_id,
        "name": a.name,
        "isDefault": a.is_default,
        "createdAt": a.created_at,
        "updatedAt": a.updated_at,
    })
}

pub async fn my_orgs(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
) -> Result<Response, ApiError> {
    let list = orgs::list_for_user(&state, &me.user.id).await?;
    let data: Vec<Value> = list.iter().map(membership_dto).collect();
    Ok(Json(json!({"object": "list", "data": data, "hasMore": false})).into_response())
}

pub async fn create_org(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let name = f.string("name", true, 1, 100);
    let _ = f.raw("slug");
    f.finish()?;
    let (org, app) = orgs::create(&state, &me.user, &name.unwrap_or_default()).await?;
    let mut dto = org_dto(&org, Some(Role::Owner));
    dto["defaultApplication"] = application_dto(&app);
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

pub async fn get_org(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path(org_id): Path<String>,
) -> Result<Response, ApiError> {
    let d = orgs::get(&state, &me.user.id, &org_id).await?;
    let mut dto = org_dto(&d.org, Some(d.role));
    dto["members"] = Value::Array(d.members.iter().map(member_dto).collect());
    dto["invitations"] = Value::Array(d.invitations.iter().map(invitation_dto).collect());
    Ok(Json(dto).into_response())
}

pub async fn update_org(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path(org_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let name = f.string("name", true, 1, 100);
    f.finish()?;
    let org = orgs::rename(&state, &me.user.id, &org_id, &name.unwrap_or_default()).await?;
    Ok(Json(org_dto(&org, None)).into_response())
}

pub async fn delete_org(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path(org_id): Path<String>,
) -> Result<Response, ApiError> {
    orgs::delete(&state, &me.user.id, &org_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn role_field(f: &mut Fields<'_>, required: bool) -> Option<String> {
    f.string("role", required, 1, 20)
}

/// Invites someone by email: 201 with the invitation and, when it was not emailed, the link to hand over.
pub async fn invite_member(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path(org_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let email = f.string("email", true, 1, 254);
    let role = role_field(&mut f, false);
    f.finish()?;
    let role = match role {
        Some(r) => parse_role("role", &r)?,
        None => Role::Member,
    };
    let done = orgs::invite(&state, &me.user, &org_id, &email.unwrap_or_default(), role).await?;
    let mut dto = invitation_dto(&done.invitation);
    dto["emailed"] = json!(done.emailed);
    // Without email delivery the inviter hands the link over; a mailed link is not repeated.
    if !done.emailed {
        dto["inviteUrl"] = json!(done.link);
    }
    Ok((StatusCode::CREATED, Json(dto)).into_response())
}

pub async fn update_member(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path((org_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let role = role_field(&mut f, true);
    f.finish()?;
    let role = parse_role("role", &role.unwrap_or_default())?;
    orgs::set_member_role(&state, &me.user.id, &org_id, &user_id, role).await?;
    Ok(Json(json!({"userId": user_id, "object": "member", "role": role.as_str()})).into_response())
}

pub async fn remove_member(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    orgs::remove_member(&state, &me.user.id, &org_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn update_invitation(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path((org_id, invitation_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(&body, "");
    let role = role_field(&mut f, true);
    f.finish()?;
    let role = parse_role("role", &role.unwrap_or_default())?;
    orgs::set_invitation_role(&state, &me.user.id, &org_id, &invitation_id, role).await?;
    Ok(
        Json(json!({"id": invitation_id, "object": "invitation", "role": role.as_str()}))
            .into_response(),
    )
}

pub async fn revoke_invitation(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path((org_id, invitation_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    orgs::revoke_invitation(&state, &me.user.id, &org_id, &invitation_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Public: what an invitation link is for (organization, role, email, status), before signing in.
pub async fn invitation_info(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let i = orgs::info(&state, &token).await?;
    Ok(Json(json!({
        "object": "invitation",
        "orgId": i.org.id,
        "orgName": i.org.name,
        "email": i.invitation.email,
        "role": i.invitation.role,
        "status": i.status,
        "expiresAt": i.invitation.expires_at,
    }))
    .into_response())
}

pub async fn accept_invitation(
    State(state): State<AppState>,
    Extension(me): Extension<SignedIn>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let org = orgs::accept(&state, &me.user, &token).await?;
    let role = state.infra.db.member_role(&org.id, &me.user.id).await?;
    Ok(Json(org_dto(&org, role.and_then(|r| r.parse().ok()))).into_response())
}
