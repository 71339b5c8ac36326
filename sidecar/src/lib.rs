//! Per-run credential-injecting proxy.
