//! End-to-end tests against the cluster `KUBECONFIG` points at (`cargo test -p operator -- --ignored e2e`).
//!
//! Each test installs the CRD, creates a fresh namespace, runs the controller in-process scoped
//! to it, and checks objects and status through the real API server. Test clusters may have no
//! scheduler (and no controller-manager), so nothing waits for pods: the assertions are about
//! objects and about status conditions that say nothing is ready yet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Client, CustomResourceExt, ResourceExt};
use operator::health::StaticHealthProbe;
use operator::metrics::Metrics;
use operator::v1alpha1::{Phase, FINALIZER};
use operator::{error_policy, reconcile, Appstrate, Context};
use serde_json::json;

use crate::common::example;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster client, or `None` (the test reports itself skipped) without `KUBECONFIG`.
async fn cluster() -> Option<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!("skipped: KUBECONFIG not set");
        return None;
    }
    let client = Client::try_default().await.expect("client from KUBECONFIG");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "appstrates.appstrate.dev",
        &PatchParams::apply("appstrate-e2e").force(),
        &Patch::Apply(Appstrate::crd()),
    )
    .await
    .expect("CRD applied");
    wait_for("CRD established", || async {
        crds.get("appstrates.appstrate.dev")
            .await
            .ok()
            .is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    Some(client)
}

struct TestNs {
    client: Client,
    name: String,
    operator: tokio::task::JoinHandle<()>,
}

impl TestNs {
    async fn new(client: Client, prefix: &str) -> TestNs {
        let name = format!("{prefix}-{}", &uuid_suffix());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        let operator = start_operator(client.clone(), &name);
        TestNs {
            client,
            name,
            operator,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    async fn create(&self, app: Appstrate) -> Appstrate {
        let mut app = app;
        app.metadata.namespace = Some(self.name.clone());
        app.metadata.uid = None;
        self.api::<Appstrate>()
            .create(&PostParams::default(), &app)
            .await
            .expect("Appstrate created")
    }

    async fn names<K>(&self) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let mut n: Vec<String> = self
            .api::<K>()
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=appstrate-operator"))
            .await
            .map(|l| l.items.iter().map(|o| o.name_any()).collect())
            .unwrap_or_default();
        n.sort();
        n
    }

    /// Deletes the resource while the operator still runs, then the namespace.
    async fn teardown(self, app: &str) {
        let apps = self.api::<Appstrate>();
        let _ = apps.delete(app, &DeleteParams::default()).await;
        wait_for("resource deleted", || async {
            apps.get_opt(app).await.ok().flatten().is_none()
        })
        .await;
        self.operator.abort();
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}", nanos % 0xffff_ffff)
}

fn start_operator(client: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let reporter = Reporter {
        controller: "appstrate-operator".into(),
        instance: Some("e2e".into()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(StaticHealthProbe(Err(
            "the API is not reachable from the test".into(),
        ))),
        Arc::new(Metrics::default()),
        Some(Recorder::new(client.clone(), reporter)),
    ));
    let children =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=appstrate-operator");
    let apps: Api<DeserializeGuard<Appstrate>> = Api::namespaced(client.clone(), ns);
    let controller = Controller::new(apps, watcher::Config::default().any_semantic())
        .owns(
            Api::<Deployment>::namespaced(client.clone(), ns),
            children.clone(),
        )
        .owns(
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            children.clone(),
        )
        .owns(Api::<Service>::namespaced(client.clone(), ns), children)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    tokio::spawn(controller)
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out after {TIMEOUT:?} waiting for {what}");
}

fn condition(app: &Appstrate, type_: &str) -> Option<(String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_new_resource_gets_finalizer_children_and_not_ready_status() {
    let Some(client) = cluster().await else {
        return;
    };
    let t = TestNs::new(client, "appst-e2e-new").await;
    let start = Instant::now();
    t.create(example(3)).await;
    wait_for("every child", || async {
        t.names::<Deployment>().await.len() == 1
            && t.names::<StatefulSet>().await.len() == 3
            && t.names::<Service>().await.len() == 4
            && t.names::<Secret>().await.len() == 4
    })
    .await;
    println!(
        "apply -> every child exists: {} ms",
        start.elapsed().as_millis()
    );

    let apps = t.api::<Appstrate>();
    wait_for("status", || async {
        apps.get("appstrate")
            .await
            .is_ok_and(|a| a.status.as_ref().and_then(|s| s.phase).is_some())
    })
    .await;
    let app = apps.get("appstrate").await.unwrap();
    assert!(app.finalizers().iter().any(|f| f == FINALIZER));
    let st = app.status.clone().unwrap();
    assert_eq!(st.phase, Some(Phase::Provisioning));
    assert_eq!(st.observed_generation, app.metadata.generation);
    assert_eq!(
        condition(&app, "DatabaseReady"),
        Some(("False".into(), "StatefulSetNotReady".into()))
    );
    assert_eq!(
        condition(&app, "ApiReady"),
        Some(("False".into(), "DeploymentProgressing".into()))
    );
    assert_eq!(
        condition(&app, "Ready"),
        Some(("False".into(), "DatabaseNotReady".into()))
    );
    let dep = t.api::<Deployment>().get("appstrate-api").await.unwrap();
    assert_eq!(dep.owner_references()[0].uid, app.uid().unwrap());
    assert!(t
        .api::<Secret>()
        .get("appstrate-boot-secrets")
        .await
        .unwrap()
        .owner_references()
        .is_empty());
    t.teardown("appstrate").await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_deleted_child_is_recreated_and_unchanged_resource_is_not_rewritten() {
    let Some(client) = cluster().await else {
        return;
    };
    let t = TestNs::new(client, "appst-e2e-child").await;
    t.create(example(1)).await;
    let svc = t.api::<Service>();
    wait_for("API Service", || async {
        svc.get_opt("appstrate-api").await.ok().flatten().is_some()
    })
    .await;
    let secrets = t.api::<Secret>();
    wait_for("boot secrets", || async {
        secrets
            .get_opt("appstrate-boot-secrets")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;

    // Settle, then check the periodic requeue (10 s) writes nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let boot = secrets.get("appstrate-boot-secrets").await.unwrap();
    let sts_gen = t
        .api::<StatefulSet>()
        .get("appstrate-postgres")
        .await
        .unwrap()
        .metadata
        .generation;
    let dep_gen = t
        .api::<Deployment>()
        .get("appstrate-api")
        .await
        .unwrap()
        .metadata
        .generation;
    let svc_rv = svc.get("appstrate-api").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let boot_after = secrets.get("appstrate-boot-secrets").await.unwrap();
    assert_eq!(boot_after.data, boot.data);
    assert_eq!(boot_after.resource_version(), boot.resource_version());
    assert_eq!(
        t.api::<StatefulSet>()
            .get("appstrate-postgres")
            .await
            .unwrap()
            .metadata
            .generation,
        sts_gen
    );
    assert_eq!(
        t.api::<Deployment>()
            .get("appstrate-api")
            .await
            .unwrap()
            .metadata
            .generation,
        dep_gen
    );
    assert_eq!(
        svc.get("appstrate-api").await.unwrap().resource_version(),
        svc_rv
    );

    svc.delete("appstrate-api", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("API Service recreated", || async {
        svc.get_opt("appstrate-api")
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.resource_version() != svc_rv)
    })
    .await;
    t.teardown("appstrate").await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_lowering_tier_prunes_statefulsets_and_keeps_data() {
    let Some(client) = cluster().await else {
        return;
    };
    let t = TestNs::new(client, "appst-e2e-down").await;
    t.create(example(2)).await;
    wait_for("tier-2 children", || async {
        t.names::<StatefulSet>().await.len() == 2
    })
    .await;
    t.api::<Appstrate>()
        .patch(
            "appstrate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tier": 0}})),
        )
        .await
        .unwrap();
    wait_for("StatefulSets pruned", || async {
        t.names::<StatefulSet>().await.is_empty()
    })
    .await;
    assert_eq!(t.names::<Service>().await, vec!["appstrate-api"]);
    assert!(t
        .names::<PersistentVolumeClaim>()
        .await
        .contains(&"appstrate-data".to_string()));
    assert_eq!(
        t.names::<Secret>().await,
        vec![
            "appstrate-boot-secrets",
            "appstrate-postgres",
            "appstrate-redis"
        ]
    );
    wait_for("status tier 0", || async {
        t.api::<Appstrate>()
            .get("appstrate")
            .await
            .is_ok_and(|a| a.status.as_ref().and_then(|s| s.tier) == Some(0))
    })
    .await;
    t.teardown("appstrate").await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_delete_policy_removes_data_then_the_resource() {
    let Some(client) = cluster().await else {
        return;
    };
    let t = TestNs::new(client, "appst-e2e-del").await;
    let mut app = example(1);
    app.spec.deletion_policy = operator::v1alpha1::DeletionPolicy::Delete;
    t.create(app).await;
    wait_for("PVC and Secrets", || async {
        !t.names::<PersistentVolumeClaim>().await.is_empty() && t.names::<Secret>().await.len() == 2
    })
    .await;
    let apps = t.api::<Appstrate>();
    apps.delete("appstrate", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("resource gone", || async {
        apps.get_opt("appstrate").await.ok().flatten().is_none()
    })
    .await;
    assert!(t.names::<PersistentVolumeClaim>().await.is_empty());
    assert!(t.names::<Secret>().await.is_empty());
    t.teardown("appstrate").await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_invalid_resource_is_refused_by_the_api_server() {
    let Some(client) = cluster().await else {
        return;
    };
    let t = TestNs::new(client, "appst-e2e-cel").await;
    let mut app = example(0);
    app.spec.run_adapter = operator::v1alpha1::RunAdapter::Docker;
    app.metadata.namespace = Some(t.name.clone());
    let err = t
        .api::<Appstrate>()
        .create(&PostParams::default(), &app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("docker requires tier 3"), "{err}");
    let mut app = example(0);
    app.spec.app_url = "http://x.example".into();
    app.metadata.namespace = Some(t.name.clone());
    let err = t
        .api::<Appstrate>()
        .create(&PostParams::default(), &app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("appUrl"), "{err}");
    t.operator.abort();
    let _ = Api::<Namespace>::all(t.client.clone())
        .delete(&t.name, &DeleteParams::default())
        .await;
}
