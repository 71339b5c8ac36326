//! `appstrate db migrate-data`: copies a stopped Tier 0 SQLite database into an empty PostgreSQL one
//! (SPEC §5.1).
//!
//! 1. The SQLite file is opened with `query_only` and an exclusive lock held for the whole copy: a server
//!    still using the file makes the lock fail, and no server can start on it during the copy. Its
//!    applied migrations must be exactly the binary's.
//! 2. The target is migrated (its own advisory lock), then, in ONE transaction: refused when any table
//!    has rows (unless `--replace`, which truncates them first), every table copied in foreign-key order
//!    with per-column conversions, serial sequences moved past the copied ids, and per-table row counts
//!    compared. Any failure rolls everything back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteLockingMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Postgres, QueryBuilder, Row, SqlitePool};

use super::schema::{introspect_postgres, introspect_sqlite, PgKind, MIGRATIONS_TABLE};
use super::sql::{
    connect_postgres_within, describe_postgres_url, POSTGRES_MIGRATOR, SQLITE_MIGRATOR,
};

/// Why `migrate-data` stopped. Nothing was written to the target in either case.
#[derive(Debug, thiserror::Error)]
pub enum MigrateDataError {
    /// The inputs were refused before any copy (exit 2).
    #[error("{0}")]
    Refused(String),
    /// The copy failed and was rolled back (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl MigrateDataError {
    pub fn exit_code(&self) -> i32 {
        match self {
            MigrateDataError::Refused(_) => 2,
            MigrateDataError::Failed(_) => 1,
        }
    }
}

use MigrateDataError::{Failed, Refused};

/// How long the source's lock is waited for before it is reported in use.
const SOURCE_BUSY_WAIT: Duration = Duration::from_secs(3);

/// Rows per `INSERT` statement (bounded by PostgreSQL's 65,535 bind parameters).
const BATCH_ROWS: usize = 500;

/// The SQLite file named by `--from`: `sqlite:PATH`, `sqlite://PATH` or a plain path.
pub fn source_path(from: &str) -> PathBuf {
    let path = from
        .strip_prefix("sqlite://")
        .or_else(|| from.strip_prefix("sqlite:"))
        .unwrap_or(from);
    let path = path.split('?').next().unwrap_or(path);
    PathBuf::from(path)
}

async fn open_source(path: &Path) -> Result<SqlitePool, MigrateDataError> {
    if !path.is_file() {
        return Err(Refused(format!(
            "--from: {} does not exist or is not a file; pass the Tier 0 database (by default \
             ./data/appstrate.db, or $SQLITE_PATH)",
            path.display()
        )));
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .locking_mode(SqliteLockingMode::Exclusive)
        .pragma("query_only", "ON")
        // A running server holds the file for as long as it runs; a server that has just stopped may
        // still be checkpointing for a moment. Waiting a little tells the two apart.
        .busy_timeout(SOURCE_BUSY_WAIT);
    let in_use = |e: &sqlx::Error| matches!(e, sqlx::Error::Database(d) if d.message().contains("locked") || d.code().as_deref() == Some("5"));
    let describe = |e: sqlx::Error| {
        if in_use(&e) {
            Refused(format!(
                "--from: {} is in use by another process ({e}): stop the Tier 0 server (appstrate \
                 serve or appstrate dev) that uses it, then retry",
                path.display()
            ))
        } else {
            Refused(format!(
                "--from: cannot read {} as a SQLite database ({e})",
                path.display()
            ))
        }
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(describe)?;
    // The first read takes the exclusive lock (WAL databases in exclusive locking mode), and fails when
    // a server still holds the file.
    sqlx::query("SELECT COUNT(*) FROM sqlite_master")
        .execute(&pool)
        .await
        .map_err(describe)?;
    Ok(pool)
}

async fn check_source_version(pool: &SqlitePool, path: &Path) -> Result<(), MigrateDataError> {
    let has_table: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
            .bind(MIGRATIONS_TABLE)
            .fetch_optional(pool)
            .await
            .map_err(|e| Refused(format!("--from: cannot read {}: {e}", path.display())))?;
    if has_table.is_none() {
        return Err(Refused(format!(
            "--from: {} is not an Appstrate database (it has no {MIGRATIONS_TABLE} table)",
            path.display()
        )));
    }
    let applied: Vec<(i64,)> = sqlx::query_as(&format!(
        "SELECT version FROM {MIGRATIONS_TABLE} WHERE success ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .map_err(|e| Refused(format!("--from: cannot read {}: {e}", path.display())))?;
    let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
    let expected: Vec<i64> = SQLITE_MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    if applied != expected {
        let found = applied
            .last()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into());
        let want = expected
            .last()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into());
        return Err(Refused(format!(
            "source schema version {found}, expected {want}: start this version of appstrate once on the \
             SQLite file (or run `appstrate db migrate` with SQLITE_PATH pointing at it) so that its \
             migrations are applied, then stop it and retry"
        )));
    }
    Ok(())
}

fn bind_value(
    b: &mut sqlx::query_builder::Separated<'_, '_, Postgres, &'static str>,
    row: &SqliteRow,
    table: &str,
    column: &str,
    kind: PgKind,
) -> Result<(), MigrateDataError> {
    let rowid: i64 = row.try_get("__rowid").unwrap_or_default();
    let bad = |e: sqlx::Error| {
        Failed(format!(
            "{table}.{column} (SQLite rowid {rowid}): cannot convert the value for PostgreSQL ({e}); \
             nothing was committed"
        ))
    };
    match kind {
        PgKind::Text => {
            b.push_bind(row.try_get::<Option<String>, _>(column).map_err(bad)?);
        }
        PgKind::Json => {
            // The stored text goes to PostgreSQL's own JSON parser, unchanged.
            let v: Option<String> = row.try_get(column).map_err(bad)?;
            b.push("CAST(")
                .push_bind_unseparated(v)
                .push_unseparated(" AS jsonb)");
        }
        PgKind::Timestamp => {
            let v: Option<DateTime<Utc>> = row.try_get(column).map_err(bad)?;
            if let Some(t) = v {
                if t.nanosecond() % 1000 != 0 {
                    return Err(Failed(format!(
                        "{table}.{column} (SQLite rowid {rowid}): {t} has sub-microsecond precision, which \
                         PostgreSQL cannot store exactly; nothing was committed"
                    )));
                }
            }
            b.push_bind(v);
        }
        PgKind::Boolean => {
            b.push_bind(row.try_get::<Option<bool>, _>(column).map_err(bad)?);
        }
        PgKind::Int4 => {
            b.push_bind(row.try_get::<Option<i32>, _>(column).map_err(bad)?);
        }
        PgKind::Int8 => {
            b.push_bind(row.try_get::<Option<i64>, _>(column).map_err(bad)?);
        }
        PgKind::Float8 => {
            b.push_bind(row.try_get::<Option<f64>, _>(column).map_err(bad)?);
        }
        PgKind::Bytes => {
            b.push_bind(row.try_get::<Option<Vec<u8>>, _>(column).map_err(bad)?);
        }
    }
    Ok(())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

async fn insert_batch(
    tx: &mut sqlx::PgConnection,
    table: &str,
    columns: &[(String, PgKind)],
    rows: &[SqliteRow],
) -> Result<(), MigrateDataError> {
    let names: Vec<String> = columns.iter().map(|(c, _)| quote(c)).collect();
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "INSERT INTO {} ({}) ",
        quote(table),
        names.join(", ")
    ));
    let mut failure = None;
    qb.push_values(rows, |mut b, row| {
        for (column, kind) in columns {
            if failure.is_some() {
                b.push("NULL");
                continue;
            }
            if let Err(e) = bind_value(&mut b, row, table, column, *kind) {
                failure = Some(e);
                b.push("NULL");
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    qb.build().execute(&mut *tx).await.map_err(|e| {
        Failed(format!(
            "inserting into {table} failed ({e}); nothing was committed"
        ))
    })?;
    Ok(())
}

/// Copies `from` (a SQLite path or URL) into `to` (a PostgreSQL URL). `progress` receives one line per
/// table as it is copied. Returns the verified row count of every table, in copy order.
pub async fn migrate_data(
    from: &str,
    to: &str,
    replace: bool,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Vec<(String, i64)>, MigrateDataError> {
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        return Err(Refused(
            "--to: must be a postgres:// or postgresql:// URL (the Tier 1 DATABASE_URL)".into(),
        ));
    }
    let path = source_path(from);
    let source = open_source(&path).await?;
    check_source_version(&source, &path).await?;

    let target_name = describe_postgres_url(to);
    let target = connect_postgres_within(to, Duration::from_secs(5), 2)
        .await
        .map_err(|e| {
            Failed(format!(
                "--to: cannot connect to PostgreSQL at {target_name} ({e}). Check that the server is \
                 running and reachable and that the database exists, and test the URL with `psql \"<url>\"`"
            ))
        })?;
    POSTGRES_MIGRATOR
        .run(target.pool())
        .await
        .map_err(|e| Failed(format!("--to: migrating {target_name} failed: {e}")))?;

    let source_schema = introspect_sqlite(&source)
        .await
        .map_err(|e| Failed(format!("--from: cannot read the schema: {e}")))?;
    let (target_schema, kinds) = introspect_postgres(target.pool())
        .await
        .map_err(|e| Failed(format!("--to: cannot read the schema: {e}")))?;
    let differences = source_schema.diff(&target_schema, "SQLite", "PostgreSQL");
    if !differences.is_empty() {
        return Err(Failed(format!(
            "the two schemas differ, refusing to copy: {}",
            differences.join("; ")
        )));
    }
    let order = target_schema.dependency_order();

    let fail =
        |what: &str, e: sqlx::Error| Failed(format!("{what} failed ({e}); nothing was committed"));
    let mut tx = target
        .pool()
        .begin()
        .await
        .map_err(|e| fail("starting the target transaction", e))?;

    let mut non_empty = Vec::new();
    for table in &order {
        let (has_rows,): (bool,) =
            sqlx::query_as(&format!("SELECT EXISTS (SELECT 1 FROM {})", quote(table)))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| fail("reading the target", e))?;
        if has_rows {
            non_empty.push(table.clone());
        }
    }
    if !non_empty.is_empty() {
        if !replace {
            return Err(Refused(format!(
                "--to: the target database is not empty (table {} has rows{}); migrate into an empty \
                 database, or pass --replace to delete the target's rows first",
                non_empty[0],
                if non_empty.len() > 1 {
                    format!(", and {} more: {}", non_empty.len() - 1, non_empty[1..].join(", "))
                } else {
                    String::new()
                }
            )));
        }
        let all: Vec<String> = order.iter().map(|t| quote(t)).collect();
        sqlx::query(&format!(
            "TRUNCATE {} RESTART IDENTITY CASCADE",
            all.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(|e| fail("emptying the target (--replace)", e))?;
        progress(format!("--replace: emptied {} target tables", order.len()));
    }

    let mut copied: BTreeMap<String, i64> = BTreeMap::new();
    for table in &order {
        let columns = kinds.get(table).cloned().unwrap_or_default();
        let names: Vec<String> = columns.iter().map(|(c, _)| quote(c)).collect();
        let select = format!(
            "SELECT rowid AS __rowid, {} FROM {} ORDER BY rowid",
            names.join(", "),
            quote(table)
        );
        let mut rows = sqlx::query(&select).fetch(&source);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut n: i64 = 0;
        while let Some(row) = rows.try_next().await.map_err(|e| {
            Failed(format!(
                "--from: reading {table} failed ({e}); nothing was committed"
            ))
        })? {
            batch.push(row);
            if batch.len() == BATCH_ROWS {
                insert_batch(&mut tx, table, &columns, &batch).await?;
                n += batch.len() as i64;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            insert_batch(&mut tx, table, &columns, &batch).await?;
            n += batch.len() as i64;
        }
        progress(format!("{table}: {n} rows copied"));
        copied.insert(table.clone(), n);
    }

    // Serial columns continue after the copied ids.
    let serials: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| fail("reading the target's sequences", e))?;
    for (table, column) in serials {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE((SELECT MAX({}) FROM {}), 0) + 1, false)",
            quote(&column),
            quote(&table)
        ))
        .bind(&table)
        .bind(&column)
        .execute(&mut *tx)
        .await
        .map_err(|e| fail("resetting a sequence", e))?;
    }

    let mut report = Vec::new();
    for table in &order {
        let (source_rows,): (i64,) =
            sqlx::query_as(&format!("SELECT COUNT(*) FROM {}", quote(table)))
                .fetch_one(&source)
                .await
                .map_err(|e| fail("counting the source rows", e))?;
        let (target_rows,): (i64,) =
            sqlx::query_as(&format!("SELECT COUNT(*) FROM {}", quote(table)))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| fail("counting the target rows", e))?;
        if source_rows != target_rows || copied.get(table) != Some(&source_rows) {
            let _ = tx.rollback().await;
            return Err(Failed(format!(
                "row count mismatch for {table}: {source_rows} in the source, {target_rows} in the target; \
                 the copy was rolled back and nothing was committed"
            )));
        }
        report.push((table.clone(), target_rows));
    }
    tx.commit()
        .await
        .map_err(|e| fail("committing the copy", e))?;
    source.close().await;
    target.pool().close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_forms() {
        assert_eq!(
            source_path("sqlite:./data/a.db"),
            PathBuf::from("./data/a.db")
        );
        assert_eq!(
            source_path("sqlite:///abs/a.db"),
            PathBuf::from("/abs/a.db")
        );
        assert_eq!(source_path("sqlite:a.db?mode=ro"), PathBuf::from("a.db"));
        assert_eq!(source_path("/abs/a.db"), PathBuf::from("/abs/a.db"));
    }

    #[tokio::test]
    async fn a_missing_or_foreign_source_is_refused_before_the_target_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.db");
        let mut sink = |_: String| {};
        // An unreachable target is never contacted: the source is checked first.
        let target = "postgres://u:pw@127.0.0.1:1/x";
        let e = migrate_data(missing.to_str().unwrap(), target, false, &mut sink)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("--from") && e.to_string().contains("nope.db"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.db");
        std::fs::write(
            &garbage,
            b"this is not a database, just some text long enough",
        )
        .unwrap();
        let e = migrate_data(garbage.to_str().unwrap(), target, false, &mut sink)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("cannot read"), "{e}");

        let e = migrate_data(garbage.to_str().unwrap(), "mysql://x", false, &mut sink)
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("--to:"), "{e}");
    }

    /// One connection on a WAL database, as a server holds it. (A pool is avoided here: sqlx's
    /// `Pool::close` can miss a connection that its min-connections task opens at the same moment, and
    /// these tests close right after opening.)
    async fn wal_connection(path: &Path) -> sqlx::SqliteConnection {
        use sqlx::ConnectOptions;
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_older_schema_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut db = wal_connection(&path).await;
        // Only the first migration applied: an older binary's database.
        let first = SQLITE_MIGRATOR.iter().next().unwrap();
        sqlx::raw_sql(&first.sql).execute(&mut db).await.unwrap();
        sqlx::query(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
        )
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations VALUES ($1, 'x', CURRENT_TIMESTAMP, 1, x'00', 0)",
        )
        .bind(first.version)
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::Connection::close(db).await.unwrap();
        let mut sink = |_: String| {};
        let e = migrate_data(
            path.to_str().unwrap(),
            "postgres://127.0.0.1:1/x",
            false,
            &mut sink,
        )
        .await
        .unwrap_err();
        let latest = SQLITE_MIGRATOR.iter().map(|m| m.version).max().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().starts_with(&format!(
                "source schema version {}, expected {latest}",
                first.version
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_source_still_open_by_a_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        // A live server keeps a connection open on the WAL database.
        let mut db = wal_connection(&path).await;
        SQLITE_MIGRATOR.run(&mut db).await.unwrap();
        let mut sink = |_: String| {};
        let e = migrate_data(
            path.to_str().unwrap(),
            "postgres://127.0.0.1:1/x",
            false,
            &mut sink,
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        sqlx::Connection::close(db).await.unwrap();
        // Stopped: the source passes its checks and the (closed) target port is what fails now.
        let e = migrate_data(
            path.to_str().unwrap(),
            "postgres://127.0.0.1:1/x",
            false,
            &mut sink,
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        assert!(e.to_string().starts_with("--to: cannot connect"), "{e}");
    }
}
