//! Step 6 of the reconcile: what the applied children, the Secrets and the API's `/health`
//! say, turned into conditions by [`crate::status`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::Value;
use tracing::debug;

use crate::credentials::SecretProblem;
use crate::desired::{ChildKind, Plan, API_PORT};
use crate::labels::{self, child_name, Component, COMPONENT};
use crate::reconcile::{Context, Error};
use crate::secrets;
use crate::status::{self, ApiObservation, Backing, Cond};
use crate::v1alpha1::{Appstrate, Endpoints, RunAdapter};

/// The namespace label that lets the privileged Docker engine container of `runAdapter: docker`
/// be created under Pod Security Admission.
pub const PRIVILEGED_NAMESPACE_LABEL: &str = "pod-security.kubernetes.io/enforce=privileged";

pub struct Observed {
    pub conditions: Vec<Cond>,
    pub ready: Cond,
    pub endpoints: Endpoints,
    pub sidecar_pool: Option<crate::v1alpha1::SidecarPoolStatus>,
    pub waiting_for_user_secret: bool,
    /// A generated credential Secret is gone while its data volume exists.
    pub credentials_lost: bool,
    /// The API's ReplicaSet cannot create pods (`FailedCreate`).
    pub pods_failed: bool,
}

fn ready_replicas(obj: Option<&Value>) -> i32 {
    obj.and_then(|o| o["status"]["readyReplicas"].as_i64())
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

/// Checks a user-supplied Secret holds the keys the API needs; `Some(message)` when not.
async fn check_user_secret(
    api: &Api<Secret>,
    name: &str,
    keys: &[&str],
) -> Result<Option<String>, Error> {
    match api.get_opt(name).await? {
        None => Ok(Some(format!("Secret {name} not found"))),
        Some(s) => Ok(secrets::missing_keys_message(&s, name, keys)),
    }
}

/// The `ReplicaFailure` condition of the API's ReplicaSets (newest first), such as a pod that
/// Pod Security Admission forbids: `ReplicaSet <name>: <reason>: <message>`.
async fn replica_failure(ctx: &Context, ns: &str, instance: &str) -> Option<String> {
    let selector = format!(
        "{},{COMPONENT}={}",
        labels::instance_selector(instance),
        Component::Api.as_str()
    );
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut sets = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        // Best effort: an RBAC without ReplicaSet reads only loses the detail.
        Err(e) => {
            debug!(error = %e, "could not list the API's ReplicaSets");
            return None;
        }
    };
    sets.sort_by_key(|rs| std::cmp::Reverse(rs.creation_timestamp()));
    sets.iter().find_map(|rs| {
        let c = rs
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
        Some(format!(
            "ReplicaSet {}: {}: {}",
            rs.name_any(),
            c.reason.as_deref().unwrap_or("FailedCreate"),
            c.message.as_deref().unwrap_or_default()
        ))
    })
}

/// What pods that cannot be created need, when Pod Security Admission refuses the privileged
/// Docker engine container.
pub fn failed_create_hint(message: &str, docker: bool) -> String {
    if docker && (message.contains("PodSecurity") || message.contains("privileged")) {
        format!(
            "{message}. runAdapter: docker runs a privileged Docker engine container in each API pod: label the namespace {PRIVILEGED_NAMESPACE_LABEL}, or use runAdapter: process"
        )
    } else {
        message.to_string()
    }
}

pub async fn observe(
    app: &Appstrate,
    ctx: &Context,
    ns: &str,
    applied: &BTreeMap<(ChildKind, String), Value>,
    generated: &BTreeMap<String, SecretProblem>,
) -> Result<Observed, Error> {
    let name = app.name_any();
    let spec = &app.spec;
    let plan = Plan::of(spec);
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut waiting_for_user_secret = false;
    let mut credentials_lost = false;
    let svc_host =
        |suffix: &str, port: u16| format!("{}.{ns}.svc:{port}", child_name(&name, suffix));

    let mut managed = |component: Component| {
        let statefulset = child_name(&name, component.as_str());
        match generated.get(&statefulset) {
            Some(SecretProblem::Lost(message)) => {
                credentials_lost = true;
                Backing::CredentialsLost {
                    message: message.clone(),
                }
            }
            problem => Backing::Managed {
                ready: ready_replicas(applied.get(&(ChildKind::StatefulSet, statefulset.clone()))),
                statefulset,
                missing: problem.map(|p| p.message().to_string()),
            },
        }
    };

    let mut endpoints = Endpoints {
        api: Some(format!(
            "http://{}.{ns}.svc:{API_PORT}",
            child_name(&name, "api")
        )),
        ..Endpoints::default()
    };

    let database = if plan.postgres_managed {
        endpoints.database = Some(svc_host("postgres", 5432));
        managed(Component::Postgres)
    } else if plan.postgres_external {
        endpoints.database = Some("external".into());
        let r = &spec
            .postgres
            .as_ref()
            .and_then(|p| p.external.as_ref())
            .map(|e| e.secret_ref.clone());
        let (secret, key) = r
            .as_ref()
            .map(|r| (r.name.clone(), r.key.clone()))
            .unwrap_or_default();
        let missing = check_user_secret(&secret_api, &secret, &[key.as_str()]).await?;
        waiting_for_user_secret |= missing.is_some();
        Backing::External { secret, missing }
    } else {
        Backing::NotRequired {
            why: format!(
                "no PostgreSQL at tier {} (SQLite on the data volume)",
                spec.tier
            ),
        }
    };

    let redis = if plan.redis_managed {
        endpoints.redis = Some(svc_host("redis", 6379));
        managed(Component::Redis)
    } else if plan.redis_external {
        endpoints.redis = Some("external".into());
        let r = spec
            .redis
            .as_ref()
            .and_then(|p| p.external.as_ref())
            .map(|e| e.secret_ref.clone());
        let (secret, key) = r.map(|r| (r.name, r.key)).unwrap_or_default();
        let missing = check_user_secret(&secret_api, &secret, &[key.as_str()]).await?;
        waiting_for_user_secret |= missing.is_some();
        Backing::External { secret, missing }
    } else {
        Backing::NotRequired {
            why: format!(
                "no Redis at tier {} (in-process queue and pub/sub)",
                spec.tier
            ),
        }
    };

    let storage = if plan.storage_managed {
        endpoints.storage = Some(svc_host("minio", 9000));
        managed(Component::Minio)
    } else if plan.storage_external {
        endpoints.storage = Some("external".into());
        let secret = spec
            .storage
            .as_ref()
            .and_then(|s| s.external.as_ref())
            .map(|e| e.secret_ref.name.clone())
            .unwrap_or_default();
        let missing = check_user_secret(
            &secret_api,
            &secret,
            &["bucket", "region", "accessKeyId", "secretAccessKey"],
        )
        .await?;
        waiting_for_user_secret |= missing.is_some();
        Backing::External { secret, missing }
    } else {
        Backing::NotRequired {
            why: "filesystem storage on the data volume".into(),
        }
    };

    // Boot secrets: a user-supplied Secret must exist with all three keys.
    let boot_missing = match &spec.secrets_ref {
        Some(r) => {
            let m = check_user_secret(
                &secret_api,
                &r.name,
                secrets::required_keys(Component::BootSecrets),
            )
            .await?;
            waiting_for_user_secret |= m.is_some();
            m
        }
        None => generated.get(&labels::boot_secret_name(&name)).map(|p| {
            credentials_lost |= matches!(p, SecretProblem::Lost(_));
            p.message().to_string()
        }),
    };

    let deployment_name = child_name(&name, "api");
    let deployment = applied.get(&(ChildKind::Deployment, deployment_name.clone()));
    let api_ready = ready_replicas(deployment);
    let health = if api_ready >= 1 {
        // Probe through the Service's cluster IP when known: no DNS lookup needed.
        let service = applied.get(&(ChildKind::Service, deployment_name.clone()));
        let host = service
            .and_then(|s| s["spec"]["clusterIP"].as_str())
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                }
            })
            .unwrap_or_else(|| format!("{deployment_name}.{ns}.svc"));
        Some(ctx.health.check(&format!("http://{host}:{API_PORT}")).await)
    } else {
        None
    };
    // Pods missing: ask the ReplicaSets why (an admission refusal is only visible there).
    let pods_failed = if api_ready < plan.replicas && deployment.is_some() {
        replica_failure(ctx, ns, &name)
            .await
            .map(|m| failed_create_hint(&m, plan.docker))
    } else {
        None
    };
    let api = ApiObservation {
        deployment: deployment_name,
        desired: plan.replicas,
        ready: api_ready,
        health: health.clone(),
        forced_replicas: plan
            .replicas_forced(spec)
            .then_some((spec.replicas, spec.tier)),
        missing_secret: boot_missing,
        pods_failed: pods_failed.clone(),
    };

    let pool_required =
        plan.docker && spec.run_adapter == RunAdapter::Docker && spec.sidecar_pool.size > 0;
    let (pool_cond, sidecar_pool) = status::sidecar_condition(pool_required, health.as_ref());

    let conditions = vec![
        status::backing_condition(status::DATABASE_READY, &database),
        status::backing_condition(status::REDIS_READY, &redis),
        status::backing_condition(status::STORAGE_READY, &storage),
        status::api_condition(&api),
        pool_cond,
    ];
    let ready = status::ready_condition(&conditions);
    Ok(Observed {
        conditions,
        ready,
        endpoints,
        sidecar_pool,
        waiting_for_user_secret,
        credentials_lost,
        pods_failed: pods_failed.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_security_refusal_of_the_docker_engine_names_the_namespace_label() {
        let m = "ReplicaSet a-api-1: FailedCreate: pods \"a-api-1-x\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"dind\" must not set securityContext.privileged=true)";
        let hint = failed_create_hint(m, true);
        assert!(
            hint.starts_with(m) && hint.contains(PRIVILEGED_NAMESPACE_LABEL),
            "{hint}"
        );
        assert_eq!(failed_create_hint(m, false), m);
        let quota = "ReplicaSet a-api-1: FailedCreate: exceeded quota";
        assert_eq!(failed_create_hint(quota, true), quota);
    }
}
