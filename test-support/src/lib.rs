//! Test support: fake LLM, fake upstream, spawn_app().
