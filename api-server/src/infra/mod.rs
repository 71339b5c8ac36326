//! Infrastructure adapters, one trait per concern, chosen once at boot from the configuration (§4.1).
//! Nothing outside this module asks which tier the server runs on.

pub mod database;
pub mod pubsub;
pub mod queue;
pub mod ratelimit;
pub mod run_adapter;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use database::Database;
use pubsub::PubSub;
use queue::JobQueue;
use ratelimit::RateLimiter;
use storage::ObjectStore;

/// The selected adapters.
#[derive(Clone)]
pub struct Infra {
    pub db: Arc<dyn Database>,
    pub storage: Arc<dyn ObjectStore>,
    pub pubsub: Arc<dyn PubSub>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub queue: Arc<dyn JobQueue>,
}

/// A boot failure that names the variable to look at.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct InfraError {
    pub var: &'static str,
    pub message: String,
}

fn selected(concern: &str, implementation: &str) {
    tracing::debug!(concern, r#impl = implementation, "adapter selected");
}

/// The boot error for a PostgreSQL server that cannot be used: names `DATABASE_URL` (without its
/// password) and the checks to make.
fn postgres_unreachable(url: &str, e: &sqlx::Error) -> InfraError {
    InfraError {
        var: "DATABASE_URL",
        message: format!(
            "cannot connect to PostgreSQL at {} ({e}). Check that DATABASE_URL points to an accessible \
             PostgreSQL instance, that the server is running (e.g. `docker compose ps`), and test the \
             connection with `psql \"$DATABASE_URL\"`; or unset DATABASE_URL to use the embedded SQLite \
             database",
            database::describe_postgres_url(url)
        ),
    }
}

/// Connects the database chosen by the configuration and applies the migrations.
pub async fn connect_database(config: &Config) -> Result<Arc<dyn Database>, InfraError> {
    let db: Arc<dyn Database> = match &config.database_url {
        Some(url) => {
            let db = database::connect_postgres(url.expose())
                .await
                .map_err(|e| postgres_unreachable(url.expose(), &e))?;
            tracing::debug!(
                concern = "database",
                r#impl = "postgres",
                endpoint = %database::describe_postgres_url(url.expose()),
                "adapter selected"
            );
            Arc::new(db)
        }
        None => {
            let db = database::connect_sqlite(&config.sqlite_path)
                .await
                .map_err(|e| InfraError {
                    var: "SQLITE_PATH",
                    message: format!(
                        "cannot open SQLite database {} ({e}); check that DATA_DIR is writable",
                        config.sqlite_path.display()
                    ),
                })?;
            tracing::debug!(
                concern = "database",
                r#impl = "sqlite",
                path = %config.sqlite_path.display(),
                "adapter selected"
            );
            Arc::new(db)
        }
    };
    db.migrate().await.map_err(|e| InfraError {
        var: if config.database_url.is_some() {
            "DATABASE_URL"
        } else {
            "SQLITE_PATH"
        },
        message: format!("migrations failed: {e}"),
    })?;
    Ok(db)
}

/// The object store: S3 when `S3_BUCKET` is set (reading objects left under `FS_STORAGE_PATH` by an
/// earlier filesystem deployment, see [`storage::PromotedStore`]), else the filesystem.
pub async fn connect_storage(config: &Config) -> Result<Arc<dyn ObjectStore>, InfraError> {
    let open_fs = || {
        storage::FsObjectStore::new(&config.fs_storage_path).map_err(|e| InfraError {
            var: "FS_STORAGE_PATH",
            message: format!(
                "cannot create {} ({e}); point FS_STORAGE_PATH at a writable directory",
                config.fs_storage_path.display()
            ),
        })
    };
    match &config.s3 {
        Some(s3) => {
            let store: Arc<dyn ObjectStore> = Arc::new(storage::S3ObjectStore::connect(s3).await?);
            tracing::debug!(
                concern = "storage",
                r#impl = "s3",
                bucket = %s3.bucket,
                endpoint = s3.endpoint.as_deref().unwrap_or("aws"),
                "adapter selected"
            );
            // The filesystem is only consulted when an earlier deployment left a directory there.
            let legacy = if config.fs_storage_path.is_dir() {
                Some(open_fs()?)
            } else {
                None
            };
            Ok(match legacy {
                Some(legacy) => {
                    tracing::debug!(
                        path = %config.fs_storage_path.display(),
                        "objects missing from S3 are read from FS_STORAGE_PATH"
                    );
                    Arc::new(storage::PromotedStore::new(store, legacy))
                }
                None => store,
            })
        }
        None => {
            let store = open_fs()?;
            tracing::debug!(
                concern = "storage",
                r#impl = "fs",
                path = %config.fs_storage_path.display(),
                "adapter selected"
            );
            Ok(Arc::new(store))
        }
    }
}

impl Infra {
    /// Connects every adapter the configuration asks for and runs the database migrations.
    pub async fn connect(config: &Config) -> Result<Infra, InfraError> {
        let db = connect_database(config).await?;

        if config.redis_url.is_some() {
            return Err(InfraError {
                var: "REDIS_URL",
                message:
                    "the Redis queue, pub/sub and rate limiter are not available in this version; \
                          unset REDIS_URL to use the in-process adapters"
                        .into(),
            });
        }
        let storage = connect_storage(config).await?;
        selected("queue", "local");
        selected("pubsub", "local");
        selected("rate_limiter", "memory");

        Ok(Infra {
            db,
            storage,
            pubsub: Arc::new(pubsub::LocalPubSub::default()),
            rate_limiter: Arc::new(ratelimit::MemoryRateLimiter::default()),
            queue: Arc::new(queue::LocalQueue::new(Duration::from_secs(
                config.scheduler_poll_interval_seconds,
            ))),
        })
    }
}
