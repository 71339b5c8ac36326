//! Test support: fake LLM, fake upstream, spawn_app().

pub mod app;
pub mod bench;
pub mod browser;
pub mod docker;
pub mod fake_llm;
pub mod fake_mcp;
pub mod fake_oauth;
pub mod fake_oidc;
pub mod fake_sink;
pub mod fake_smtp;
pub mod fake_upstream;
pub mod otlp_receiver;
pub mod people;
pub mod services;
pub mod webhook_receiver;
pub use app::{spawn_app, spawn_app_on, spawn_app_with, Backend, TestApp};
