//! The API server's integration tests: one binary, one module per area.

/// Runs test functions written once on SQLite (Tier 0) and on PostgreSQL (Tier 1), so that the tiers
/// cannot drift: `on_both_backends!(f);` next to `async fn f(backend: Backend)` expands to a module `f`
/// with a `sqlite` and a `postgres` test (`f::sqlite`, `f::postgres`). The function passes the backend
/// to `test_support::spawn_app_on`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(test_support::Backend::Sqlite).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(test_support::Backend::Postgres).await
                }
            }
        )*
    };
}

mod boot;
mod compose;
mod conformance;
mod conventions;
mod crash;
mod dashboard;
mod dashboard_connections;
mod dashboard_forms;
mod dashboard_models;
mod database;
mod docker;
mod docker_slots;
mod documents;
mod history;
mod idempotency;
mod installer;
mod lag;
mod layering;
mod mcp;
mod mcp_docker;
mod memory;
mod migrate_data;
mod models;
mod oauth;
mod openapi;
mod overload;
mod package_visibility;
mod packages;
mod people;
mod people_mail;
mod ratelimit;
mod runs;
mod schedule_credentials;
mod schedules;
mod sink;
mod social;
mod storage;
mod tenancy;
mod tier2;
mod tiers;
mod traces;
mod uploads;
mod webhook_cap;
mod webhooks;
mod workspace;
