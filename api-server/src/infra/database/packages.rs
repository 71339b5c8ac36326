//! Package persistence: the `PackageRepo` part of [`super::Database`], written once for both backends.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};

use super::sql::SqlDatabase;
#[allow(unused_imports)]
use super::*;

#[async_trait]
pub trait PackageRepo: Send + Sync {}

macro_rules! impl_packages_repo {
    ($db:ty) => {
        #[async_trait]
        impl PackageRepo for SqlDatabase<$db> {}
    };
}

impl_packages_repo!(Sqlite);
impl_packages_repo!(Postgres);
