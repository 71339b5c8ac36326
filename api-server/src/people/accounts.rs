//! Accounts and sessions: sign-up, sign-in, session resolution with sliding renewal, profile and password.

use super::password::{hash_password, verify_password, Argon2Params};
use super::session::{new_token, CookieSigner, SessionPolicy};
use super::{ClientInfo, PeopleError, PeopleResult};
use crate::crypto::sha256_hex;
use crate::infra::database::people::{NewSession, SessionRow, UserRow};
use crate::infra::database::{now, DbError};
use crate::state::AppState;

pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;

/// A trimmed, lower-cased address with one `@` and a dotted domain.
pub fn normalize_email(raw: &str) -> PeopleResult<String> {
    let email = raw.trim().to_lowercase();
    let ok = email.len() <= 254
        && email.split('@').count() == 2
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email)
    } else {
        Err(PeopleError::invalid(
            "email",
            "invalid_format",
            "must be an email address such as ada@example.com",
        ))
    }
}

pub fn validate_password(field: &'static str, password: &str) -> PeopleResult<()> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(PeopleError::invalid(
            field,
            "out_of_range",
            format!("must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"),
        ));
    }
    Ok(())
}

async fn hash(params: Argon2Params, password: String) -> PeopleResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&params, &password))
        .await
        .map_err(|e| PeopleError::Internal(e.to_string()))?
        .map_err(PeopleError::Internal)
}

async fn verify(params: Argon2Params, phc: Option<String>, password: String) -> PeopleResult<bool> {
    tokio::task::spawn_blocking(move || verify_password(&params, phc.as_deref(), &password))
        .await
        .map_err(|e| PeopleError::Internal(e.to_string()))
}

pub fn signer(state: &AppState) -> CookieSigner {
    CookieSigner::new(state.config.better_auth_secret.expose())
}

pub fn policy(state: &AppState) -> SessionPolicy {
    SessionPolicy {
        ttl_seconds: state.config.people.session_ttl_seconds,
    }
}

/// A session just opened: its row and the signed cookie value.
pub struct OpenedSession {
    pub session: SessionRow,
    pub cookie_value: String,
}

pub async fn open_session(
    state: &AppState,
    user_id: &str,
    client: &ClientInfo,
) -> PeopleResult<OpenedSession> {
    let token = new_token();
    let session = state
        .infra
        .db
        .insert_session(&NewSession {
            id: format!("ses_{}", uuid::Uuid::new_v4()),
            user_id: user_id.to_string(),
            token_hash: sha256_hex(&token),
            ip: client.ip.clone(),
            user_agent: client
                .user_agent
                .as_ref()
                .map(|u| u.chars().take(300).collect()),
            expires_at: policy(state).expires_at(now()),
        })
        .await?;
    Ok(OpenedSession {
        session,
        cookie_value: signer(state).sign(&token),
    })
}

/// Whether open sign-up admits `email` (an invitation or the claim of a fresh instance admits anyone).
fn open_signup_admits(state: &AppState, email: &str) -> PeopleResult<()> {
    let cfg = &state.config.people;
    if cfg.signup_disabled {
        return Err(PeopleError::SignUpDisabled);
    }
    if !cfg.allowed_signup_domains.is_empty() {
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !cfg.allowed_signup_domains.iter().any(|d| d == domain) {
            return Err(PeopleError::EmailDomainNotAllowed(
                cfg.allowed_signup_domains.join(", "),
            ));
        }
    }
    Ok(())
}

/// Whether `email` holds a pending invitation (closed mode still lets invited people in).
async fn has_pending_invitation(state: &AppState, email: &str) -> PeopleResult<bool> {
    Ok(state.infra.db.pending_invitation_for(email, now()).await?)
}

pub struct SignUp {
    pub email: String,
    pub password: String,
    pub name: Option<String>,
}

/// The new user, the session opened for them and, on a fresh instance, the organization they claimed.
pub struct SignedUp {
    pub user: UserRow,
    pub opened: OpenedSession,
    pub claimed_org: Option<String>,
}

/// The sign-up rules of closed installations, for a new account with `email` (password or provider).
pub async fn admit_new_account(state: &AppState, email: &str) -> PeopleResult<()> {
    if state.infra.db.count_orgs().await? == 0 {
        return Ok(());
    }
    if let Err(closed) = open_signup_admits(state, email) {
        if !has_pending_invitation(state, email).await? {
            return Err(closed);
        }
    }
    Ok(())
}

pub async fn sign_up(
    state: &AppState,
    input: SignUp,
    client: &ClientInfo,
) -> PeopleResult<SignedUp> {
    let email = normalize_email(&input.email)?;
    validate_password("password", &input.password)?;
    let db = &state.infra.db;
    admit_new_account(state, &email).await?;
    let name = input
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| email.split('@').next().unwrap_or("").to_string());
    let phc = hash(state.config.people.argon2, input.password).await?;
    let at = now();
    let user = db
        .insert_user(&UserRow {
            id: format!("usr_{}", uuid::Uuid::new_v4()),
            email,
            name,
            password_hash: Some(phc),
            email_verified: false,
            created_at: at,
            updated_at: at,
        })
        .await
        .map_err(|e| match e {
            DbError::Conflict(_) => PeopleError::EmailTaken,
            other => other.into(),
        })?;
    let claimed_org = claim_if_fresh(state, &user).await?;
    let opened = open_session(state, &user.id, client).await?;
    Ok(SignedUp {
        user,
        opened,
        claimed_org,
    })
}

/// The first person on an instance without any organization becomes the owner of a new one with a
/// default application (checked again inside the transaction, so two first sign-ups cannot both claim).
pub async fn claim_if_fresh(state: &AppState, user: &UserRow) -> PeopleResult<Option<String>> {
    let db = &state.infra.db;
    if db.count_orgs().await? != 0 {
        return Ok(None);
    }
    let org_name = format!("{}'s organization", user.name);
    Ok(db
        .create_org_with_owner(&org_name, "Default", &user.id, true)
        .await?
        .map(|(org, _)| org.id))
}

pub async fn sign_in(
    state: &AppState,
    email: &str,
    password: &str,
    client: &ClientInfo,
) -> PeopleResult<(UserRow, OpenedSession)> {
    // A malformed address is answered like a wrong password, after the same work.
    let email = normalize_email(email).unwrap_or_default();
    let user = if email.is_empty() {
        None
    } else {
        state.infra.db.find_user_by_email(&email).await?
    };
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = verify(state.config.people.argon2, phc, password.to_string()).await?;
    match user {
        Some(user) if ok => {
            let opened = open_session(state, &user.id, client).await?;
            Ok((user, opened))
        }
        _ => Err(PeopleError::InvalidCredentials),
    }
}

/// The live session a cookie value names, or `None` (bad signature — e.g. a rotated secret —, unknown,
/// revoked or expired). A used session past its renewal step gets a new expiry, off the request path.
pub async fn resolve_session(
    state: &AppState,
    cookie_value: &str,
) -> PeopleResult<Option<SessionRow>> {
    let signer = signer(state);
    let Some(token) = signer.verify(cookie_value) else {
        return Ok(None);
    };
    let db = &state.infra.db;
    let Some(session) = db.find_session(&sha256_hex(token)).await? else {
        return Ok(None);
    };
    let at = now();
    if session.revoked_at.is_some() || session.expires_at <= at {
        return Ok(None);
    }
    let policy = policy(state);
    if policy.due_for_renewal(session.renewed_at, at) {
        let db = db.clone();
        let id = session.id.clone();
        let expires = policy.expires_at(at);
        tokio::spawn(async move {
            if let Err(e) = db.renew_session(&id, at, expires).await {
                tracing::warn!(error = %e, "could not renew a session");
            }
        });
    }
    Ok(Some(session))
}

pub async fn change_password(
    state: &AppState,
    user: &UserRow,
    current: &str,
    new: &str,
    keep_session: &str,
) -> PeopleResult<()> {
    validate_password("newPassword", new)?;
    let ok = verify(
        state.config.people.argon2,
        user.password_hash.clone(),
        current.to_string(),
    )
    .await?;
    if !ok {
        return Err(PeopleError::invalid(
            "currentPassword",
            "invalid_value",
            "is not the current password",
        ));
    }
    let phc = hash(state.config.people.argon2, new.to_string()).await?;
    let db = &state.infra.db;
    db.set_user_password(&user.id, &phc).await?;
    // Other browsers signed in with the old password are signed out.
    db.revoke_other_sessions(&user.id, Some(keep_session))
        .await?;
    Ok(())
}

/// How long a password-reset link stays good.
pub const RESET_TTL_SECONDS: i64 = 3600;

/// Mails a reset link when `email` has an account; answers the same either way (no enumeration).
/// Without SMTP there is no way to reach the user: `EmailUnavailable`.
pub async fn request_password_reset(state: &AppState, email: &str) -> PeopleResult<()> {
    let Some(smtp) = &state.config.people.smtp else {
        return Err(PeopleError::EmailUnavailable);
    };
    let Ok(email) = normalize_email(email) else {
        return Ok(());
    };
    let db = &state.infra.db;
    let Some(user) = db.find_user_by_email(&email).await? else {
        return Ok(());
    };
    let token = crate::crypto::new_token("pwr_");
    let at = now();
    db.insert_password_reset(
        &sha256_hex(&token),
        &user.id,
        at + chrono::Duration::seconds(RESET_TTL_SECONDS),
    )
    .await?;
    let link = format!("{}/reset-password?token={token}", state.config.app_url);
    let body = format!(
        "Someone asked to reset the password of your Appstrate account ({email}).\n\n\
         Choose a new password: {link}\n\nThe link expires in one hour. If it was not you, ignore this message."
    );
    if let Err(e) = super::mail::send(smtp, &email, "Reset your Appstrate password", &body).await {
        tracing::warn!(error = %e, "could not email a password reset");
    }
    Ok(())
}

/// Sets a new password from a reset link (good once, for an hour) and signs out every session.
pub async fn reset_password(state: &AppState, token: &str, new: &str) -> PeopleResult<()> {
    validate_password("newPassword", new)?;
    let db = &state.infra.db;
    let user_id = db
        .use_password_reset(&sha256_hex(token), now())
        .await?
        .ok_or_else(|| {
            PeopleError::invalid(
                "token",
                "invalid_value",
                "is unknown, expired or already used",
            )
        })?;
    let phc = hash(state.config.people.argon2, new.to_string()).await?;
    db.set_user_password(&user_id, &phc).await?;
    db.revoke_other_sessions(&user_id, None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "", "ada", "ada@", "@x.io", "a@b", "a@@b.io", "a b@c.io", "a@.io",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
