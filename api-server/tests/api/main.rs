//! The API server's integration tests: one binary, one module per area.

mod boot;
mod conventions;
mod crash;
mod packages;
mod ratelimit;
mod runs;
mod schedules;
mod sink;
mod tenancy;
mod webhooks;
