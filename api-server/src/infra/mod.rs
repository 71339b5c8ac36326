//! Infrastructure adapters, one trait per concern, chosen once at boot from the configuration (§4.1).
//! Nothing outside this module asks which tier the server runs on.

pub mod database;
pub mod pubsub;
pub mod queue;
pub mod ratelimit;
pub mod redis_client;
pub mod run_adapter;
pub mod sink_memory;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use database::Database;
use pubsub::PubSub;
use queue::JobQueue;
use ratelimit::RateLimiter;
use sink_memory::SinkMemory;
use storage::ObjectStore;

/// The selected adapters.
#[derive(Clone)]
pub struct Infra {
    pub db: Arc<dyn Database>,
    pub storage: Arc<dyn ObjectStore>,
    pub pubsub: Arc<dyn PubSub>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub queue: Arc<dyn JobQueue>,
    /// Replay memory, gap buffer and per-run lock of the event sink.
    pub sink_memory: Arc<dyn SinkMemory>,
    /// The shared Redis connection at Tier 2 (`REDIS_URL`), for `/health`.
    pub redis: Option<redis_client::Redis>,
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
    let db = open_database(config).await?;
    migrate_database(config, db.as_ref()).await?;
    Ok(db)
}

/// Applies the pending migrations; returns how many were applied.
pub async fn migrate_database(config: &Config, db: &dyn Database) -> Result<usize, InfraError> {
    db.migrate().await.map_err(|e| InfraError {
        var: if config.database_url.is_some() {
            "DATABASE_URL"
        } else {
            "SQLITE_PATH"
        },
        message: format!("migrations failed: {e}"),
    })
}

/// Connects the database chosen by the configuration, without migrating it.
pub async fn open_database(config: &Config) -> Result<Arc<dyn Database>, InfraError> {
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

/// The adapters that Redis makes shared between instances, and the Redis connection itself.
type SharedAdapters = (
    Arc<dyn PubSub>,
    Arc<dyn RateLimiter>,
    Arc<dyn JobQueue>,
    Arc<dyn SinkMemory>,
    Option<redis_client::Redis>,
);

/// The boot error for an unreachable Redis, with the troubleshooting hints (never the URL: it may carry a
/// password).
fn redis_error(endpoint: &str, reason: &str) -> InfraError {
    InfraError {
        var: "REDIS_URL",
        message: format!(
            "cannot use Redis at {endpoint} ({reason}). Check that the server is running and reachable \
             (`redis-cli -u \"$REDIS_URL\" ping` should answer PONG) and that the URL's password and \
             database are right, or unset REDIS_URL to use the in-process queue, pub/sub and rate limiter \
             (single instance only)"
        ),
    }
}

/// Connects the shared Redis of Tier 2; `ca_cert` is `REDIS_CA_CERT` (a PEM file) for `rediss://`.
pub async fn connect_redis(
    url: &str,
    ca_cert: Option<&std::path::Path>,
) -> Result<redis_client::Redis, InfraError> {
    let ca_pem = match ca_cert {
        None => None,
        Some(path) => Some(std::fs::read(path).map_err(|e| InfraError {
            var: "REDIS_CA_CERT",
            message: format!("cannot read {}: {e}", path.display()),
        })?),
    };
    let tls = url.starts_with("rediss://");
    redis_client::Redis::connect_with_ca(url, ca_pem)
        .await
        .map_err(|e| match e {
            redis_client::ConnectError::Url(m) => InfraError {
                var: if m.contains("certificate") {
                    "REDIS_CA_CERT"
                } else {
                    "REDIS_URL"
                },
                message: format!(
                    "{m}; expected redis://[:password@]host[:port][/db] or rediss://… (TLS)"
                ),
            },
            redis_client::ConnectError::Connect { endpoint, reason } => {
                let mut e = redis_error(&endpoint, &reason);
                if tls {
                    e.message.push_str(
                        ". With rediss://, the server certificate must be valid for the URL's host and \
                         signed by a CA of the system store, or by the CA in the PEM file named by \
                         REDIS_CA_CERT",
                    );
                }
                e
            }
        })
}

impl Infra {
    /// Connects every adapter the configuration asks for and runs the database migrations.
    pub async fn connect(config: &Config) -> Result<Infra, InfraError> {
        let db = connect_database(config).await?;

        let storage = connect_storage(config).await?;
        let poll = Duration::from_secs(config.scheduler_poll_interval_seconds);
        let (pubsub, rate_limiter, queue, sink_memory, redis): SharedAdapters = match &config
            .redis_url
        {
            Some(url) => {
                let redis = connect_redis(url.expose(), config.redis_ca_cert.as_deref()).await?;
                let pubsub = pubsub::RedisPubSub::connect(redis.clone())
                    .await
                    .map_err(|e| redis_error(redis.endpoint(), &e.to_string()))?;
                for concern in ["queue", "pubsub", "rate_limiter", "sink_memory"] {
                    tracing::debug!(
                        concern,
                        r#impl = "redis",
                        endpoint = redis.endpoint(),
                        "adapter selected"
                    );
                }
                (
                    Arc::new(pubsub),
                    Arc::new(ratelimit::RedisRateLimiter::new(redis.clone())),
                    Arc::new(queue::RedisQueue::new(
                        redis.clone(),
                        queue::RedisQueueOptions::new(poll),
                    )),
                    Arc::new(sink_memory::RedisSinkMemory::new(redis.clone())),
                    Some(redis),
                )
            }
            None => {
                selected("queue", "local");
                selected("pubsub", "local");
                selected("rate_limiter", "memory");
                selected("sink_memory", "local");
                (
                    Arc::new(pubsub::LocalPubSub::default()),
                    Arc::new(ratelimit::MemoryRateLimiter::default()),
                    Arc::new(queue::LocalQueue::new(poll)),
                    Arc::new(sink_memory::LocalSinkMemory::default()),
                    None,
                )
            }
        };

        Ok(Infra {
            db,
            storage,
            pubsub,
            rate_limiter,
            queue,
            sink_memory,
            redis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_tls_redis_names_the_ca_variable_not_the_password() {
        // Port 1 on loopback: nothing listens there.
        let e = connect_redis("rediss://:s3cret-pw@127.0.0.1:1", None)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.var, "REDIS_URL");
        assert!(e.message.contains("REDIS_CA_CERT"), "{}", e.message);
        assert!(!e.message.contains("s3cret-pw"), "{}", e.message);
        let e = connect_redis(
            "rediss://127.0.0.1:1",
            Some(std::path::Path::new("/nonexistent/ca.pem")),
        )
        .await
        .err()
        .expect("refused");
        assert_eq!(e.var, "REDIS_CA_CERT");
    }

    #[tokio::test]
    async fn an_unparseable_redis_url_names_the_variable() {
        let e = connect_redis("redis://:s3cret-pw@[bad", None)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.var, "REDIS_URL");
        assert!(!e.message.contains("s3cret-pw"), "{}", e.message);
    }
}
