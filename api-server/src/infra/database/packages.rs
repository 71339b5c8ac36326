//! Package persistence: the `PackageRepo` part of [`super::Database`], written once for both backends.
//!
//! Tables (migrations `0002_packages.sql`): `packages` (one row per `@scope/name` per org; `org_id` NULL for
//! system packages), `package_versions` (immutable), `package_installs` (package ↔ application) and
//! `connections` (encrypted integration credentials per application or end-user).

use super::tx::BeginWrite;
use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::sql::{map_err, SqlDatabase};
#[allow(unused_imports)]
use super::*;

/// One package (`@scope/name`) of an organization, or a system package (`org_id` NULL).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PackageRow {
    /// Surrogate key (UUID); the public id is `package_id`.
    pub id: String,
    pub org_id: Option<String>,
    /// `@scope/name`
    pub package_id: String,
    /// `@scope`
    pub scope: String,
    pub name: String,
    /// `agent`, `skill` or `integration`
    #[sqlx(rename = "type")]
    pub kind: String,
    /// `local` or `system`
    pub source: String,
    /// The highest semver among the versions.
    pub latest_version: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A package row with the manifest of its latest version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PackageWithManifest {
    #[sqlx(flatten)]
    pub package: PackageRow,
    pub manifest: Json<Value>,
}

/// One immutable published version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PackageVersionRow {
    pub id: i64,
    pub package_pk: String,
    pub version: String,
    /// `sha256-<base64>` of the archive bytes
    pub integrity: String,
    pub size: i32,
    pub manifest: Json<Value>,
    pub storage_key: String,
    pub created_at: Timestamp,
}

/// What a new version needs; the package row is created on first use.
#[derive(Debug, Clone)]
pub struct NewPackageVersion {
    pub org_id: Option<String>,
    pub package_id: String,
    pub scope: String,
    pub name: String,
    pub kind: String,
    pub source: String,
    pub version: String,
    pub integrity: String,
    pub size: i32,
    pub manifest: Value,
    pub storage_key: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Whether this version becomes the latest (the caller compares semver).
    pub is_latest: bool,
}

/// Integration credentials of an application (`end_user_id` NULL) or of one of its end-users.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub end_user_id: Option<String>,
    /// The integration's `@scope/name`.
    pub package_id: String,
    pub auth_key: String,
    /// `v1:<kid>:…` envelope (§17).
    pub credentials_encrypted: String,
    /// Credential field names, never values.
    pub fields: Json<Vec<String>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Package filter for listings: what an application sees (system packages plus its installs).
#[derive(Debug, Clone, Default)]
pub struct PackageFilter {
    pub kind: Option<String>,
}

#[async_trait]
pub trait PackageRepo: Send + Sync {
    /// The system package (`org_id` NULL) with this `@scope/name`.
    async fn find_system_package(&self, package_id: &str) -> DbResult<Option<PackageRow>>;
    /// The organization's own package with this `@scope/name`.
    async fn find_org_package(
        &self,
        org_id: &str,
        package_id: &str,
    ) -> DbResult<Option<PackageRow>>;
    /// The package as the application sees it: installed in the application, else a system package.
    async fn find_visible_package(
        &self,
        application_id: &str,
        package_id: &str,
    ) -> DbResult<Option<PackageRow>>;
    async fn get_package_version(
        &self,
        package_pk: &str,
        version: &str,
    ) -> DbResult<Option<PackageVersionRow>>;
    /// Every version of a package (unordered; callers sort by semver).
    async fn list_package_versions(&self, package_pk: &str) -> DbResult<Vec<PackageVersionRow>>;
    /// Inserts a version, creating the package row on first use and moving `latest_version` (with
    /// `display_name`, `description` and `type`) when `is_latest`. `Conflict` when the version exists.
    async fn insert_package_version(
        &self,
        new: &NewPackageVersion,
    ) -> DbResult<(PackageRow, PackageVersionRow)>;
    /// Installs a package into an application (no-op when already installed).
    async fn install_package(&self, application_id: &str, package_pk: &str) -> DbResult<()>;
    /// One page of the packages visible to the application, newest first, with the latest manifest.
    /// The cursor is a package id (`@scope/name`).
    async fn list_visible_packages(
        &self,
        application_id: &str,
        filter: &PackageFilter,
        page: &Page,
    ) -> DbResult<Paged<PackageWithManifest>>;

    /// Removes an organization package from an application in one transaction: its install and the
    /// application's connections of it. When no other application has it installed any more, the package
    /// row, its versions and every connection of it in the organization go too, and the storage keys of
    /// its versions are returned (the caller deletes the artifacts). `NotFound` when it was not installed.
    async fn remove_package(
        &self,
        application_id: &str,
        package: &PackageRow,
    ) -> DbResult<Option<Vec<String>>>;

    /// Inserts or replaces the credentials of (application, end-user or none, package, auth key).
    async fn upsert_connection(&self, row: &ConnectionRow) -> DbResult<ConnectionRow>;
    async fn get_connection(
        &self,
        application_id: &str,
        end_user_id: Option<&str>,
        package_id: &str,
        auth_key: &str,
    ) -> DbResult<Option<ConnectionRow>>;
    /// `NotFound` when there is no such connection.
    async fn delete_connection(
        &self,
        application_id: &str,
        end_user_id: Option<&str>,
        package_id: &str,
        auth_key: &str,
    ) -> DbResult<()>;
}

const PKG_COLS: &str = "p.id, p.org_id, p.package_id, p.scope, p.name, p.type, p.source, \
     p.latest_version, p.display_name, p.description, p.created_at, p.updated_at";
const VERSION_COLS: &str =
    "id, package_pk, version, integrity, size, manifest, storage_key, created_at";
pub(super) const CONN_COLS: &str =
    "id, org_id, application_id, end_user_id, package_id, auth_key, \
     credentials_encrypted, fields, created_at, updated_at";

/// `WHERE` fragment: packages visible to application `$1` (system, or installed in it).
const VISIBLE: &str = "(p.org_id IS NULL OR EXISTS (SELECT 1 FROM package_installs i \
     WHERE i.package_pk = p.id AND i.application_id = $1))";

macro_rules! impl_packages_repo {
    ($db:ty) => {
        impl SqlDatabase<$db> {
            async fn package_by_pk(&self, pk: &str) -> DbResult<PackageRow> {
                let sql = format!("SELECT {PKG_COLS} FROM packages p WHERE p.id = $1");
                sqlx::query_as::<_, PackageRow>(&sql)
                    .bind(pk)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .ok_or(DbError::NotFound)
            }
        }

        #[async_trait]
        impl PackageRepo for SqlDatabase<$db> {
            async fn find_system_package(&self, package_id: &str) -> DbResult<Option<PackageRow>> {
                let sql = format!(
                    "SELECT {PKG_COLS} FROM packages p WHERE p.org_id IS NULL AND p.package_id = $1"
                );
                sqlx::query_as::<_, PackageRow>(&sql)
                    .bind(package_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn find_org_package(
                &self,
                org_id: &str,
                package_id: &str,
            ) -> DbResult<Option<PackageRow>> {
                let sql = format!(
                    "SELECT {PKG_COLS} FROM packages p WHERE p.org_id = $1 AND p.package_id = $2"
                );
                sqlx::query_as::<_, PackageRow>(&sql)
                    .bind(org_id)
                    .bind(package_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn find_visible_package(
                &self,
                application_id: &str,
                package_id: &str,
            ) -> DbResult<Option<PackageRow>> {
                // An installed organization package shadows a system package of the same id.
                let sql = format!(
                    "SELECT {PKG_COLS} FROM packages p WHERE {VISIBLE} AND p.package_id = $2 \
                     ORDER BY CASE WHEN p.org_id IS NULL THEN 1 ELSE 0 END LIMIT 1"
                );
                sqlx::query_as::<_, PackageRow>(&sql)
                    .bind(application_id)
                    .bind(package_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn get_package_version(
                &self,
                package_pk: &str,
                version: &str,
            ) -> DbResult<Option<PackageVersionRow>> {
                let sql = format!(
                    "SELECT {VERSION_COLS} FROM package_versions WHERE package_pk = $1 AND version = $2"
                );
                sqlx::query_as::<_, PackageVersionRow>(&sql)
                    .bind(package_pk)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn list_package_versions(
                &self,
                package_pk: &str,
            ) -> DbResult<Vec<PackageVersionRow>> {
                let sql = format!(
                    "SELECT {VERSION_COLS} FROM package_versions WHERE package_pk = $1 ORDER BY id"
                );
                sqlx::query_as::<_, PackageVersionRow>(&sql)
                    .bind(package_pk)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn insert_package_version(
                &self,
                new: &NewPackageVersion,
            ) -> DbResult<(PackageRow, PackageVersionRow)> {
                let at = now();
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let existing: Option<(String,)> = match &new.org_id {
                    Some(org) => sqlx::query_as(
                        "SELECT id FROM packages WHERE org_id = $1 AND package_id = $2",
                    )
                    .bind(org.clone())
                    .bind(new.package_id.clone())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?,
                    None => sqlx::query_as(
                        "SELECT id FROM packages WHERE org_id IS NULL AND package_id = $1",
                    )
                    .bind(new.package_id.clone())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?,
                };
                let pk = match existing {
                    Some((pk,)) => {
                        if new.is_latest {
                            sqlx::query(
                                "UPDATE packages SET latest_version = $1, type = $2, display_name = $3, \
                                 description = $4, updated_at = $5 WHERE id = $6",
                            )
                            .bind(new.version.clone())
                            .bind(new.kind.clone())
                            .bind(new.display_name.clone())
                            .bind(new.description.clone())
                            .bind(at)
                            .bind(pk.clone())
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        }
                        pk
                    }
                    None => {
                        let pk = uuid::Uuid::new_v4().to_string();
                        sqlx::query(
                            "INSERT INTO packages (id, org_id, package_id, scope, name, type, source, \
                             latest_version, display_name, description, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                        )
                        .bind(pk.clone())
                        .bind(new.org_id.clone())
                        .bind(new.package_id.clone())
                        .bind(new.scope.clone())
                        .bind(new.name.clone())
                        .bind(new.kind.clone())
                        .bind(new.source.clone())
                        .bind(new.version.clone())
                        .bind(new.display_name.clone())
                        .bind(new.description.clone())
                        .bind(at)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        pk
                    }
                };
                let sql = format!(
                    "INSERT INTO package_versions (package_pk, version, integrity, size, manifest, \
                     storage_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {VERSION_COLS}"
                );
                let version = sqlx::query_as::<_, PackageVersionRow>(&sql)
                    .bind(pk.clone())
                    .bind(new.version.clone())
                    .bind(new.integrity.clone())
                    .bind(new.size)
                    .bind(Json(new.manifest.clone()))
                    .bind(new.storage_key.clone())
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                let package = self.package_by_pk(&pk).await?;
                Ok((package, version))
            }

            async fn install_package(&self, application_id: &str, package_pk: &str) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO package_installs (application_id, package_pk, created_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (application_id, package_pk) DO NOTHING",
                )
                .bind(application_id)
                .bind(package_pk)
                .bind(now())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn list_visible_packages(
                &self,
                application_id: &str,
                filter: &PackageFilter,
                page: &Page,
            ) -> DbResult<Paged<PackageWithManifest>> {
                let mut cursor = None;
                if let Some(after) = &page.starting_after {
                    let sql = format!(
                        "SELECT p.created_at, p.id FROM packages p WHERE {VISIBLE} AND p.package_id = $2 \
                         ORDER BY CASE WHEN p.org_id IS NULL THEN 1 ELSE 0 END LIMIT 1"
                    );
                    let at: Option<(Timestamp, String)> = sqlx::query_as(&sql)
                        .bind(application_id)
                        .bind(after.clone())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_err)?;
                    cursor = Some(at.ok_or(DbError::UnknownCursor)?);
                }
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {PKG_COLS}, v.manifest FROM packages p JOIN package_versions v \
                     ON v.package_pk = p.id AND v.version = p.latest_version \
                     WHERE (p.org_id IS NULL OR EXISTS (SELECT 1 FROM package_installs i \
                     WHERE i.package_pk = p.id AND i.application_id = "
                ));
                qb.push_bind(application_id.to_string()).push("))");
                if let Some(kind) = &filter.kind {
                    qb.push(" AND p.type = ").push_bind(kind.clone());
                }
                if let Some((at, id)) = cursor {
                    qb.push(" AND (p.created_at < ")
                        .push_bind(at)
                        .push(" OR (p.created_at = ")
                        .push_bind(at)
                        .push(" AND p.id < ")
                        .push_bind(id)
                        .push("))");
                }
                qb.push(" ORDER BY p.created_at DESC, p.id DESC LIMIT ")
                    .push_bind(page.limit as i64 + 1);
                let mut items: Vec<PackageWithManifest> = qb
                    .build_query_as()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                let has_more = items.len() > page.limit as usize;
                items.truncate(page.limit as usize);
                Ok(Paged { items, has_more })
            }

            async fn remove_package(
                &self,
                application_id: &str,
                package: &PackageRow,
            ) -> DbResult<Option<Vec<String>>> {
                let org_id = package.org_id.clone().ok_or(DbError::NotFound)?;
                let mut tx = self.pool.begin_write().await.map_err(map_err)?;
                let done = sqlx::query(
                    "DELETE FROM package_installs WHERE application_id = $1 AND package_pk = $2",
                )
                .bind(application_id)
                .bind(&package.id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    tx.rollback().await.map_err(map_err)?;
                    return Err(DbError::NotFound);
                }
                sqlx::query("DELETE FROM connections WHERE application_id = $1 AND package_id = $2")
                    .bind(application_id)
                    .bind(&package.package_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let (left,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM package_installs WHERE package_pk = $1")
                        .bind(&package.id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                if left > 0 {
                    tx.commit().await.map_err(map_err)?;
                    return Ok(None);
                }
                let keys: Vec<(String,)> =
                    sqlx::query_as("SELECT storage_key FROM package_versions WHERE package_pk = $1")
                        .bind(&package.id)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(map_err)?;
                sqlx::query("DELETE FROM connections WHERE org_id = $1 AND package_id = $2")
                    .bind(&org_id)
                    .bind(&package.package_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("DELETE FROM package_versions WHERE package_pk = $1")
                    .bind(&package.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("DELETE FROM packages WHERE id = $1")
                    .bind(&package.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(Some(keys.into_iter().map(|(k,)| k).collect()))
            }

            async fn upsert_connection(&self, row: &ConnectionRow) -> DbResult<ConnectionRow> {
                let at = now();
                // Update first (keeping id and createdAt); insert when there was nothing. A concurrent
                // insert of the same key loses on the unique index and retries as an update.
                for _ in 0..2 {
                    let mut qb = QueryBuilder::<$db>::new(
                        "UPDATE connections SET credentials_encrypted = ",
                    );
                    qb.push_bind(row.credentials_encrypted.clone())
                        .push(", fields = ")
                        .push_bind(Json(row.fields.0.clone()))
                        .push(", updated_at = ")
                        .push_bind(at)
                        .push(" WHERE application_id = ")
                        .push_bind(row.application_id.clone())
                        .push(" AND package_id = ")
                        .push_bind(row.package_id.clone())
                        .push(" AND auth_key = ")
                        .push_bind(row.auth_key.clone());
                    match &row.end_user_id {
                        Some(eu) => {
                            qb.push(" AND end_user_id = ").push_bind(eu.clone());
                        }
                        None => {
                            qb.push(" AND end_user_id IS NULL");
                        }
                    }
                    qb.push(format!(" RETURNING {CONN_COLS}"));
                    if let Some(updated) = qb
                        .build_query_as::<ConnectionRow>()
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_err)?
                    {
                        return Ok(updated);
                    }
                    let sql = format!(
                        "INSERT INTO connections ({CONN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         RETURNING {CONN_COLS}"
                    );
                    match sqlx::query_as::<_, ConnectionRow>(&sql)
                        .bind(row.id.clone())
                        .bind(row.org_id.clone())
                        .bind(row.application_id.clone())
                        .bind(row.end_user_id.clone())
                        .bind(row.package_id.clone())
                        .bind(row.auth_key.clone())
                        .bind(row.credentials_encrypted.clone())
                        .bind(Json(row.fields.0.clone()))
                        .bind(at)
                        .bind(at)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err)
                    {
                        Ok(inserted) => return Ok(inserted),
                        Err(DbError::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(DbError::Conflict("connections".into()))
            }

            async fn get_connection(
                &self,
                application_id: &str,
                end_user_id: Option<&str>,
                package_id: &str,
                auth_key: &str,
            ) -> DbResult<Option<ConnectionRow>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {CONN_COLS} FROM connections WHERE application_id = "
                ));
                qb.push_bind(application_id.to_string())
                    .push(" AND package_id = ")
                    .push_bind(package_id.to_string())
                    .push(" AND auth_key = ")
                    .push_bind(auth_key.to_string());
                match end_user_id {
                    Some(eu) => {
                        qb.push(" AND end_user_id = ").push_bind(eu.to_string());
                    }
                    None => {
                        qb.push(" AND end_user_id IS NULL");
                    }
                }
                qb.build_query_as::<ConnectionRow>()
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn delete_connection(
                &self,
                application_id: &str,
                end_user_id: Option<&str>,
                package_id: &str,
                auth_key: &str,
            ) -> DbResult<()> {
                let mut qb = QueryBuilder::<$db>::new("DELETE FROM connections WHERE application_id = ");
                qb.push_bind(application_id.to_string())
                    .push(" AND package_id = ")
                    .push_bind(package_id.to_string())
                    .push(" AND auth_key = ")
                    .push_bind(auth_key.to_string());
                match end_user_id {
                    Some(eu) => {
                        qb.push(" AND end_user_id = ").push_bind(eu.to_string());
                    }
                    None => {
                        qb.push(" AND end_user_id IS NULL");
                    }
                }
                let done = qb.build().execute(&self.pool).await.map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(DbError::NotFound);
                }
                Ok(())
            }
        }
    };
}

impl_packages_repo!(Sqlite);
impl_packages_repo!(Postgres);
