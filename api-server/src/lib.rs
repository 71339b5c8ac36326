//! Appstrate API server: configuration, infrastructure adapters, HTTP API and boot sequence.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod http;
pub mod infra;
pub mod metrics;
pub mod startup;
pub mod state;
pub mod telemetry;
