//! OAuth2 connections: the `OAuthRepo` part of [`super::Database`] — provider clients per application,
//! pending authorization requests, and the OAuth state of a connection with its single-flight refresh
//! lease (docs/connections.md). Written once for both backends.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::packages::CONN_COLS;
use super::sql::{map_err, SqlDatabase};
use super::tx::BeginWrite;
use super::*;

/// A provider client. `client_secret_encrypted` is a keyring envelope, never returned.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthClientRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub package_id: String,
    pub auth_key: String,
    pub label: String,
    pub client_id: String,
    pub client_secret_encrypted: Option<String>,
    pub is_default: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An authorization request waiting for its callback.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectStateRow {
    pub state_hash: String,
    pub org_id: String,
    pub application_id: String,
    pub end_user_id: Option<String>,
    pub actor: String,
    pub package_id: String,
    pub auth_key: String,
    pub oauth_client_id: String,
    pub pkce_verifier_encrypted: Option<String>,
    pub redirect_uri: String,
    pub scopes: Json<Vec<String>>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The OAuth side of a connection.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionOAuthRow {
    pub connection_id: String,
    pub oauth_client_id: Option<String>,
    pub status: String,
    pub status_message: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub scopes: Json<Vec<String>>,
    pub account: Json<Value>,
    pub refreshing_until: Option<Timestamp>,
    pub refreshed_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// A connection of a package with its OAuth side, if any (listing).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionListRow {
    pub id: String,
    pub end_user_id: Option<String>,
    pub auth_key: String,
    pub fields: Json<Vec<String>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub oauth_client_id: Option<String>,
    pub status: Option<String>,
    pub status_message: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub scopes: Option<Json<Vec<String>>>,
    pub account: Option<Json<Value>>,
}

/// New tokens of a connection, written with its OAuth side in one transaction.
#[derive(Debug, Clone)]
pub struct TokenUpdate {
    pub credentials_encrypted: String,
    pub fields: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub scopes: Vec<String>,
}

const CLIENT_COLS: &str = "id, org_id, application_id, package_id, auth_key, label, client_id, \
    client_secret_encrypted, is_default, created_at, updated_at";
const STATE_COLS: &str = "state_hash, org_id, application_id, end_user_id, actor, package_id, \
    auth_key, oauth_client_id, pkce_verifier_encrypted, redirect_uri, scopes, created_at, expires_at";
const OAUTH_COLS: &str = "connection_id, oauth_client_id, status, status_message, expires_at, \
    scopes, account, refreshing_until, refreshed_at, updated_at";

#[async_trait]
pub trait OAuthRepo: Send + Sync {
    /// Inserts a client; when it is the default, the auth's other clients stop being default.
    async fn insert_oauth_client(&self, r: &OAuthClientRow) -> DbResult<OAuthClientRow>;
    async fn get_oauth_client(
        &self,
        application_id: &str,
        id: &str,
    ) -> DbResult<Option<OAuthClientRow>>;
    async fn list_oauth_clients(
        &self,
        application_id: &str,
        package_id: &str,
        auth_key: &str,
    ) -> DbResult<Vec<OAuthClientRow>>;
    /// Writes label, client id, secret and `updated_at`.
    async fn update_oauth_client(&self, r: &OAuthClientRow) -> DbResult<OAuthClientRow>;
    /// Makes `id` the only default of its auth. `NotFound` when it is not the application's.
    async fn set_default_oauth_client(&self, application_id: &str, id: &str) -> DbResult<()>;
    async fn delete_oauth_client(&self, application_id: &str, id: &str) -> DbResult<()>;

    async fn insert_connect_state(&self, r: &ConnectStateRow) -> DbResult<()>;
    /// Deletes and returns the state (good for one callback).
    async fn take_connect_state(&self, state_hash: &str) -> DbResult<Option<ConnectStateRow>>;

    /// Stores the connection and its OAuth side in one transaction (the connect flow's last step).
    async fn save_oauth_connection(
        &self,
        connection: &ConnectionRow,
        oauth: &ConnectionOAuthRow,
    ) -> DbResult<ConnectionRow>;
    async fn get_connection_oauth(
        &self,
        connection_id: &str,
    ) -> DbResult<Option<ConnectionOAuthRow>>;
    async fn get_connection_by_id(&self, connection_id: &str) -> DbResult<Option<ConnectionRow>>;
    /// Forgets the OAuth side (the connection was replaced by pasted credentials).
    async fn clear_connection_oauth(&self, connection_id: &str) -> DbResult<()>;
    /// The application's connections of `package_id` (only `end_user_id`'s when given).
    async fn list_package_connections(
        &self,
        application_id: &str,
        package_id: &str,
        end_user_id: Option<&str>,
    ) -> DbResult<Vec<ConnectionListRow>>;

    /// Takes the refresh lease until `until` when no other holder has it (compare-and-swap); true when
    /// taken.
    async fn try_lease_refresh(
        &self,
        connection_id: &str,
        at: Timestamp,
        until: Timestamp,
    ) -> DbResult<bool>;
    /// Writes the refreshed tokens and releases the lease, atomically.
    async fn finish_refresh(
        &self,
        connection_id: &str,
        update: &TokenUpdate,
        at: Timestamp,
    ) -> DbResult<()>;
    /// Sets the status (and message) and releases the lease.
    async fn set_connection_status(
        &self,
        connection_id: &str,
        status: &str,
        message: Option<&str>,
        at: Timestamp,
    ) -> DbResult<()>;
}

macro_rules! impl_oauth_repo {
    ($db:ty) => {
        #[async_trait]
        impl OAuthRepo for SqlDatabase<$db> {
            async fn insert_oauth_client(&self, r: &OAuthClientRow) -> DbResult<OAuthClientRow> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                if r.is_default {
                    sqlx::query(
                        "UPDATE oauth_clients SET is_default = $1 WHERE application_id = $2 \
                         AND package_id = $3 AND auth_key = $4",
                    )
                    .bind(false)
                    .bind(&r.application_id)
                    .bind(&r.package_id)
                    .bind(&r.auth_key)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                let sql = format!(
                    "INSERT INTO oauth_clients ({CLIENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                     $8, $9, $10, $11) RETURNING {CLIENT_COLS}"
                );
                let row = sqlx::query_as::<_, OAuthClientRow>(&sql)
                    .bind(&r.id)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.package_id)
                    .bind(&r.auth_key)
                    .bind(&r.label)
                    .bind(&r.client_id)
                    .bind(&r.client_secret_encrypted)
                    .bind(r.is_default)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(row)
            }

            async fn get_oauth_client(
                &self,
                application_id: &str,
                id: &str,
            ) -> DbResult<Option<OAuthClientRow>> {
                let sql = format!(
                    "SELECT {CLIENT_COLS} FROM oauth_clients WHERE application_id = $1 AND id = $2"
                );
                sqlx::query_as::<_, OAuthClientRow>(&sql)
                    .bind(application_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn list_oauth_clients(
                &self,
                application_id: &str,
                package_id: &str,
                auth_key: &str,
            ) -> DbResult<Vec<OAuthClientRow>> {
                let sql = format!(
                    "SELECT {CLIENT_COLS} FROM oauth_clients WHERE application_id = $1 \
                     AND package_id = $2 AND auth_key = $3 ORDER BY created_at, id"
                );
                sqlx::query_as::<_, OAuthClientRow>(&sql)
                    .bind(application_id)
                    .bind(package_id)
                    .bind(auth_key)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn update_oauth_client(&self, r: &OAuthClientRow) -> DbResult<OAuthClientRow> {
                let sql = format!(
                    "UPDATE oauth_clients SET label = $1, client_id = $2, \
                     client_secret_encrypted = $3, updated_at = $4 \
                     WHERE application_id = $5 AND id = $6 RETURNING {CLIENT_COLS}"
                );
                sqlx::query_as::<_, OAuthClientRow>(&sql)
                    .bind(&r.label)
                    .bind(&r.client_id)
                    .bind(&r.client_secret_encrypted)
                    .bind(r.updated_at)
                    .bind(&r.application_id)
                    .bind(&r.id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }

            async fn set_default_oauth_client(
                &self,
                application_id: &str,
                id: &str,
            ) -> DbResult<()> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let sql = format!(
                    "SELECT {CLIENT_COLS} FROM oauth_clients WHERE application_id = $1 AND id = $2"
                );
                let row = sqlx::query_as::<_, OAuthClientRow>(&sql)
                    .bind(application_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)?;
                sqlx::query(
                    "UPDATE oauth_clients SET is_default = (id = $1) WHERE application_id = $2 \
                     AND package_id = $3 AND auth_key = $4",
                )
                .bind(id)
                .bind(application_id)
                .bind(&row.package_id)
                .bind(&row.auth_key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)
            }

            async fn delete_oauth_client(&self, application_id: &str, id: &str) -> DbResult<()> {
                let done =
                    sqlx::query("DELETE FROM oauth_clients WHERE application_id = $1 AND id = $2")
                        .bind(application_id)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }

            async fn insert_connect_state(&self, r: &ConnectStateRow) -> DbResult<()> {
                let sql = format!(
                    "INSERT INTO oauth_connect_states ({STATE_COLS}) VALUES ($1, $2, $3, $4, $5, \
                     $6, $7, $8, $9, $10, $11, $12, $13)"
                );
                sqlx::query(&sql)
                    .bind(&r.state_hash)
                    .bind(&r.org_id)
                    .bind(&r.application_id)
                    .bind(&r.end_user_id)
                    .bind(&r.actor)
                    .bind(&r.package_id)
                    .bind(&r.auth_key)
                    .bind(&r.oauth_client_id)
                    .bind(&r.pkce_verifier_encrypted)
                    .bind(&r.redirect_uri)
                    .bind(&r.scopes)
                    .bind(r.created_at)
                    .bind(r.expires_at)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn take_connect_state(
                &self,
                state_hash: &str,
            ) -> DbResult<Option<ConnectStateRow>> {
                let sql = format!(
                    "DELETE FROM oauth_connect_states WHERE state_hash = $1 RETURNING {STATE_COLS}"
                );
                sqlx::query_as::<_, ConnectStateRow>(&sql)
                    .bind(state_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn save_oauth_connection(
                &self,
                c: &ConnectionRow,
                o: &ConnectionOAuthRow,
            ) -> DbResult<ConnectionRow> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                // Replace whatever the actor had for this auth (a pasted token, an older grant).
                let mut qb = QueryBuilder::<$db>::new(
                    "DELETE FROM connections WHERE application_id = ",
                );
                qb.push_bind(c.application_id.clone())
                    .push(" AND package_id = ")
                    .push_bind(c.package_id.clone())
                    .push(" AND auth_key = ")
                    .push_bind(c.auth_key.clone());
                match &c.end_user_id {
                    Some(eu) => {
                        qb.push(" AND end_user_id = ").push_bind(eu.clone());
                    }
                    None => {
                        qb.push(" AND end_user_id IS NULL");
                    }
                }
                qb.build().execute(&mut *tx).await.map_err(map_err)?;
                let sql = format!(
                    "INSERT INTO connections ({CONN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                     $9, $10) RETURNING {CONN_COLS}"
                );
                let saved = sqlx::query_as::<_, ConnectionRow>(&sql)
                    .bind(&c.id)
                    .bind(&c.org_id)
                    .bind(&c.application_id)
                    .bind(&c.end_user_id)
                    .bind(&c.package_id)
                    .bind(&c.auth_key)
                    .bind(&c.credentials_encrypted)
                    .bind(&c.fields)
                    .bind(c.created_at)
                    .bind(c.updated_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let sql = format!(
                    "INSERT INTO connection_oauth ({OAUTH_COLS}) VALUES ($1, $2, $3, $4, $5, $6, \
                     $7, $8, $9, $10)"
                );
                sqlx::query(&sql)
                    .bind(&c.id)
                    .bind(&o.oauth_client_id)
                    .bind(&o.status)
                    .bind(&o.status_message)
                    .bind(o.expires_at)
                    .bind(&o.scopes)
                    .bind(&o.account)
                    .bind(o.refreshing_until)
                    .bind(o.refreshed_at)
                    .bind(o.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(saved)
            }

            async fn get_connection_oauth(
                &self,
                connection_id: &str,
            ) -> DbResult<Option<ConnectionOAuthRow>> {
                let sql =
                    format!("SELECT {OAUTH_COLS} FROM connection_oauth WHERE connection_id = $1");
                sqlx::query_as::<_, ConnectionOAuthRow>(&sql)
                    .bind(connection_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn get_connection_by_id(
                &self,
                connection_id: &str,
            ) -> DbResult<Option<ConnectionRow>> {
                let sql = format!("SELECT {CONN_COLS} FROM connections WHERE id = $1");
                sqlx::query_as::<_, ConnectionRow>(&sql)
                    .bind(connection_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn clear_connection_oauth(&self, connection_id: &str) -> DbResult<()> {
                sqlx::query("DELETE FROM connection_oauth WHERE connection_id = $1")
                    .bind(connection_id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn list_package_connections(
                &self,
                application_id: &str,
                package_id: &str,
                end_user_id: Option<&str>,
            ) -> DbResult<Vec<ConnectionListRow>> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT c.id, c.end_user_id, c.auth_key, c.fields, c.created_at, c.updated_at, \
                     o.oauth_client_id, o.status, o.status_message, o.expires_at, o.scopes, o.account \
                     FROM connections c LEFT JOIN connection_oauth o ON o.connection_id = c.id \
                     WHERE c.application_id = ",
                );
                qb.push_bind(application_id.to_string())
                    .push(" AND c.package_id = ")
                    .push_bind(package_id.to_string());
                if let Some(eu) = end_user_id {
                    qb.push(" AND c.end_user_id = ").push_bind(eu.to_string());
                }
                qb.push(" ORDER BY c.created_at, c.id");
                qb.build_query_as::<ConnectionListRow>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn try_lease_refresh(
                &self,
                connection_id: &str,
                at: Timestamp,
                until: Timestamp,
            ) -> DbResult<bool> {
                let done = sqlx::query(
                    "UPDATE connection_oauth SET refreshing_until = $1 WHERE connection_id = $2 \
                     AND (refreshing_until IS NULL OR refreshing_until < $3)",
                )
                .bind(until)
                .bind(connection_id)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn finish_refresh(
                &self,
                connection_id: &str,
                u: &TokenUpdate,
                at: Timestamp,
            ) -> DbResult<()> {
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                sqlx::query(
                    "UPDATE connections SET credentials_encrypted = $1, fields = $2, updated_at = $3 \
                     WHERE id = $4",
                )
                .bind(&u.credentials_encrypted)
                .bind(Json(u.fields.clone()))
                .bind(at)
                .bind(connection_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                sqlx::query(
                    "UPDATE connection_oauth SET status = 'connected', status_message = NULL, \
                     expires_at = $1, scopes = $2, refreshing_until = NULL, refreshed_at = $3, \
                     updated_at = $3 WHERE connection_id = $4",
                )
                .bind(u.expires_at)
                .bind(Json(u.scopes.clone()))
                .bind(at)
                .bind(connection_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)
            }

            async fn set_connection_status(
                &self,
                connection_id: &str,
                status: &str,
                message: Option<&str>,
                at: Timestamp,
            ) -> DbResult<()> {
                sqlx::query(
                    "UPDATE connection_oauth SET status = $1, status_message = $2, \
                     refreshing_until = NULL, updated_at = $3 WHERE connection_id = $4",
                )
                .bind(status)
                .bind(message)
                .bind(at)
                .bind(connection_id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }
        }
    };
}

impl_oauth_repo!(Sqlite);
impl_oauth_repo!(Postgres);
