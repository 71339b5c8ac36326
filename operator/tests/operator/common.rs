//! Shared fixtures.

use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use operator::health::{ApiHealth, HealthProbe, PoolHealth, StaticHealthProbe};
use operator::metrics::Metrics;
use operator::{Appstrate, Context};

pub const NS: &str = "default";
pub const UID: &str = "6f1c2a3e-0000-4000-8000-00000000a001";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Parses an `Appstrate` from YAML, filling in the namespace and a fixed uid.
pub fn appstrate(yaml: &str) -> Appstrate {
    let mut a: Appstrate = serde_yaml::from_str(yaml).expect("fixture parses as an Appstrate");
    a.metadata.namespace.get_or_insert_with(|| NS.to_string());
    a.metadata.uid.get_or_insert_with(|| UID.to_string());
    a
}

pub fn example(tier: u8) -> Appstrate {
    let path = repo_root().join(format!("examples/appstrate-tier{tier}.yaml"));
    appstrate(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A `/health` answer of a serving API with the given pool.
pub fn healthy(pool: Option<(i64, i64)>) -> ApiHealth {
    ApiHealth {
        status: "healthy".into(),
        tier: None,
        sidecar_pool: pool.map(|(desired, ready)| PoolHealth {
            enabled: true,
            desired,
            ready,
        }),
    }
}

pub fn context(client: Client, health: Arc<dyn HealthProbe>) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        health,
        Arc::new(Metrics::default()),
        None,
    ))
}

pub fn unreachable_api() -> Arc<dyn HealthProbe> {
    Arc::new(StaticHealthProbe(Err("connection refused".into())))
}
