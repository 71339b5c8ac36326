//! Names and labels shared by the desired objects, the generated Secrets and pruning.

use std::collections::BTreeMap;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const PART_OF: &str = "app.kubernetes.io/part-of";

/// Field manager for server-side apply and the `managed-by` label value.
pub const MANAGER: &str = "appstrate-operator";
/// Annotation on the API pod template whose change rolls the Deployment.
pub const CONFIG_HASH: &str = "appstrate.dev/config-hash";

/// The part of an installation an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Api,
    Postgres,
    Redis,
    Minio,
    BootSecrets,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Postgres => "postgres",
            Component::Redis => "redis",
            Component::Minio => "minio",
            Component::BootSecrets => "boot-secrets",
        }
    }
}

/// All five `app.kubernetes.io/*` labels of an object.
pub fn labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    let mut l = selector(instance, component);
    l.insert(MANAGED_BY.into(), MANAGER.into());
    l.insert(PART_OF.into(), "appstrate".into());
    l
}

/// The stable subset used in pod selectors (never changes for a live workload).
pub fn selector(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), "appstrate".to_string()),
        (INSTANCE.to_string(), instance.to_string()),
        (COMPONENT.to_string(), component.as_str().to_string()),
    ])
}

/// Label selector matching every object the operator manages for one instance.
pub fn instance_selector(instance: &str) -> String {
    format!("{INSTANCE}={instance},{MANAGED_BY}={MANAGER}")
}

/// `<name>-<suffix>`, the naming rule of every child.
pub fn child_name(instance: &str, suffix: &str) -> String {
    format!("{instance}-{suffix}")
}

pub fn boot_secret_name(instance: &str) -> String {
    child_name(instance, "boot-secrets")
}
