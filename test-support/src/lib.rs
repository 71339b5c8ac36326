//! Test support: fake LLM, fake upstream, spawn_app().

pub mod fake_llm;
pub mod fake_sink;
pub mod fake_upstream;
