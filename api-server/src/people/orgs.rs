//! Organizations, members and invitations. Every check of what a member may do asks [`Role::allows`].

use chrono::Duration;

use super::roles::Role;
use super::{PeopleError, PeopleResult};
use crate::crypto::{new_token, sha256_hex};
use crate::infra::database::people::{
    InvitationRow, MemberRow, MembershipRow, UserRow, INVITATION_USED, LAST_OWNER,
};
use crate::infra::database::{now, ApplicationRow, DbError, OrgRow};
use crate::state::AppState;

fn db_error(e: DbError) -> PeopleError {
    match e {
        DbError::Conflict(c) if c == LAST_OWNER => PeopleError::LastOwner,
        DbError::Conflict(c) if c == INVITATION_USED => PeopleError::InvitationUsed,
        other => other.into(),
    }
}

pub fn parse_role(field: &'static str, raw: &str) -> PeopleResult<Role> {
    raw.parse::<Role>().map_err(|_| {
        PeopleError::invalid(
            field,
            "invalid_value",
            "must be owner, admin, member or viewer",
        )
    })
}

pub fn validate_org_name(raw: &str) -> PeopleResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(PeopleError::invalid(
            "name",
            "out_of_range",
            "must be 1 to 100 characters",
        ));
    }
    Ok(name.to_string())
}

/// The caller's role in `org_id`, refusing non-members and roles without `permission`.
pub async fn membership(
    state: &AppState,
    user_id: &str,
    org_id: &str,
    permission: &str,
) -> PeopleResult<Role> {
    let role = state
        .infra
        .db
        .member_role(org_id, user_id)
        .await?
        .and_then(|r| r.parse::<Role>().ok())
        .ok_or_else(|| {
            PeopleError::Forbidden("You are not a member of this organization".into())
        })?;
    if !role.allows(permission) {
        return Err(PeopleError::Forbidden(format!(
            "Insufficient permissions: {permission} required (your role is {role})"
        )));
    }
    Ok(role)
}

pub async fn list_for_user(state: &AppState, user_id: &str) -> PeopleResult<Vec<MembershipRow>> {
    Ok(state.infra.db.list_memberships(user_id).await?)
}

pub async fn create(
    state: &AppState,
    user: &UserRow,
    name: &str,
) -> PeopleResult<(OrgRow, ApplicationRow)> {
    let name = validate_org_name(name)?;
    state
        .infra
        .db
        .create_org_with_owner(&name, "Default", &user.id, false)
        .await?
        .ok_or_else(|| PeopleError::Internal("organization not created".into()))
}

/// An organization with its members and pending invitations, for a member.
pub struct OrgDetail {
    pub org: OrgRow,
    pub role: Role,
    pub members: Vec<MemberRow>,
    pub invitations: Vec<InvitationRow>,
}

pub async fn get(state: &AppState, user_id: &str, org_id: &str) -> PeopleResult<OrgDetail> {
    let role = membership(state, user_id, org_id, "org:read").await?;
    let db = &state.infra.db;
    let org = db
        .get_org(org_id)
        .await?
        .ok_or_else(|| PeopleError::NotFound(format!("Organization {org_id} not found")))?;
    let members = db.list_members(org_id).await?;
    let invitations = if role.allows("members:write") {
        db.list_invitations(org_id, now()).await?
    } else {
        Vec::new()
    };
    Ok(OrgDetail {
        org,
        role,
        members,
        invitations,
    })
}

pub async fn rename(
    state: &AppState,
    user_id: &str,
    org_id: &str,
    name: &str,
) -> PeopleResult<OrgRow> {
    membership(state, user_id, org_id, "org:write").await?;
    let name = validate_org_name(name)?;
    Ok(state.infra.db.rename_org(org_id, &name).await?)
}

pub async fn delete(state: &AppState, user_id: &str, org_id: &str) -> PeopleResult<()> {
    membership(state, user_id, org_id, "org:delete").await?;
    let db = &state.infra.db;
    if db.count_open_runs(org_id).await? > 0 {
        return Err(PeopleError::Forbidden(
            "The organization has runs in progress; cancel them or wait for them to finish".into(),
        ));
    }
    Ok(db.delete_org(org_id).await?)
}

/// Only an owner grants or takes away the owner role.
fn may_assign(actor: Role, target_current: Option<Role>, new: Role) -> PeopleResult<()> {
    let touches_owner = new == Role::Owner || target_current == Some(Role::Owner);
    if touches_owner && actor != Role::Owner {
        return Err(PeopleError::Forbidden(
            "Only an owner can grant or change the owner role".into(),
        ));
    }
    Ok(())
}

/// A created invitation: the row, the link to hand to the invitee, and whether it was emailed.
pub struct Invited {
    pub invitation: InvitationRow,
    pub link: String,
    pub emailed: bool,
}

pub async fn invite(
    state: &AppState,
    inviter: &UserRow,
    org_id: &str,
    email: &str,
    role: Role,
) -> PeopleResult<Invited> {
    let actor = membership(state, &inviter.id, org_id, "members:write").await?;
    may_assign(actor, None, role)?;
    let email = super::accounts::normalize_email(email)?;
    let db = &state.infra.db;
    let org = db
        .get_org(org_id)
        .await?
        .ok_or_else(|| PeopleError::NotFound(format!("Organization {org_id} not found")))?;
    let token = new_token("inv_");
    let at = now();
    let invitation = InvitationRow {
        id: format!("invit_{}", uuid::Uuid::new_v4()),
        org_id: org_id.to_string(),
        email: email.clone(),
        role: role.as_str().to_string(),
        invited_by: Some(inviter.id.clone()),
        created_at: at,
        expires_at: at + Duration::seconds(state.config.people.invitation_ttl_seconds as i64),
        accepted_at: None,
        accepted_by: None,
        revoked_at: None,
    };
    db.insert_invitation(&invitation, &sha256_hex(&token))
        .await?;
    let link = format!("{}/invite/{token}", state.config.app_url);
    let emailed = match &state.config.people.smtp {
        None => false,
        Some(smtp) => {
            let body = format!(
                "{} invited you to join {} on Appstrate as {}.\n\nAccept the invitation: {link}\n\n\
                 The link expires on {}.",
                inviter.name,
                org.name,
                role,
                invitation.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            match super::mail::send(
                smtp,
                &email,
                &format!("Join {} on Appstrate", org.name),
                &body,
            )
            .await
            {
                Ok(()) => true,
                Err(e) => {
                    // The inviter still gets the link and can hand it over another way.
                    tracing::warn!(error = %e, "could not email an invitation");
                    false
                }
            }
        }
    };
    Ok(Invited {
        invitation,
        link,
        emailed,
    })
}

/// What the invitee sees before accepting.
pub struct InvitationInfo {
    pub invitation: InvitationRow,
    pub org: OrgRow,
    pub status: &'static str,
}

fn status(inv: &InvitationRow) -> &'static str {
    if inv.accepted_at.is_some() {
        "accepted"
    } else if inv.revoked_at.is_some() {
        "revoked"
    } else if inv.expires_at <= now() {
        "expired"
    } else {
        "pending"
    }
}

async fn load_invitation(state: &AppState, token: &str) -> PeopleResult<(InvitationRow, OrgRow)> {
    let db = &state.infra.db;
    let not_found = || PeopleError::NotFound("Invitation not found".into());
    let inv = db
        .find_invitation(&sha256_hex(token))
        .await?
        .ok_or_else(not_found)?;
    let org = db.get_org(&inv.org_id).await?.ok_or_else(not_found)?;
    Ok((inv, org))
}

pub async fn info(state: &AppState, token: &str) -> PeopleResult<InvitationInfo> {
    let (invitation, org) = load_invitation(state, token).await?;
    let status = status(&invitation);
    Ok(InvitationInfo {
        invitation,
        org,
        status,
    })
}

pub async fn accept(state: &AppState, user: &UserRow, token: &str) -> PeopleResult<OrgRow> {
    let (inv, org) = load_invitation(state, token).await?;
    match status(&inv) {
        "accepted" | "revoked" => return Err(PeopleError::InvitationUsed),
        "expired" => return Err(PeopleError::InvitationExpired),
        _ => {}
    }
    if inv.email != user.email {
        return Err(PeopleError::InvitationWrongAccount);
    }
    let db = &state.infra.db;
    db.accept_invitation(&inv, &user.id)
        .await
        .map_err(db_error)?;
    // The invitation reached this address: it is verified.
    if !user.email_verified {
        db.mark_email_verified(&user.id).await?;
    }
    Ok(org)
}

pub async fn set_invitation_role(
    state: &AppState,
    user_id: &str,
    org_id: &str,
    id: &str,
    role: Role,
) -> PeopleResult<()> {
    let actor = membership(state, user_id, org_id, "members:write").await?;
    may_assign(actor, None, role)?;
    state
        .infra
        .db
        .set_invitation_role(org_id, id, role.as_str())
        .await
        .map_err(|e| not_found(e, "Invitation"))
}

pub async fn revoke_invitation(
    state: &AppState,
    user_id: &str,
    org_id: &str,
    id: &str,
) -> PeopleResult<()> {
    membership(state, user_id, org_id, "members:write").await?;
    state
        .infra
        .db
        .revoke_invitation(org_id, id)
        .await
        .map_err(|e| not_found(e, "Invitation"))
}

fn not_found(e: DbError, what: &str) -> PeopleError {
    match e {
        DbError::NotFound => PeopleError::NotFound(format!("{what} not found")),
        other => db_error(other),
    }
}

pub async fn set_member_role(
    state: &AppState,
    actor_id: &str,
    org_id: &str,
    member_id: &str,
    role: Role,
) -> PeopleResult<()> {
    let actor = membership(state, actor_id, org_id, "members:write").await?;
    let db = &state.infra.db;
    let current = db
        .member_role(org_id, member_id)
        .await?
        .and_then(|r| r.parse::<Role>().ok())
        .ok_or_else(|| PeopleError::NotFound("Member not found".into()))?;
    may_assign(actor, Some(current), role)?;
    db.set_member_role(org_id, member_id, role.as_str())
        .await
        .map_err(|e| not_found(e, "Member"))
}

/// Removes a member; anyone may leave (`member_id` = themselves), removing someone else needs
/// `members:write`, and only an owner removes an owner. The last owner can do neither.
pub async fn remove_member(
    state: &AppState,
    actor_id: &str,
    org_id: &str,
    member_id: &str,
) -> PeopleResult<()> {
    let db = &state.infra.db;
    if actor_id != member_id {
        let actor = membership(state, actor_id, org_id, "members:write").await?;
        let current = db
            .member_role(org_id, member_id)
            .await?
            .and_then(|r| r.parse::<Role>().ok())
            .ok_or_else(|| PeopleError::NotFound("Member not found".into()))?;
        if current == Role::Owner && actor != Role::Owner {
            return Err(PeopleError::Forbidden(
                "Only an owner can remove an owner".into(),
            ));
        }
    } else {
        membership(state, actor_id, org_id, "org:read").await?;
    }
    db.remove_member(org_id, member_id)
        .await
        .map_err(|e| not_found(e, "Member"))
}

/// The scopes an API key holds now: its own when a token holder created it; when a signed-in user created
/// it, those its creator's current role allows (scopes ∩ role); `None` once the creator has left the
/// organization. The authentication middleware and scheduled runs both decide through this.
pub async fn effective_key_scopes(
    db: &dyn crate::infra::database::Database,
    key: &crate::infra::database::ApiKeyRow,
) -> Result<Option<Vec<String>>, crate::infra::database::DbError> {
    let mut scopes = key.scopes.0.clone();
    if let Some(creator) = &key.created_by {
        let Some(role) = db
            .member_role(&key.org_id, creator)
            .await?
            .and_then(|r| r.parse::<super::Role>().ok())
        else {
            return Ok(None);
        };
        scopes.retain(|s| role.allows(s));
    }
    Ok(Some(scopes))
}
