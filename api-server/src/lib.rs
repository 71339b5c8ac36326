//! Appstrate API server: configuration, infrastructure adapters, HTTP API and boot sequence.

// `ApiError` carries a full problem document; it is built once per failed request, so its size on the
// error path does not matter.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod config;
pub mod crypto;
pub mod documents;
pub mod domain;
pub mod http;
pub mod infra;
pub mod instance;
pub mod integrations;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod net;
pub mod packages;
pub mod people;
pub mod retention;
pub mod runs;
pub mod schedules;
pub mod server;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod web;
pub mod webhooks;
