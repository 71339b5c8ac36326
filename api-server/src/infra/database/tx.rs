//! Write transactions that cannot fail half-way on SQLite.
//!
//! SQLite's default `BEGIN` is deferred: a transaction that reads first takes the write lock only at its
//! first write, and if another connection committed in between, SQLite answers `SQLITE_BUSY` at once
//! (a stale WAL snapshot cannot be upgraded; the busy timeout does not apply). `BEGIN IMMEDIATE` takes the
//! write lock up front, so concurrent writers wait for each other within the busy timeout instead.
//! PostgreSQL keeps its plain `BEGIN`.

use std::future::Future;

use sqlx::{Pool, Postgres, Sqlite, Transaction};

pub(super) trait BeginWrite<DB: sqlx::Database> {
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, DB>, sqlx::Error>> + Send;
}

impl BeginWrite<Sqlite> for Pool<Sqlite> {
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite<Postgres> for Pool<Postgres> {
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Postgres>, sqlx::Error>> + Send {
        self.begin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::database::connect_sqlite;

    /// A reader-then-writer transaction racing another writer: with a deferred `BEGIN` SQLite fails it with
    /// SQLITE_BUSY (snapshot); with `BEGIN IMMEDIATE` both commit.
    #[tokio::test]
    async fn concurrent_read_then_write_transactions_both_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = connect_sqlite(&dir.path().join("t.db")).await.unwrap();
        let pool = db.pool.clone();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let mut handles = Vec::new();
        for i in 0..16 {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move {
                let mut tx = pool.begin_write().await?;
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
                    .fetch_one(&mut *tx)
                    .await?;
                tokio::task::yield_now().await;
                sqlx::query("INSERT INTO t (id, v) VALUES ($1, $2)")
                    .bind(i)
                    .bind(n.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }));
        }
        for h in handles {
            h.await.unwrap().expect("every transaction commits");
        }
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 16);
    }
}
