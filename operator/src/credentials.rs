//! Step 2 of the reconcile: the generated Secrets. Each is looked up by name (a Secret someone
//! created under that name, without the operator's labels, is used when it has the keys), created
//! once when absent, and never regenerated while a volume holds data initialised with the old
//! values: new random credentials would not match it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::desired::ChildKind;
use crate::labels::{child_name, Component, MANAGER};
use crate::reconcile::{is_terminating, Error, Existing};
use crate::secrets::{self, generated_secrets, new_secret};
use crate::v1alpha1::Appstrate;

/// Why a generated Secret cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProblem {
    /// It exists without every key the API needs (`Secret x lacks key(s) …`).
    Incomplete(String),
    /// It is gone while a volume holds data initialised with its values; not regenerated.
    Lost(String),
}

impl SecretProblem {
    pub fn message(&self) -> &str {
        match self {
            SecretProblem::Incomplete(m) | SecretProblem::Lost(m) => m,
        }
    }
}

/// The outcome of [`ensure_generated`].
#[derive(Debug, Default)]
pub struct Generated {
    /// Names of the Secrets created by this reconcile.
    pub created: Vec<String>,
    /// Secrets that cannot be used, by name.
    pub problems: BTreeMap<String, SecretProblem>,
}

/// Post parameters with the operator's field manager.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    }
}

/// The live PVCs of this instance (listed by its labels) that hold data initialised with the
/// values of `component`'s generated Secret.
fn volumes_of(app: &Appstrate, component: Component, existing: &Existing) -> Vec<String> {
    let name = app.name_any();
    let mut out: Vec<String> = existing
        .iter()
        .filter(|((kind, _), obj)| {
            *kind == ChildKind::PersistentVolumeClaim && !is_terminating(obj)
        })
        .map(|((_, pvc), _)| pvc.clone())
        .filter(|pvc| match component {
            // The boot keys encrypt what the API stores: on the data volume or in PostgreSQL.
            Component::BootSecrets => {
                *pvc == child_name(&name, "data")
                    || *pvc == format!("data-{}-0", child_name(&name, Component::Postgres.as_str()))
            }
            other => *pvc == format!("data-{}-0", child_name(&name, other.as_str())),
        })
        .collect();
    out.sort();
    out
}

fn lost_message(secret: &str, component: Component, volumes: &[String]) -> String {
    let keys = secrets::required_keys(component).join(", ");
    let volumes_text = volumes.join(", ");
    match component {
        Component::BootSecrets => format!(
            "Secret {secret} is gone but {volumes_text} holds data written with its keys (CONNECTION_ENCRYPTION_KEY encrypts the stored connection credentials), so the operator does not generate new ones. Recreate {secret} from a backup with the keys {keys}; or create it by hand with new values (stored connection credentials can then no longer be decrypted); or delete {volumes_text} to start with empty data"
        ),
        _ => format!(
            "Secret {secret} is gone but the volume {volumes_text} holds data initialised with its credentials, so the operator does not generate new ones (they would not match). Recreate {secret} from a backup with the keys {keys}; or delete the PersistentVolumeClaim {volumes_text} to start with empty data"
        ),
    }
}

/// Makes sure every generated Secret the resource needs exists and is usable.
pub async fn ensure_generated(
    app: &Appstrate,
    client: &Client,
    existing: &Existing,
) -> Result<Generated, Error> {
    let ns = app.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut out = Generated::default();
    // A Send generator seeded from the OS (ThreadRng cannot cross an await).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    for which in generated_secrets(app) {
        let keys = secrets::required_keys(which.component);
        // Listed by the instance labels, or else looked up by name: a Secret created by hand
        // under this name has no labels.
        let mut found: Option<Secret> = match existing.get(&(ChildKind::Secret, which.name.clone()))
        {
            Some(v) => Some(serde_json::from_value(v.clone())?),
            None => api.get_opt(&which.name).await?,
        };
        if found.is_none() {
            let volumes = volumes_of(app, which.component, existing);
            if !volumes.is_empty() {
                out.problems.insert(
                    which.name.clone(),
                    SecretProblem::Lost(lost_message(&which.name, which.component, &volumes)),
                );
                continue;
            }
            match api
                .create(&post_params(), &new_secret(app, &which, &mut rng))
                .await
            {
                Ok(_) => {
                    out.created.push(which.name.clone());
                    continue;
                }
                // Created meanwhile: read what is there.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    found = api.get_opt(&which.name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let problem = match &found {
            Some(secret) => secrets::missing_keys_message(secret, &which.name, keys).map(|m| {
                SecretProblem::Incomplete(format!(
                    "{m}: add them to the Secret, or delete it while no volume holds data so the operator generates it"
                ))
            }),
            None => Some(SecretProblem::Incomplete(format!(
                "Secret {} not found",
                which.name
            ))),
        };
        if let Some(p) = problem {
            out.problems.insert(which.name.clone(), p);
        }
    }
    Ok(out)
}
