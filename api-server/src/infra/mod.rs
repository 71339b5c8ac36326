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

/// Connects the database chosen by the configuration and applies the migrations.
pub async fn connect_database(config: &Config) -> Result<Arc<dyn Database>, InfraError> {
    let db: Arc<dyn Database> = match &config.database_url {
        Some(url) => {
            let db = database::connect_postgres(url.expose()).await.map_err(|e| InfraError {
                var: "DATABASE_URL",
                message: format!(
                    "cannot connect to PostgreSQL ({e}). Check that the server is running and reachable, \
                     test the URL with `psql \"$DATABASE_URL\"`, or unset DATABASE_URL to use the embedded \
                     SQLite database"
                ),
            })?;
            selected("database", "postgres");
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
        if config.s3.is_some() {
            return Err(InfraError {
                var: "S3_BUCKET",
                message:
                    "S3 object storage is not available in this version; unset S3_BUCKET to store \
                          objects under FS_STORAGE_PATH"
                        .into(),
            });
        }

        let storage =
            storage::FsObjectStore::new(&config.fs_storage_path).map_err(|e| InfraError {
                var: "FS_STORAGE_PATH",
                message: format!(
                    "cannot create {} ({e}); point FS_STORAGE_PATH at a writable directory",
                    config.fs_storage_path.display()
                ),
            })?;
        tracing::debug!(
            concern = "storage",
            r#impl = "fs",
            path = %config.fs_storage_path.display(),
            "adapter selected"
        );
        selected("queue", "local");
        selected("pubsub", "local");
        selected("rate_limiter", "memory");

        Ok(Infra {
            db,
            storage: Arc::new(storage),
            pubsub: Arc::new(pubsub::LocalPubSub::default()),
            rate_limiter: Arc::new(ratelimit::MemoryRateLimiter::default()),
            queue: Arc::new(queue::LocalQueue::new(Duration::from_secs(
                config.scheduler_poll_interval_seconds,
            ))),
        })
    }
}
