//! Members and invitations: the organization's members, pending invitations and the invite form (with
//! `members:write`), and the invitation page a link opens.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Serialize;

use super::{form_viewer, value, viewer_or};
use crate::domain::DomainError;
use crate::people::orgs;
use crate::people::roles::ROLES;
use crate::state::AppState;
use crate::web::context::{check_form, csrf_token, signed_in, Viewer};
use crate::web::{error_page, message_page, render, render_status, see_other};

#[derive(Serialize)]
struct Member {
    id: String,
    name: String,
    email: String,
    role: String,
    me: bool,
}

#[derive(Serialize)]
struct Invitation {
    email: String,
    role: String,
    expires: String,
}

#[derive(Default)]
struct Outcome {
    status: Option<StatusCode>,
    error: Option<String>,
    invited_email: Option<String>,
    invite_link: Option<String>,
    email: String,
}

async fn page(state: &AppState, v: &Viewer, out: Outcome) -> Response {
    let detail = match orgs::get(state, &v.user.id, &v.ctx.org_id).await {
        Ok(d) => d,
        Err(e) => return error_page(&DomainError::from(e), Some(&v.ctx)),
    };
    let members: Vec<Member> = detail
        .members
        .iter()
        .map(|m| Member {
            id: m.user_id.clone(),
            name: m.name.clone(),
            email: m.email.clone(),
            role: m.role.clone(),
            me: m.user_id == v.user.id,
        })
        .collect();
    let invitations: Vec<Invitation> = detail
        .invitations
        .iter()
        .filter(|i| i.accepted_at.is_none() && i.revoked_at.is_none())
        .map(|i| Invitation {
            email: i.email.clone(),
            role: i.role.clone(),
            expires: i.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
        .collect();
    let roles: Vec<&str> = ROLES.iter().map(|r| r.as_str()).collect();
    render_status(
        out.status.unwrap_or(StatusCode::OK),
        "members.html",
        minijinja::context! {
            title => "Members", section => "members", ctx => &v.ctx, members, invitations, roles,
            can_manage => detail.role.allows("members:write"),
            error => out.error, invited_email => out.invited_email, invite_link => out.invite_link,
            email => out.email,
        },
    )
}

/// `GET /members`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match viewer_or(&state, &headers, "/members").await {
        Ok(v) => page(&state, &v, Outcome::default()).await,
        Err(res) => res,
    }
}

/// `POST /members/invite`: the link is shown once when no email could be sent.
pub async fn invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/members", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let email = value(&pairs, "email").unwrap_or("").trim().to_string();
    let invited = async {
        let role = orgs::parse_role("role", value(&pairs, "role").unwrap_or(""))?;
        orgs::invite(&state, &v.user, &v.ctx.org_id, &email, role).await
    };
    let out = match invited.await {
        Ok(done) => Outcome {
            invited_email: Some(done.invitation.email.clone()),
            invite_link: (!done.emailed).then_some(done.link),
            ..Default::default()
        },
        Err(e) => {
            let e = DomainError::from(e);
            Outcome {
                status: Some(crate::web::status_for(&e)),
                error: Some(e.detail),
                email,
                ..Default::default()
            }
        }
    };
    page(&state, &v, out).await
}

/// `POST /members/{id}/role` (`role`): changes a member's role (the domain decides who may assign what).
pub async fn set_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(member): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/members", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let done = async {
        let role = orgs::parse_role("role", value(&pairs, "role").unwrap_or(""))?;
        orgs::set_member_role(&state, &v.user.id, &v.ctx.org_id, &member, role).await
    };
    match done.await {
        Ok(()) => see_other("/members"),
        Err(e) => {
            let e = DomainError::from(e);
            let out = Outcome {
                status: Some(crate::web::status_for(&e)),
                error: Some(e.detail),
                ..Default::default()
            };
            page(&state, &v, out).await
        }
    }
}

/// `POST /members/{id}/remove`: removes a member (or, for oneself, leaves the organization).
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(member): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let v = match form_viewer(&state, &headers, "/members", &pairs).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match orgs::remove_member(&state, &v.user.id, &v.ctx.org_id, &member).await {
        Ok(()) if member == v.user.id => see_other("/agents"),
        Ok(()) => see_other("/members"),
        Err(e) => {
            let e = DomainError::from(e);
            let out = Outcome {
                status: Some(crate::web::status_for(&e)),
                error: Some(e.detail),
                ..Default::default()
            };
            page(&state, &v, out).await
        }
    }
}

/// `GET /invite/{token}`: what the invitation is, and how to accept it.
pub async fn invitation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let info = match orgs::info(&state, &token).await {
        Ok(i) => i,
        Err(e) => return error_page::<()>(&DomainError::from(e), None),
    };
    let me = signed_in(&state, &headers).await;
    render(
        "invite.html",
        minijinja::context! {
            title => format!("Join {}", info.org.name), org_name => info.org.name,
            role => info.invitation.role, email => info.invitation.email, status => info.status,
            token, signed_in_as => me.as_ref().map(|(u, _)| u.email.clone()),
            csrf => me.as_ref().map(|(_, s)| csrf_token(&state, &s.id)),
        },
    )
}

/// `POST /invite/{token}`: accepts as the signed-in person and opens the organization.
pub async fn accept(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let Some((user, session)) = signed_in(&state, &headers).await else {
        return see_other(&format!("/sign-in?invite={token}"));
    };
    if let Err(m) = check_form(&state, &headers, Some(&session.id), value(&pairs, "_csrf")) {
        return message_page(StatusCode::FORBIDDEN, "Form refused", &m);
    }
    match orgs::accept(&state, &user, &token).await {
        Ok(org) => {
            let mut res = see_other("/agents");
            let secure = state.config.app_url.starts_with("https://");
            if let Ok(v) = axum::http::HeaderValue::from_str(&crate::web::context::context_cookie(
                &org.id, "", secure,
            )) {
                res.headers_mut().append(axum::http::header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => error_page::<()>(&DomainError::from(e), None),
    }
}
