//! End-to-end tests against the cluster `KUBECONFIG` points at (`cargo test -p operator -- --ignored e2e`).
//!
//! Each test installs the CRD, creates a fresh namespace, runs the controller in-process scoped
//! to it (with its own client, which records every write it sends), and checks objects and
//! status through the real API server. They are written to hold both on a bare kube-apiserver
//! (no scheduler, no controller-manager) and on one with a controller-manager: nothing waits for
//! pods or ready replicas; nothing relies on the garbage collector (the operator deletes its
//! children itself); a PVC counts as deleted once it has a `deletionTimestamp` (its
//! `kubernetes.io/pvc-protection` finalizer is removed by a controller); the StatefulSets'
//! claims `data-<name>-<component>-0` exist only where a controller-manager runs, so no test
//! expects them to be absent or present unless it created them; what needs a controller-manager
//! (ReplicaSets) is detected and otherwise reported as skipped; the namespace is emptied and
//! finalized by the test itself, even when an assertion fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Client, CustomResourceExt, ResourceExt};
use operator::health::StaticHealthProbe;
use operator::metrics::Metrics;
use operator::reconcile::Requeue;
use operator::v1alpha1::{Phase, FINALIZER};
use operator::{error_policy, reconcile, Appstrate, Context};
use serde_json::json;

use crate::common::example;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster client, or `None` (the test reports itself skipped) without `KUBECONFIG`.
pub(crate) async fn cluster() -> Option<Client> {
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

/// Every request but reads that the operator's client sent, as `METHOD path`.
type Writes = Arc<std::sync::Mutex<Vec<String>>>;

/// A client for the operator, identified as `appstrate-operator/<version>`, that records its
/// writes in `writes`.
async fn operator_client(writes: Writes) -> Client {
    let mut config = kube::Config::infer().await.expect("config from KUBECONFIG");
    operator::identify(&mut config);
    let record =
        tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            if req.method() != http::Method::GET {
                writes
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri().path()));
            }
            req
        });
    kube::client::ClientBuilder::try_from(config)
        .expect("client from KUBECONFIG")
        .with_layer(&record)
        .build()
}

pub(crate) struct TestNs {
    pub(crate) client: Client,
    pub(crate) name: String,
    operator: tokio::task::JoinHandle<()>,
    writes: Writes,
    pub(crate) metrics: Arc<Metrics>,
}

impl TestNs {
    async fn new(
        client: Client,
        prefix: &str,
        requeue: Requeue,
        labels: serde_json::Value,
    ) -> TestNs {
        let name = format!("{prefix}-{}", &uuid_suffix());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        let writes = Writes::default();
        let metrics = Arc::new(Metrics::default());
        let operator_client = operator_client(writes.clone()).await;
        let operator = start_operator(operator_client, &name, requeue, metrics.clone());
        TestNs {
            client,
            name,
            operator,
            writes,
            metrics,
        }
    }

    /// The writes the operator sent since the last call.
    fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub(crate) async fn create(&self, app: Appstrate) -> Appstrate {
        let mut app = app;
        app.metadata.namespace = Some(self.name.clone());
        app.metadata.uid = None;
        self.api::<Appstrate>()
            .create(&PostParams::default(), &app)
            .await
            .expect("Appstrate created")
    }

    pub(crate) async fn names<K>(&self) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.names_where::<K>(|_| true).await
    }

    /// Names of the operator's objects of kind `K` that are not being deleted.
    pub(crate) async fn live_names<K>(&self) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.names_where::<K>(|o| o.meta().deletion_timestamp.is_none())
            .await
    }

    async fn names_where<K>(&self, keep: impl Fn(&K) -> bool) -> Vec<String>
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
            .map(|l| {
                l.items
                    .iter()
                    .filter(|o| keep(o))
                    .map(|o| o.name_any())
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    }

    /// Deletes every Appstrate while the operator still runs (its cleanup is under test too),
    /// stops the operator, then empties and removes the namespace.
    async fn teardown(&self) {
        let apps = self.api::<Appstrate>();
        let _ = apps
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let gone = tokio::time::timeout(TIMEOUT, async {
            while !apps
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
        .is_ok();
        self.operator.abort();
        if !gone {
            // The operator did not finish its cleanup (the test failed): let go of the finalizers.
            for app in apps
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let _ = apps
                    .patch(
                        &app.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        }
        purge_namespace(&self.client, &self.name).await;
    }
}

/// Empties a test namespace and removes it. A bare API server has no namespace controller to
/// empty a Terminating namespace and remove its `kubernetes` finalizer, so the test deletes
/// what it created (dropping finalizers no controller will remove) and finalizes the namespace.
async fn purge_namespace(client: &Client, ns: &str) {
    use kube::core::{ApiResource, DynamicObject};
    let kinds = [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<k8s_openapi::api::events::v1::Event>(&()),
    ];
    for ar in &kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
        let items = api
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for o in items {
            if o.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
            {
                let _ = api
                    .patch(
                        &o.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
            let _ = api.delete(&o.name_any(), &DeleteParams::background()).await;
        }
    }
    let namespaces = Api::<Namespace>::all(client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    for _ in 0..20 {
        match namespaces.get_opt(ns).await {
            Ok(None) | Err(_) => return,
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    // Still Terminating after 5 s: no namespace controller. Finalize it by hand.
    if let Ok(Some(mut n)) = namespaces.get_opt(ns).await {
        if let Some(spec) = n.spec.as_mut() {
            spec.finalizers = Some(vec![]);
        }
        let _ = namespaces
            .replace_subresource("finalize", ns, &PostParams::default(), &n)
            .await;
    }
}

/// Runs `body` in a fresh namespace with the operator running, then tears everything down,
/// also when `body` panics (the panic is re-raised afterwards).
pub(crate) async fn in_namespace<F, Fut>(client: Client, prefix: &str, requeue: Requeue, body: F)
where
    F: FnOnce(Arc<TestNs>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    in_labelled_namespace(client, prefix, requeue, json!({}), body).await;
}

/// [`in_namespace`] with `labels` on the namespace (such as a Pod Security level).
pub(crate) async fn in_labelled_namespace<F, Fut>(
    client: Client,
    prefix: &str,
    requeue: Requeue,
    labels: serde_json::Value,
    body: F,
) where
    F: FnOnce(Arc<TestNs>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = Arc::new(TestNs::new(client, prefix, requeue, labels).await);
    let outcome = std::panic::AssertUnwindSafe(body(t.clone()))
        .catch_unwind()
        .await;
    t.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}", nanos % 0xffff_ffff)
}

fn start_operator(
    client: Client,
    ns: &str,
    requeue: Requeue,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let reporter = Reporter {
        controller: "appstrate-operator".into(),
        instance: Some("e2e".into()),
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Arc::new(StaticHealthProbe(Err(
                "the API is not reachable from the test".into(),
            ))),
            metrics,
            Some(Recorder::new(client.clone(), reporter)),
        )
        .with_requeue(requeue),
    );
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
        .owns(
            Api::<Service>::namespaced(client.clone(), ns),
            children.clone(),
        )
        .owns(
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
            children,
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    tokio::spawn(controller)
}

pub(crate) async fn wait_for<F, Fut>(what: &str, mut check: F)
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

/// Whether `check` holds within `within` (polling every 250 ms); unlike [`wait_for`], not
/// holding is an answer, not a failure.
pub(crate) async fn holds_within<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Whether a controller-manager runs: the API Deployment of `instance` gets a ReplicaSet.
pub(crate) async fn controller_manager_runs(t: &TestNs) -> bool {
    let sets = t.api::<ReplicaSet>();
    holds_within(Duration::from_secs(15), || async {
        sets.list(&ListParams::default().labels("app.kubernetes.io/component=api"))
            .await
            .is_ok_and(|l| !l.items.is_empty())
    })
    .await
}

pub(crate) fn condition_message(app: &Appstrate, type_: &str) -> String {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

pub(crate) fn condition(app: &Appstrate, type_: &str) -> Option<(String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The operator's defaults (10 s while not Ready, 300 s once Ready).
pub(crate) fn default_requeue() -> Requeue {
    Requeue::default()
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_new_resource_gets_finalizer_children_and_not_ready_status() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(client, "appst-e2e-new", default_requeue(), |t| async move {
        let start = Instant::now();
        t.create(example(3)).await;
        wait_for("every child", || async {
            t.names::<Deployment>().await.len() == 1
                && t.names::<StatefulSet>().await.len() == 3
                && t.names::<Service>().await.len() == 4
                && t.names::<Secret>().await.len() == 4
                && t.names::<NetworkPolicy>().await.len() == 3
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
        // No controller-manager or scheduler need run: nothing is ready, and the status says so.
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
        let boot = t
            .api::<Secret>()
            .get("appstrate-boot-secrets")
            .await
            .unwrap();
        assert!(boot.owner_references().is_empty());
        // Every write, the generated Secrets and the finalizer included, is the operator's.
        let managers =
            |fields: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry],
             owning: &str| {
                fields
                    .iter()
                    .filter(|f| {
                        f.fields_v1.as_ref().is_some_and(|v| {
                            serde_json::to_string(v)
                                .unwrap_or_default()
                                .contains(owning)
                        })
                    })
                    .filter_map(|f| f.manager.clone())
                    .collect::<Vec<_>>()
            };
        assert_eq!(
            managers(
                boot.metadata.managed_fields.as_deref().unwrap_or_default(),
                "f:data"
            ),
            vec!["appstrate-operator"]
        );
        assert_eq!(
            managers(
                app.metadata.managed_fields.as_deref().unwrap_or_default(),
                "f:finalizers"
            ),
            vec!["appstrate-operator"]
        );
        // One Event per generated Secret, each naming it.
        let events =
            Api::<k8s_openapi::api::events::v1::Event>::namespaced(t.client.clone(), &t.name);
        let mut created: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SecretCreated"))
            .filter_map(|e| e.related.and_then(|r| r.name))
            .collect();
        created.sort();
        assert_eq!(
            created,
            vec![
                "appstrate-boot-secrets",
                "appstrate-minio",
                "appstrate-postgres",
                "appstrate-redis"
            ]
        );
        // Only the API pods of this instance reach the managed services.
        let pg = t
            .api::<NetworkPolicy>()
            .get("appstrate-postgres")
            .await
            .unwrap();
        let spec = serde_json::to_value(pg.spec).unwrap();
        assert_eq!(
            spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
                ["app.kubernetes.io/component"],
            "api"
        );
        assert_eq!(spec["ingress"][0]["ports"][0]["port"], 5432);

        // The tier-3 example stores files in MinIO: no data volume of the API. The StatefulSets'
        // claims exist only where a controller-manager created them; whatever exists stays.
        let volumes = t.live_names::<PersistentVolumeClaim>().await;
        assert!(
            volumes.iter().all(|v| v.starts_with("data-appstrate-")),
            "{volumes:?}"
        );

        // Deleting the resource deletes its workloads and Services: the operator does it itself,
        // no garbage collector involved. Data stays (deletionPolicy Retain).
        apps.delete("appstrate", &DeleteParams::default())
            .await
            .unwrap();
        wait_for("resource gone", || async {
            apps.get_opt("appstrate").await.ok().flatten().is_none()
        })
        .await;
        assert!(t.live_names::<Deployment>().await.is_empty());
        assert!(t.live_names::<StatefulSet>().await.is_empty());
        assert!(t.live_names::<Service>().await.is_empty());
        assert!(t.live_names::<NetworkPolicy>().await.is_empty());
        assert_eq!(
            t.live_names::<Secret>().await.len(),
            4,
            "generated Secrets kept"
        );
        let kept = t.live_names::<PersistentVolumeClaim>().await;
        assert!(
            volumes.iter().all(|v| kept.contains(v)),
            "data kept: {volumes:?} before, {kept:?} after"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_periodic_reconciles_of_an_unchanged_resource_write_nothing() {
    let Some(client) = cluster().await else {
        return;
    };
    // A 1 s requeue: the 8 s window below holds several periodic reconciles.
    let fast = Requeue {
        not_ready: Duration::from_secs(1),
        ready: Duration::from_secs(1),
    };
    in_namespace(client, "appst-e2e-steady", fast, |t| async move {
        // Quantities the API server stores in another spelling (1Gi, 500m, 5Gi).
        let mut app = example(1);
        app.spec.data_volume.size = "1024Mi".into();
        app.spec.resources = Some(
            serde_json::from_value(json!({
                "requests": {"cpu": "0.5", "memory": "1024Mi"},
                "limits": {"memory": "2048Mi"},
            }))
            .unwrap(),
        );
        if let Some(m) = app.spec.postgres.as_mut().and_then(|p| p.managed.as_mut()) {
            m.storage = "5120Mi".into();
        }
        t.create(app).await;
        let secrets = t.api::<Secret>();
        wait_for("every tier-1 child", || async {
            t.names::<Service>().await.len() == 2
                && t.names::<StatefulSet>().await.len() == 1
                && t.names::<Deployment>().await.len() == 1
                && t.names::<NetworkPolicy>().await.len() == 1
                && secrets
                    .get_opt("appstrate-boot-secrets")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        })
        .await;
        let apps = t.api::<Appstrate>();
        wait_for("status", || async {
            apps.get("appstrate")
                .await
                .is_ok_and(|a| a.status.as_ref().and_then(|s| s.phase).is_some())
        })
        .await;
        let pvc = t
            .api::<PersistentVolumeClaim>()
            .get("appstrate-data")
            .await
            .unwrap();
        assert_eq!(
            pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
            "1Gi",
            "the API server stores the canonical form"
        );

        // Let the reconciles triggered by the children's creation settle first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        t.take_writes();
        let status_version = apps.get("appstrate").await.unwrap().resource_version();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            t.take_writes(),
            Vec::<String>::new(),
            "periodic reconciles of an unchanged resource write nothing"
        );
        assert_eq!(
            apps.get("appstrate").await.unwrap().resource_version(),
            status_version
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_deleted_child_is_repaired_through_the_owns_watch() {
    let Some(client) = cluster().await else {
        return;
    };
    // Periodic reconciles every hour: a repair within the test's timeout can only come from
    // the watch on owned children.
    let slow = Requeue {
        not_ready: Duration::from_secs(3600),
        ready: Duration::from_secs(3600),
    };
    in_namespace(client, "appst-e2e-owns", slow, |t| async move {
        t.create(example(1)).await;
        let deployments = t.api::<Deployment>();
        let services = t.api::<Service>();
        wait_for("API Deployment and Service", || async {
            deployments
                .get_opt("appstrate-api")
                .await
                .ok()
                .flatten()
                .is_some()
                && services
                    .get_opt("appstrate-api")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        })
        .await;
        // Let the first reconciles (triggered by the children's own creation) settle.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let dep_uid = deployments.get("appstrate-api").await.unwrap().uid();
        let started = Instant::now();
        deployments
            .delete("appstrate-api", &DeleteParams::background())
            .await
            .unwrap();
        wait_for("API Deployment recreated", || async {
            deployments
                .get_opt("appstrate-api")
                .await
                .ok()
                .flatten()
                .is_some_and(|d| d.uid() != dep_uid)
        })
        .await;
        println!(
            "deleted Deployment recreated after {} ms",
            started.elapsed().as_millis()
        );

        let svc_uid = services.get("appstrate-api").await.unwrap().uid();
        services
            .delete("appstrate-api", &DeleteParams::background())
            .await
            .unwrap();
        wait_for("API Service recreated", || async {
            services
                .get_opt("appstrate-api")
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.uid() != svc_uid)
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(3600));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_lowering_tier_prunes_statefulsets_and_keeps_data() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(
        client,
        "appst-e2e-down",
        default_requeue(),
        |t| async move {
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
                t.live_names::<StatefulSet>().await.is_empty()
            })
            .await;
            assert_eq!(t.live_names::<Service>().await, vec!["appstrate-api"]);
            wait_for("NetworkPolicies pruned", || async {
                t.live_names::<NetworkPolicy>().await.is_empty()
            })
            .await;
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
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_delete_policy_removes_children_and_data_then_the_resource() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(client, "appst-e2e-del", default_requeue(), |t| async move {
        let mut app = example(1);
        app.spec.deletion_policy = operator::v1alpha1::DeletionPolicy::Delete;
        t.create(app).await;
        wait_for("PVC and Secrets", || async {
            !t.names::<PersistentVolumeClaim>().await.is_empty()
                && t.names::<Secret>().await.len() == 2
                && t.names::<StatefulSet>().await.len() == 1
        })
        .await;
        // Where a controller-manager runs, the StatefulSet's claim appears shortly after the
        // StatefulSet; wait for it, so it is there when the operator deletes the data.
        if controller_manager_runs(&t).await {
            wait_for("the StatefulSet's claim", || async {
                t.names::<PersistentVolumeClaim>()
                    .await
                    .contains(&"data-appstrate-postgres-0".to_string())
            })
            .await;
        }
        let apps = t.api::<Appstrate>();
        apps.delete("appstrate", &DeleteParams::default())
            .await
            .unwrap();
        wait_for("resource gone", || async {
            apps.get_opt("appstrate").await.ok().flatten().is_none()
        })
        .await;
        // Everything is deleted by the operator itself. A PVC keeps its
        // kubernetes.io/pvc-protection finalizer until a controller-manager removes it, so
        // "deleted" means gone or carrying a deletionTimestamp.
        assert!(t.live_names::<Deployment>().await.is_empty());
        assert!(t.live_names::<StatefulSet>().await.is_empty());
        assert!(t.live_names::<Service>().await.is_empty());
        assert!(t.live_names::<PersistentVolumeClaim>().await.is_empty());
        assert!(t.names::<Secret>().await.is_empty());
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_invalid_resource_is_refused_by_the_api_server() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(client, "appst-e2e-cel", default_requeue(), |t| async move {
        let refused = |mut app: Appstrate| {
            let t = t.clone();
            async move {
                app.metadata.namespace = Some(t.name.clone());
                t.api::<Appstrate>()
                    .create(&PostParams::default(), &app)
                    .await
                    .expect_err("the API server refuses it")
                    .to_string()
            }
        };
        let mut app = example(0);
        app.spec.run_adapter = operator::v1alpha1::RunAdapter::Docker;
        let err = refused(app).await;
        assert!(err.contains("docker requires tier 3"), "{err}");

        let mut app = example(0);
        app.spec.app_url = "http://x.example".into();
        let err = refused(app).await;
        assert!(err.contains("appUrl"), "{err}");

        let mut app = example(0);
        app.metadata.name = Some("a".repeat(44));
        let err = refused(app).await;
        assert!(
            err.contains("DNS-1035 label of at most 43 characters"),
            "{err}"
        );

        let mut app = example(0);
        app.spec.extra_env = vec![operator::v1alpha1::ExtraEnvVar {
            name: "DATABASE_URL".into(),
            value: Some("postgres://elsewhere".into()),
            value_from: None,
        }];
        let err = refused(app).await;
        assert!(err.contains("cannot be overridden"), "{err}");

        // Transition rules: a StatefulSet's volume size is immutable. The data volume's size is
        // not ruled by the CRD (the operator compares it with the live claim).
        let mut app = example(1);
        app.spec.data_volume.size = "2Gi".into();
        t.create(app).await;
        let apps = t.api::<Appstrate>();
        apps.patch(
            "appstrate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dataVolume": {"size": "1Gi"}}})),
        )
        .await
        .expect("the API server leaves the data volume size to the operator");
        let err = apps
            .patch(
                "appstrate",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"postgres": {"managed": {"storage": "50Gi"}}}})),
            )
            .await
            .expect_err("resizing a StatefulSet volume is refused")
            .to_string();
        assert!(err.contains("immutable"), "{err}");
    })
    .await;
}
