//! People persistence: users, linked identities, sessions, members, invitations and sign-in states — the
//! `PeopleRepo` part of [`super::Database`], written once for both backends.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};

use super::sql::{map_err, SqlDatabase};
use super::tx::BeginWrite;
use super::*;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    pub name: String,
    /// argon2id PHC string; `None` for an account that signs in through a provider only.
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: Timestamp,
    pub renewed_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub user_id: String,
    pub token_hash: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub expires_at: Timestamp,
}

/// A member of an organization, with the user's public fields.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub org_id: String,
    pub user_id: String,
    pub role: String,
    pub email: String,
    pub name: String,
    pub created_at: Timestamp,
}

/// An organization a user belongs to, with the user's role in it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MembershipRow {
    #[sqlx(flatten)]
    pub org: OrgRow,
    pub role: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvitationRow {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub role: String,
    pub invited_by: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub accepted_by: Option<String>,
    pub revoked_at: Option<Timestamp>,
}

/// The state of one social/OIDC sign-in between the redirect to the provider and the callback.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignInStateRow {
    pub state_hash: String,
    pub provider: String,
    pub pkce_verifier: String,
    pub nonce: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Why a membership change was refused.
pub const LAST_OWNER: &str = "last_owner";
pub const INVITATION_USED: &str = "invitation_used";

const USER_COLS: &str = "id, email, name, password_hash, email_verified, created_at, updated_at";
const SESSION_COLS: &str =
    "id, user_id, ip, user_agent, created_at, renewed_at, expires_at, revoked_at";
const INVITE_COLS: &str =
    "id, org_id, email, role, invited_by, created_at, expires_at, accepted_at, \
    accepted_by, revoked_at";
const ORG_COLS_O: &str = "o.id, o.name, o.slug, o.created_at, o.updated_at";
const APP_COLS_A: &str = "a.id, a.org_id, a.name, a.is_default, a.created_at, a.updated_at";

#[async_trait]
pub trait PeopleRepo: Send + Sync {
    // Users
    /// `Conflict("users_email")`-style error when the email is taken.
    async fn insert_user(&self, row: &UserRow) -> DbResult<UserRow>;
    async fn get_user(&self, id: &str) -> DbResult<Option<UserRow>>;
    async fn find_user_by_email(&self, email: &str) -> DbResult<Option<UserRow>>;
    async fn rename_user(&self, id: &str, name: &str) -> DbResult<UserRow>;
    async fn set_user_password(&self, id: &str, hash: &str) -> DbResult<()>;
    async fn mark_email_verified(&self, id: &str) -> DbResult<()>;
    /// Removes the password (the account then signs in through its provider only).
    async fn clear_user_password(&self, id: &str) -> DbResult<()>;
    /// The user a provider identity is linked to.
    async fn find_identity(&self, provider: &str, subject: &str) -> DbResult<Option<String>>;
    async fn link_identity(
        &self,
        provider: &str,
        subject: &str,
        user_id: &str,
        email: Option<&str>,
    ) -> DbResult<()>;

    // Sessions
    async fn insert_session(&self, s: &NewSession) -> DbResult<SessionRow>;
    /// The session with this token hash, whatever its state.
    async fn find_session(&self, token_hash: &str) -> DbResult<Option<SessionRow>>;
    /// The user's sessions that are neither revoked nor expired, newest first.
    async fn list_sessions(&self, user_id: &str, at: Timestamp) -> DbResult<Vec<SessionRow>>;
    /// `NotFound` when unknown, another user's or already revoked.
    async fn revoke_session(&self, user_id: &str, id: &str) -> DbResult<()>;
    /// Revokes every active session of the user except `keep`.
    async fn revoke_other_sessions(&self, user_id: &str, keep: Option<&str>) -> DbResult<u64>;
    async fn renew_session(&self, id: &str, at: Timestamp, expires_at: Timestamp) -> DbResult<()>;

    // Organizations and members
    async fn count_orgs(&self) -> DbResult<i64>;
    async fn get_org(&self, id: &str) -> DbResult<Option<OrgRow>>;
    async fn rename_org(&self, id: &str, name: &str) -> DbResult<OrgRow>;
    async fn delete_org(&self, id: &str) -> DbResult<()>;
    /// A new organization, its default application and `user_id` as its owner. With `only_if_empty`, only
    /// when the instance has no organization at all (the claim of a fresh installation): `None` otherwise.
    async fn create_org_with_owner(
        &self,
        name: &str,
        app_name: &str,
        user_id: &str,
        only_if_empty: bool,
    ) -> DbResult<Option<(OrgRow, ApplicationRow)>>;
    async fn member_role(&self, org_id: &str, user_id: &str) -> DbResult<Option<String>>;
    /// An application by id, with the role of `user_id` in its organization (the session-user hot path).
    async fn application_with_role(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> DbResult<Option<(ApplicationRow, Option<String>)>>;
    async fn list_memberships(&self, user_id: &str) -> DbResult<Vec<MembershipRow>>;
    async fn list_members(&self, org_id: &str) -> DbResult<Vec<MemberRow>>;
    /// Changes a role; `Conflict(LAST_OWNER)` when it would leave the organization without an owner.
    async fn set_member_role(&self, org_id: &str, user_id: &str, role: &str) -> DbResult<()>;
    /// Removes a member and revokes the API keys they created in the organization; `Conflict(LAST_OWNER)`
    /// for the last owner.
    async fn remove_member(&self, org_id: &str, user_id: &str) -> DbResult<()>;

    /// An API key created by a signed-in user (`created_by` caps its permissions by the user's role).
    async fn insert_user_api_key(&self, key: &NewApiKey, created_by: &str) -> DbResult<ApiKeyRow>;

    // Invitations
    async fn insert_invitation(&self, row: &InvitationRow, token_hash: &str) -> DbResult<()>;
    async fn find_invitation(&self, token_hash: &str) -> DbResult<Option<InvitationRow>>;
    /// Whether `email` holds an invitation that can still be accepted.
    async fn pending_invitation_for(&self, email: &str, at: Timestamp) -> DbResult<bool>;
    async fn list_invitations(&self, org_id: &str, at: Timestamp) -> DbResult<Vec<InvitationRow>>;
    async fn set_invitation_role(&self, org_id: &str, id: &str, role: &str) -> DbResult<()>;
    async fn revoke_invitation(&self, org_id: &str, id: &str) -> DbResult<()>;
    /// Marks the invitation used and adds the member, at most once: `Conflict(INVITATION_USED)` when it
    /// was used (or revoked) meanwhile. An existing member keeps their role.
    async fn accept_invitation(&self, inv: &InvitationRow, user_id: &str) -> DbResult<()>;

    // Password resets
    async fn insert_password_reset(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_at: Timestamp,
    ) -> DbResult<()>;
    /// Marks a live reset token used and returns its user (once).
    async fn use_password_reset(&self, token_hash: &str, at: Timestamp)
        -> DbResult<Option<String>>;

    // Social/OIDC sign-in states
    async fn insert_sign_in_state(&self, row: &SignInStateRow) -> DbResult<()>;
    /// Removes and returns the state: each state is good for one callback.
    async fn take_sign_in_state(&self, state_hash: &str) -> DbResult<Option<SignInStateRow>>;
}

macro_rules! impl_people_repo {
    ($db:ty) => {
        impl SqlDatabase<$db> {
            /// Refuses a change that would leave `org_id` without an owner (inside the caller's transaction).
            async fn guard_last_owner(
                tx: &mut sqlx::Transaction<'static, $db>,
                org_id: &str,
                user_id: &str,
            ) -> DbResult<String> {
                let current: Option<(String,)> =
                    sqlx::query_as("SELECT role FROM members WHERE org_id = $1 AND user_id = $2")
                        .bind(org_id)
                        .bind(user_id)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(map_err)?;
                let role = current.ok_or(DbError::NotFound)?.0;
                if role == "owner" {
                    let (owners,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM members WHERE org_id = $1 AND role = 'owner'",
                    )
                    .bind(org_id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(map_err)?;
                    if owners <= 1 {
                        return Err(DbError::Conflict(LAST_OWNER.into()));
                    }
                }
                Ok(role)
            }
        }

        #[async_trait]
        impl PeopleRepo for SqlDatabase<$db> {
            async fn insert_user(&self, r: &UserRow) -> DbResult<UserRow> {
                let sql = format!(
                    "INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {USER_COLS}"
                );
                Ok(sqlx::query_as::<_, UserRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.email)
                    .bind(&r.name)
                    .bind(&r.password_hash)
                    .bind(r.email_verified)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn get_user(&self, id: &str) -> DbResult<Option<UserRow>> {
                let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
                Ok(sqlx::query_as::<_, UserRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn find_user_by_email(&self, email: &str) -> DbResult<Option<UserRow>> {
                let sql = format!("SELECT {USER_COLS} FROM users WHERE email = $1");
                Ok(sqlx::query_as::<_, UserRow>(&sql)
                    .bind(email)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn rename_user(&self, id: &str, name: &str) -> DbResult<UserRow> {
                let sql = format!(
                    "UPDATE users SET name = $1, updated_at = $2 WHERE id = $3 RETURNING {USER_COLS}"
                );
                sqlx::query_as::<_, UserRow>(&sql)
                    .bind(name)
                    .bind(now())
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn set_user_password(&self, id: &str, hash: &str) -> DbResult<()> {
                sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                    .bind(hash)
                    .bind(now())
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn mark_email_verified(&self, id: &str) -> DbResult<()> {
                sqlx::query("UPDATE users SET email_verified = $1, updated_at = $2 WHERE id = $3")
                    .bind(true)
                    .bind(now())
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn clear_user_password(&self, id: &str) -> DbResult<()> {
                sqlx::query("UPDATE users SET password_hash = NULL, updated_at = $1 WHERE id = $2")
                    .bind(now())
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn find_identity(
                &self,
                provider: &str,
                subject: &str,
            ) -> DbResult<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT user_id FROM user_identities WHERE provider = $1 AND subject = $2",
                )
                .bind(provider)
                .bind(subject)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(row.map(|r| r.0))
            }

            async fn link_identity(
                &self,
                provider: &str,
                subject: &str,
                user_id: &str,
                email: Option<&str>,
            ) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO user_identities (provider, subject, user_id, email, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, subject) DO NOTHING",
                )
                .bind(provider)
                .bind(subject)
                .bind(user_id)
                .bind(email)
                .bind(now())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn insert_session(&self, s: &NewSession) -> DbResult<SessionRow> {
                let sql = format!(
                    "INSERT INTO sessions (id, user_id, token_hash, ip, user_agent, created_at, renewed_at, \
                     expires_at) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING {SESSION_COLS}"
                );
                Ok(sqlx::query_as::<_, SessionRow>(&sql)
                    .bind(&s.id)
                    .bind(&s.user_id)
                    .bind(&s.token_hash)
                    .bind(&s.ip)
                    .bind(&s.user_agent)
                    .bind(now())
                    .bind(s.expires_at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn find_session(&self, token_hash: &str) -> DbResult<Option<SessionRow>> {
                let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE token_hash = $1");
                Ok(sqlx::query_as::<_, SessionRow>(&sql)
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_sessions(
                &self,
                user_id: &str,
                at: Timestamp,
            ) -> DbResult<Vec<SessionRow>> {
                let sql = format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
                     AND expires_at > $2 ORDER BY created_at DESC, id DESC"
                );
                Ok(sqlx::query_as::<_, SessionRow>(&sql)
                    .bind(user_id)
                    .bind(at)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn revoke_session(&self, user_id: &str, id: &str) -> DbResult<()> {
                let done = sqlx::query(
                    "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND user_id = $3 \
                     AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(id)
                .bind(user_id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn revoke_other_sessions(
                &self,
                user_id: &str,
                keep: Option<&str>,
            ) -> DbResult<u64> {
                let done = sqlx::query(
                    "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL \
                     AND id <> $3",
                )
                .bind(now())
                .bind(user_id)
                .bind(keep.unwrap_or(""))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected())
            }

            async fn renew_session(
                &self,
                id: &str,
                at: Timestamp,
                expires_at: Timestamp,
            ) -> DbResult<()> {
                sqlx::query(
                    "UPDATE sessions SET renewed_at = $1, expires_at = $2 WHERE id = $3 \
                     AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(expires_at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn count_orgs(&self) -> DbResult<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM organizations")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(n)
            }

            async fn get_org(&self, id: &str) -> DbResult<Option<OrgRow>> {
                let sql = format!("SELECT {ORG_COLS_O} FROM organizations o WHERE o.id = $1");
                Ok(sqlx::query_as::<_, OrgRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn rename_org(&self, id: &str, name: &str) -> DbResult<OrgRow> {
                sqlx::query_as::<_, OrgRow>(
                    "UPDATE organizations SET name = $1, updated_at = $2 WHERE id = $3 \
                     RETURNING id, name, slug, created_at, updated_at",
                )
                .bind(name)
                .bind(now())
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
                .ok_or(DbError::NotFound)
            }

            async fn delete_org(&self, id: &str) -> DbResult<()> {
                let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn create_org_with_owner(
                &self,
                name: &str,
                app_name: &str,
                user_id: &str,
                only_if_empty: bool,
            ) -> DbResult<Option<(OrgRow, ApplicationRow)>> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                if only_if_empty {
                    // PostgreSQL: two first sign-ups at once must not both claim the instance (SQLite's
                    // BEGIN IMMEDIATE already serialises them).
                    if self.kind() == "postgres" {
                        sqlx::query("SELECT pg_advisory_xact_lock(72737368)")
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    }
                    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM organizations")
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    if n > 0 {
                        return Ok(None);
                    }
                }
                let at = now();
                let slug = format!(
                    "{}-{}",
                    super::sql::slugify(name),
                    crate::crypto::random_hex(3)
                );
                let org = sqlx::query_as::<_, OrgRow>(
                    "INSERT INTO organizations (id, name, slug, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $4) RETURNING id, name, slug, created_at, updated_at",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(name)
                .bind(slug)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                let app = sqlx::query_as::<_, ApplicationRow>(
                    "INSERT INTO applications (id, org_id, name, is_default, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) \
                     RETURNING id, org_id, name, is_default, created_at, updated_at",
                )
                .bind(format!("app_{}", uuid::Uuid::new_v4()))
                .bind(&org.id)
                .bind(app_name)
                .bind(true)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO members (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&org.id)
                .bind(user_id)
                .bind("owner")
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(Some((org, app)))
            }

            async fn member_role(&self, org_id: &str, user_id: &str) -> DbResult<Option<String>> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT role FROM members WHERE org_id = $1 AND user_id = $2")
                        .bind(org_id)
                        .bind(user_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_err)?;
                Ok(row.map(|r| r.0))
            }

            async fn application_with_role(
                &self,
                app_id: &str,
                user_id: &str,
            ) -> DbResult<Option<(ApplicationRow, Option<String>)>> {
                #[derive(sqlx::FromRow)]
                struct Row {
                    #[sqlx(flatten)]
                    app: ApplicationRow,
                    role: Option<String>,
                }
                let sql = format!(
                    "SELECT {APP_COLS_A}, m.role FROM applications a LEFT JOIN members m \
                     ON m.org_id = a.org_id AND m.user_id = $2 WHERE a.id = $1"
                );
                let row = sqlx::query_as::<_, Row>(&sql)
                    .bind(app_id)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(row.map(|r| (r.app, r.role)))
            }

            async fn list_memberships(&self, user_id: &str) -> DbResult<Vec<MembershipRow>> {
                let sql = format!(
                    "SELECT {ORG_COLS_O}, m.role FROM members m JOIN organizations o ON o.id = m.org_id \
                     WHERE m.user_id = $1 ORDER BY m.created_at, o.id"
                );
                Ok(sqlx::query_as::<_, MembershipRow>(&sql)
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn list_members(&self, org_id: &str) -> DbResult<Vec<MemberRow>> {
                Ok(sqlx::query_as::<_, MemberRow>(
                    "SELECT m.org_id, m.user_id, m.role, u.email, u.name, m.created_at FROM members m \
                     JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY m.created_at, u.id",
                )
                .bind(org_id)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?)
            }

            async fn set_member_role(&self, org_id: &str, user_id: &str, role: &str) -> DbResult<()> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                if role != "owner" {
                    Self::guard_last_owner(&mut tx, org_id, user_id).await?;
                }
                let done =
                    sqlx::query("UPDATE members SET role = $1 WHERE org_id = $2 AND user_id = $3")
                        .bind(role)
                        .bind(org_id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn remove_member(&self, org_id: &str, user_id: &str) -> DbResult<()> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                Self::guard_last_owner(&mut tx, org_id, user_id).await?;
                sqlx::query("DELETE FROM members WHERE org_id = $1 AND user_id = $2")
                    .bind(org_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE org_id = $2 AND created_by = $3 \
                     AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(org_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn insert_user_api_key(
                &self,
                key: &NewApiKey,
                created_by: &str,
            ) -> DbResult<ApiKeyRow> {
                Ok(sqlx::query_as::<_, ApiKeyRow>(
                    "INSERT INTO api_keys (id, org_id, application_id, name, key_hash, key_prefix, scopes, \
                     expires_at, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     RETURNING id, org_id, application_id, name, key_prefix, scopes, expires_at, revoked_at, \
                     last_used_at, created_at, created_by",
                )
                .bind(&key.id)
                .bind(&key.org_id)
                .bind(&key.application_id)
                .bind(&key.name)
                .bind(&key.key_hash)
                .bind(&key.key_prefix)
                .bind(sqlx::types::Json(&key.scopes))
                .bind(key.expires_at)
                .bind(now())
                .bind(created_by)
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?)
            }

            async fn insert_invitation(&self, r: &InvitationRow, token_hash: &str) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, created_at, \
                     expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&r.id)
                .bind(&r.org_id)
                .bind(&r.email)
                .bind(&r.role)
                .bind(token_hash)
                .bind(&r.invited_by)
                .bind(r.created_at)
                .bind(r.expires_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn find_invitation(&self, token_hash: &str) -> DbResult<Option<InvitationRow>> {
                let sql = format!("SELECT {INVITE_COLS} FROM invitations WHERE token_hash = $1");
                Ok(sqlx::query_as::<_, InvitationRow>(&sql)
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn pending_invitation_for(&self, email: &str, at: Timestamp) -> DbResult<bool> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT id FROM invitations WHERE email = $1 AND accepted_at IS NULL \
                     AND revoked_at IS NULL AND expires_at > $2 LIMIT 1",
                )
                .bind(email)
                .bind(at)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(row.is_some())
            }

            async fn list_invitations(
                &self,
                org_id: &str,
                at: Timestamp,
            ) -> DbResult<Vec<InvitationRow>> {
                let sql = format!(
                    "SELECT {INVITE_COLS} FROM invitations WHERE org_id = $1 AND accepted_at IS NULL \
                     AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, id DESC"
                );
                Ok(sqlx::query_as::<_, InvitationRow>(&sql)
                    .bind(org_id)
                    .bind(at)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?)
            }

            async fn set_invitation_role(&self, org_id: &str, id: &str, role: &str) -> DbResult<()> {
                let done = sqlx::query(
                    "UPDATE invitations SET role = $1 WHERE org_id = $2 AND id = $3 \
                     AND accepted_at IS NULL AND revoked_at IS NULL",
                )
                .bind(role)
                .bind(org_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn revoke_invitation(&self, org_id: &str, id: &str) -> DbResult<()> {
                let done = sqlx::query(
                    "UPDATE invitations SET revoked_at = $1 WHERE org_id = $2 AND id = $3 \
                     AND accepted_at IS NULL AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(org_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn accept_invitation(&self, inv: &InvitationRow, user_id: &str) -> DbResult<()> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let at = now();
                let done = sqlx::query(
                    "UPDATE invitations SET accepted_at = $1, accepted_by = $2 WHERE id = $3 \
                     AND accepted_at IS NULL AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(user_id)
                .bind(&inv.id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::Conflict(INVITATION_USED.into()));
                }
                sqlx::query(
                    "INSERT INTO members (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (org_id, user_id) DO NOTHING",
                )
                .bind(&inv.org_id)
                .bind(user_id)
                .bind(&inv.role)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn insert_password_reset(
                &self,
                token_hash: &str,
                user_id: &str,
                expires_at: Timestamp,
            ) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO recovery_tokens (token_hash, user_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(now())
                .bind(expires_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn use_password_reset(
                &self,
                token_hash: &str,
                at: Timestamp,
            ) -> DbResult<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as(
                    "UPDATE recovery_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL \
                     AND expires_at > $1 RETURNING user_id",
                )
                .bind(at)
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(row.map(|r| r.0))
            }

            async fn insert_sign_in_state(&self, r: &SignInStateRow) -> DbResult<()> {
                // Abandoned states go when new ones come.
                sqlx::query("DELETE FROM sign_in_states WHERE expires_at < $1")
                    .bind(now())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO sign_in_states (state_hash, provider, pkce_verifier, nonce, created_at, \
                     expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&r.state_hash)
                .bind(&r.provider)
                .bind(&r.pkce_verifier)
                .bind(&r.nonce)
                .bind(r.created_at)
                .bind(r.expires_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn take_sign_in_state(
                &self,
                state_hash: &str,
            ) -> DbResult<Option<SignInStateRow>> {
                Ok(sqlx::query_as::<_, SignInStateRow>(
                    "DELETE FROM sign_in_states WHERE state_hash = $1 RETURNING state_hash, provider, \
                     pkce_verifier, nonce, created_at, expires_at",
                )
                .bind(state_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?)
            }
        }
    };
}

impl_people_repo!(Sqlite);
impl_people_repo!(Postgres);
