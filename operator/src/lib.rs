//! Appstrate Kubernetes operator: the `Appstrate` CRD (`v1alpha1`), the pure `desired_objects`
//! builder, and the reconcile pipeline (validate → secrets → build → apply → prune → observe →
//! status) with its controller plumbing (leader election, metrics, health endpoints).

pub mod credentials;
pub mod desired;
pub mod finalizer;
pub mod health;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod quantity;
pub mod reconcile;
pub mod secrets;
pub mod server;
pub mod status;
pub mod v1alpha1;
pub mod validate;

pub use desired::{desired_objects, ChildKind, DesiredObject};
pub use reconcile::{error_policy, reconcile, reconcile_appstrate, Context, Error};
pub use v1alpha1::{Appstrate, AppstrateSpec, AppstrateStatus};

use kube::CustomResourceExt;

/// The `User-Agent` of the operator's requests, `appstrate-operator/<version>`: the API server
/// names the field manager of a write without an explicit one (such as the Events the kube
/// recorder publishes) after it.
pub fn user_agent() -> String {
    format!("{}/{}", labels::MANAGER, env!("CARGO_PKG_VERSION"))
}

/// Sends [`user_agent`] with every request of clients built from `config`.
pub fn identify(config: &mut kube::Config) {
    if let Ok(value) = http::HeaderValue::from_str(&user_agent()) {
        config
            .headers
            .retain(|(name, _)| name != http::header::USER_AGENT);
        config.headers.push((http::header::USER_AGENT, value));
    }
}

/// Path of the generated CRD, relative to the repository root.
pub const CRD_PATH: &str = "crds/appstrate.dev_appstrates.yaml";
/// Path of the chart's copy of the CRD, relative to the repository root.
pub const CHART_CRD_PATH: &str = "charts/appstrate-operator/templates/crds/appstrates.yaml";

/// The CRD as YAML: the exact content of `crds/appstrate.dev_appstrates.yaml`.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&Appstrate::crd()).unwrap_or_default()
}

/// The chart template: the CRD behind `crds.install`, annotated `helm.sh/resource-policy: keep`
/// when `crds.keep`. Removing every line that starts with `{{` gives back [`crd_yaml`].
pub fn chart_crd_template() -> String {
    let mut out = String::from("{{- if .Values.crds.install }}\n");
    for line in crd_yaml().lines() {
        out.push_str(line);
        out.push('\n');
        if line == "metadata:" {
            out.push_str(
                "{{- if .Values.crds.keep }}{{ \"\\n  annotations:\\n    helm.sh/resource-policy: keep\" }}{{- end }}\n",
            );
        }
    }
    out.push_str("{{- end }}\n");
    out
}

/// The chart template with its Helm lines removed.
pub fn strip_helm_lines(template: &str) -> String {
    template
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .map(|l| format!("{l}\n"))
        .collect()
}
