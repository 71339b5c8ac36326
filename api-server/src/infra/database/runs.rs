//! Run persistence: the `RunRepo` part of [`super::Database`], written once for both backends.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};

use super::sql::SqlDatabase;
#[allow(unused_imports)]
use super::*;

#[async_trait]
pub trait RunRepo: Send + Sync {}

macro_rules! impl_runs_repo {
    ($db:ty) => {
        #[async_trait]
        impl RunRepo for SqlDatabase<$db> {}
    };
}

impl_runs_repo!(Sqlite);
impl_runs_repo!(Postgres);
