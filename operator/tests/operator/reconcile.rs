//! Reconcile against kube-fake-client's in-memory API server.
//!
//! The fake answers 422 to the JSON patch that adds the first finalizer and has no watch, so
//! these tests seed resources that already carry the finalizer (the adding step is covered with
//! tower-test in `finalizer.rs`), and run one reconcile at a time as the controller would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use kube_fake_client::ClientBuilder;
use operator::health::{HealthProbe, StaticHealthProbe};
use operator::v1alpha1::{Phase, FINALIZER};
use operator::{reconcile, Appstrate};
use serde_json::json;

use crate::common::{appstrate, context, example, healthy, unreachable_api, NS};

/// A fake API server holding `app` (with the finalizer already added) and `extra` objects.
pub(crate) async fn fake_with(mut app: Appstrate, extra: Vec<serde_json::Value>) -> Client {
    app.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    ClientBuilder::new()
        .with_resource::<Appstrate>()
        .with_status_subresource::<Appstrate>()
        .with_object(app)
        .with_runtime_objects(extra)
        .build()
        .await
        .expect("fake client builds")
}

pub(crate) async fn fake(app: Appstrate) -> Client {
    fake_with(app, vec![]).await
}

pub(crate) async fn get_app(client: &Client, name: &str) -> Appstrate {
    Api::<Appstrate>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .expect("resource exists")
}

pub(crate) async fn run(client: &Client, name: &str, health: Arc<dyn HealthProbe>) -> Action {
    let app = get_app(client, name).await;
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client.clone(), health),
    )
    .await
    .expect("reconcile succeeds")
}

pub(crate) async fn names<K>(client: &Client) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut n: Vec<String> = Api::<K>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    n.sort();
    n
}

pub(crate) fn condition<'a>(
    app: &'a Appstrate,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("condition {type_} missing in {:?}", app.status))
}

/// resourceVersion of every object the operator manages, by kind/name.
async fn resource_versions(client: &Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($k:ty, $label:literal) => {
            for o in Api::<$k>::namespaced(client.clone(), NS)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
            {
                out.insert(
                    format!("{}/{}", $label, o.name_any()),
                    o.resource_version().unwrap_or_default(),
                );
            }
        };
    }
    collect!(Deployment, "Deployment");
    collect!(StatefulSet, "StatefulSet");
    collect!(Service, "Service");
    collect!(PersistentVolumeClaim, "PersistentVolumeClaim");
    collect!(Secret, "Secret");
    out
}

async fn set_ready_replicas<K>(client: &Client, name: &str, ready: i32)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let patch = json!({"status": {"readyReplicas": ready, "availableReplicas": ready}});
    Api::<K>::namespaced(client.clone(), NS)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("status patched");
}

#[tokio::test]
async fn new_resource_gets_all_children_and_a_status() {
    let client = fake(example(3)).await;
    let action = run(&client, "appstrate", unreachable_api()).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(10)),
        "not ready yet: requeue in 10 s"
    );

    assert_eq!(names::<Deployment>(&client).await, vec!["appstrate-api"]);
    assert_eq!(
        names::<StatefulSet>(&client).await,
        vec!["appstrate-minio", "appstrate-postgres", "appstrate-redis"]
    );
    assert_eq!(
        names::<Service>(&client).await,
        vec![
            "appstrate-api",
            "appstrate-minio",
            "appstrate-postgres",
            "appstrate-redis"
        ]
    );
    assert_eq!(
        names::<Secret>(&client).await,
        vec![
            "appstrate-boot-secrets",
            "appstrate-minio",
            "appstrate-postgres",
            "appstrate-redis"
        ]
    );
    // Owner references on applied children, none on generated Secrets.
    let dep = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("appstrate-api")
        .await
        .unwrap();
    let owners = dep.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].controller),
        ("Appstrate", Some(true))
    );
    let boot = Api::<Secret>::namespaced(client.clone(), NS)
        .get("appstrate-boot-secrets")
        .await
        .unwrap();
    assert!(boot.owner_references().is_empty());

    let app = get_app(&client, "appstrate").await;
    let st = app.status.clone().expect("status written");
    assert_eq!(st.phase, Some(Phase::Provisioning));
    assert_eq!(st.observed_generation, app.metadata.generation);
    assert_eq!(st.tier, Some(3));
    let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "DatabaseReady",
            "RedisReady",
            "StorageReady",
            "ApiReady",
            "SidecarPoolReady",
            "Ready"
        ]
    );
    assert_eq!(
        condition(&app, "DatabaseReady").reason,
        "StatefulSetNotReady"
    );
    assert_eq!(condition(&app, "ApiReady").reason, "DeploymentProgressing");
    assert_eq!(
        condition(&app, "SidecarPoolReady").reason,
        "HealthUnavailable"
    );
    let ready = condition(&app, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DatabaseNotReady")
    );
    let ep = st.endpoints.unwrap();
    assert_eq!(
        ep.api.as_deref(),
        Some("http://appstrate-api.default.svc:3000")
    );
    assert_eq!(
        ep.database.as_deref(),
        Some("appstrate-postgres.default.svc:5432")
    );
    assert_eq!(
        ep.storage.as_deref(),
        Some("appstrate-minio.default.svc:9000")
    );
}

#[tokio::test]
async fn deleted_child_is_recreated_on_the_next_reconcile() {
    let client = fake(example(1)).await;
    run(&client, "appstrate", unreachable_api()).await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    sts.delete("appstrate-postgres", &Default::default())
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), NS)
        .delete("appstrate-api", &Default::default())
        .await
        .unwrap();
    assert!(sts.get_opt("appstrate-postgres").await.unwrap().is_none());

    run(&client, "appstrate", unreachable_api()).await;
    assert!(sts.get_opt("appstrate-postgres").await.unwrap().is_some());
    assert!(names::<Service>(&client)
        .await
        .contains(&"appstrate-api".to_string()));
}

#[tokio::test]
async fn second_reconcile_of_an_unchanged_resource_writes_nothing() {
    let client = fake(example(3)).await;
    run(&client, "appstrate", unreachable_api()).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let boot_before = secrets.get("appstrate-boot-secrets").await.unwrap().data;
    let before = resource_versions(&client).await;
    let status_before = get_app(&client, "appstrate").await.status;
    assert!(before.len() >= 12, "children present: {before:?}");

    run(&client, "appstrate", unreachable_api()).await;
    assert_eq!(
        secrets.get("appstrate-boot-secrets").await.unwrap().data,
        boot_before
    );
    assert_eq!(resource_versions(&client).await, before);
    assert_eq!(get_app(&client, "appstrate").await.status, status_before);
}

#[tokio::test]
async fn lowering_tier_2_to_0_prunes_statefulsets_but_keeps_pvcs_and_secrets() {
    // A PVC the postgres StatefulSet would have created from its claim template.
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-appstrate-postgres-0", "namespace": NS, "labels": {
            "app.kubernetes.io/name": "appstrate", "app.kubernetes.io/instance": "appstrate",
            "app.kubernetes.io/component": "postgres", "app.kubernetes.io/managed-by": "appstrate-operator",
            "app.kubernetes.io/part-of": "appstrate"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
    });
    let client = fake(example(2)).await;
    run(&client, "appstrate", unreachable_api()).await;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
        .create(&Default::default(), &serde_json::from_value(claim).unwrap())
        .await
        .unwrap();
    assert_eq!(
        names::<StatefulSet>(&client).await,
        vec!["appstrate-postgres", "appstrate-redis"]
    );
    let pg_secret_before = Api::<Secret>::namespaced(client.clone(), NS)
        .get("appstrate-postgres")
        .await
        .unwrap();

    let patch = json!({"spec": {"tier": 0}});
    Api::<Appstrate>::namespaced(client.clone(), NS)
        .patch("appstrate", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    run(&client, "appstrate", unreachable_api()).await;

    assert_eq!(names::<StatefulSet>(&client).await, Vec::<String>::new());
    assert_eq!(names::<Service>(&client).await, vec!["appstrate-api"]);
    assert_eq!(
        names::<PersistentVolumeClaim>(&client).await,
        vec!["appstrate-data", "data-appstrate-postgres-0"]
    );
    assert_eq!(
        names::<Secret>(&client).await,
        vec![
            "appstrate-boot-secrets",
            "appstrate-postgres",
            "appstrate-redis"
        ]
    );
    let pg_secret_after = Api::<Secret>::namespaced(client.clone(), NS)
        .get("appstrate-postgres")
        .await
        .unwrap();
    assert_eq!(
        pg_secret_after.data, pg_secret_before.data,
        "credentials survive for going back up"
    );
    // The API no longer gets the removed tiers' connection strings.
    let dep = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("appstrate-api")
        .await
        .unwrap();
    let env: Vec<String> = dep.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        !env.contains(&"DATABASE_URL".to_string()) && !env.contains(&"REDIS_URL".to_string()),
        "{env:?}"
    );
    let app = get_app(&client, "appstrate").await;
    assert_eq!(app.status.unwrap().tier, Some(0));
    assert_eq!(
        condition(&get_app(&client, "appstrate").await, "DatabaseReady").reason,
        "NotRequired"
    );
}

async fn deleting(policy: &str) -> (Client, Api<Appstrate>) {
    let mut app = example(1);
    app.spec.deletion_policy = serde_json::from_value(json!(policy)).unwrap();
    let client = fake(app).await;
    run(&client, "appstrate", unreachable_api()).await;
    // The fake deletes at once even with finalizers, so deletion is simulated by re-seeding the
    // resource with a deletionTimestamp next to the children the first reconcile created.
    let mut app = get_app(&client, "appstrate").await;
    app.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    app.metadata.resource_version = None;
    let mut objects = Vec::new();
    for kind in operator::ChildKind::ALL {
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(client.clone(), NS, &kind.api_resource());
        for o in api.list(&ListParams::default()).await.unwrap().items {
            let mut v = serde_json::to_value(&o).unwrap();
            v["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
            objects.push(v);
        }
    }
    let client = fake_with(app, objects).await;
    (client.clone(), Api::namespaced(client, NS))
}

#[tokio::test]
async fn deletion_policy_delete_removes_pvcs_and_secrets_then_the_finalizer() {
    let (client, apps) = deleting("Delete").await;
    assert!(!names::<PersistentVolumeClaim>(&client).await.is_empty());
    let app = apps.get("appstrate").await.unwrap();
    let action = reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client.clone(), unreachable_api()),
    )
    .await
    .expect("cleanup succeeds");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        names::<PersistentVolumeClaim>(&client).await,
        Vec::<String>::new()
    );
    assert_eq!(names::<Secret>(&client).await, Vec::<String>::new());
    match apps.get_opt("appstrate").await.unwrap() {
        None => {}
        Some(a) => assert!(
            !a.finalizers().iter().any(|f| f == FINALIZER),
            "finalizer removed"
        ),
    }
}

#[tokio::test]
async fn deletion_policy_retain_keeps_data_and_removes_the_finalizer() {
    let (client, apps) = deleting("Retain").await;
    let app = apps.get("appstrate").await.unwrap();
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client.clone(), unreachable_api()),
    )
    .await
    .expect("cleanup succeeds");
    assert_eq!(
        names::<PersistentVolumeClaim>(&client).await,
        vec!["appstrate-data"]
    );
    assert_eq!(
        names::<Secret>(&client).await,
        vec!["appstrate-boot-secrets", "appstrate-postgres"]
    );
    if let Some(a) = apps.get_opt("appstrate").await.unwrap() {
        assert!(!a.finalizers().iter().any(|f| f == FINALIZER));
    }
}

#[tokio::test]
async fn invalid_spec_sets_failed_and_changes_no_child() {
    let client = fake(example(2)).await;
    run(&client, "appstrate", unreachable_api()).await;
    let before = resource_versions(&client).await;

    // Bypassing the CRD's CEL rules (as an old CRD would): docker below tier 3.
    let patch = json!({"spec": {"runAdapter": "docker"}});
    Api::<Appstrate>::namespaced(client.clone(), NS)
        .patch("appstrate", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let action = run(&client, "appstrate", unreachable_api()).await;
    assert_eq!(action, Action::await_change());

    let app = get_app(&client, "appstrate").await;
    assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let ready = condition(&app, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("spec.runAdapter"),
        "{}",
        ready.message
    );
    assert_eq!(resource_versions(&client).await, before, "no child changed");
}

#[tokio::test]
async fn undeserializable_resource_is_reported_not_crashed() {
    let mut raw = serde_json::to_value(example(0)).unwrap();
    raw["spec"]["tier"] = json!("three");
    raw["metadata"]["finalizers"] = json!([FINALIZER]);
    let client = ClientBuilder::new()
        .with_resource::<Appstrate>()
        .with_status_subresource::<Appstrate>()
        .with_runtime_objects(vec![raw])
        .build()
        .await
        .unwrap();
    let guarded: Api<DeserializeGuard<Appstrate>> = Api::namespaced(client.clone(), NS);
    let obj = guarded
        .get("appstrate")
        .await
        .expect("a guarded get never fails on a bad spec");
    assert!(obj.0.is_err());
    let action = reconcile(Arc::new(obj), context(client.clone(), unreachable_api()))
        .await
        .expect("reported through the status");
    assert_eq!(action, Action::await_change());
    let dynamic: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &kube::core::ApiResource::erase::<Appstrate>(&()),
    );
    let stored = dynamic.get("appstrate").await.unwrap();
    assert_eq!(stored.data["status"]["phase"], "Failed");
    assert_eq!(
        stored.data["status"]["conditions"][0]["reason"],
        "InvalidSpec"
    );
    assert_eq!(names::<Deployment>(&client).await, Vec::<String>::new());
}

#[tokio::test]
async fn missing_external_secret_is_reported_as_pending() {
    let app = appstrate(
        "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {name: ext}\nspec:\n  tier: 1\n  image: appstrate:0.1.0\n  appUrl: https://a.example\n  postgres: {external: {secretRef: {name: my-db}}}\n",
    );
    let client = fake(app).await;
    run(&client, "ext", unreachable_api()).await;
    let app = get_app(&client, "ext").await;
    let db = condition(&app, "DatabaseReady");
    assert_eq!(
        (db.status.as_str(), db.reason.as_str()),
        ("False", "SecretMissing")
    );
    assert!(db.message.contains("my-db"));
    assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Pending));
    assert_eq!(
        app.status.unwrap().endpoints.unwrap().database.as_deref(),
        Some("external")
    );
    assert_eq!(names::<StatefulSet>(&client).await, Vec::<String>::new());
    assert_eq!(
        names::<Secret>(&client).await,
        vec!["ext-boot-secrets"],
        "no postgres credentials generated"
    );

    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-db", "namespace": NS},
        "data": {"url": "cG9zdGdyZXM6Ly94"}});
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(
            &Default::default(),
            &serde_json::from_value(secret).unwrap(),
        )
        .await
        .unwrap();
    run(&client, "ext", unreachable_api()).await;
    let app = get_app(&client, "ext").await;
    assert_eq!(condition(&app, "DatabaseReady").reason, "External");
    assert_eq!(app.status.unwrap().phase, Some(Phase::Provisioning));
}

#[tokio::test]
async fn status_follows_real_readiness_then_degrades() {
    let client = fake(example(3)).await;
    run(&client, "appstrate", unreachable_api()).await;
    for sts in ["appstrate-postgres", "appstrate-redis", "appstrate-minio"] {
        set_ready_replicas::<StatefulSet>(&client, sts, 1).await;
    }
    set_ready_replicas::<Deployment>(&client, "appstrate-api", 2).await;

    // Pool still warming: SidecarPoolReady is the first failing condition.
    let warming: Arc<dyn HealthProbe> = Arc::new(StaticHealthProbe(Ok(healthy(Some((2, 1))))));
    assert_eq!(
        run(&client, "appstrate", warming).await,
        Action::requeue(Duration::from_secs(10))
    );
    let app = get_app(&client, "appstrate").await;
    assert_eq!(condition(&app, "ApiReady").reason, "DeploymentAvailable");
    assert_eq!(condition(&app, "SidecarPoolReady").reason, "PoolWarming");
    assert_eq!(condition(&app, "Ready").reason, "SidecarPoolNotReady");
    let pool = app.status.as_ref().unwrap().sidecar_pool.clone().unwrap();
    assert_eq!((pool.desired, pool.ready), (2, 1));

    let warm: Arc<dyn HealthProbe> = Arc::new(StaticHealthProbe(Ok(healthy(Some((2, 2))))));
    assert_eq!(
        run(&client, "appstrate", warm.clone()).await,
        Action::requeue(Duration::from_secs(300))
    );
    let app = get_app(&client, "appstrate").await;
    assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Ready));
    let ready = condition(&app, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllReady")
    );

    set_ready_replicas::<StatefulSet>(&client, "appstrate-redis", 0).await;
    run(&client, "appstrate", warm).await;
    let app = get_app(&client, "appstrate").await;
    assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Degraded));
    assert_eq!(condition(&app, "Ready").reason, "RedisNotReady");
}

#[tokio::test]
async fn api_health_failure_is_reported() {
    let client = fake(example(0)).await;
    run(&client, "appstrate", unreachable_api()).await;
    set_ready_replicas::<Deployment>(&client, "appstrate-api", 1).await;
    run(&client, "appstrate", unreachable_api()).await;
    let app = get_app(&client, "appstrate").await;
    let api = condition(&app, "ApiReady");
    assert_eq!(
        (api.status.as_str(), api.reason.as_str()),
        ("False", "HealthCheckFailed")
    );
    assert!(api.message.contains("connection refused"));
    assert_eq!(condition(&app, "SidecarPoolReady").reason, "NotRequired");
    assert_eq!(condition(&app, "Ready").reason, "ApiNotReady");
}

#[tokio::test]
async fn raising_tier_0_to_2_adds_children_and_rolls_the_api() {
    let client = fake(example(0)).await;
    run(&client, "appstrate", unreachable_api()).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["appstrate.dev/config-hash"]
            .clone()
    };
    let before = hash(&deployments.get("appstrate-api").await.unwrap());

    let patch = json!({"spec": {"tier": 2, "postgres": {"managed": {}}, "redis": {"managed": {}}}});
    Api::<Appstrate>::namespaced(client.clone(), NS)
        .patch("appstrate", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    run(&client, "appstrate", unreachable_api()).await;

    assert_eq!(
        names::<StatefulSet>(&client).await,
        vec!["appstrate-postgres", "appstrate-redis"]
    );
    assert_eq!(
        names::<Secret>(&client).await,
        vec![
            "appstrate-boot-secrets",
            "appstrate-postgres",
            "appstrate-redis"
        ]
    );
    let dep = deployments.get("appstrate-api").await.unwrap();
    assert_ne!(
        hash(&dep),
        before,
        "the pod template changes, so the API rolls"
    );
    let env: Vec<String> = dep.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(env.contains(&"DATABASE_URL".to_string()) && env.contains(&"REDIS_URL".to_string()));
    let app = get_app(&client, "appstrate").await;
    assert_eq!(app.status.as_ref().unwrap().tier, Some(2));
    assert_eq!(condition(&app, "RedisReady").reason, "StatefulSetNotReady");
}

#[tokio::test]
async fn a_name_too_long_for_its_children_is_reported_not_applied() {
    // Reaches the operator only where the CRD's CEL rule is missing (an older CRD).
    let long = "a".repeat(44);
    let app = appstrate(&format!(
        "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {{name: {long}}}\nspec:\n  tier: 0\n  image: appstrate:0.1.0\n  appUrl: https://a.example\n"
    ));
    let client = fake(app).await;
    let action = run(&client, &long, unreachable_api()).await;
    assert_eq!(action, Action::await_change());
    let app = get_app(&client, &long).await;
    assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let ready = condition(&app, "Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.starts_with("metadata.name: ") && ready.message.contains("43 characters"),
        "{}",
        ready.message
    );
    assert_eq!(names::<Deployment>(&client).await, Vec::<String>::new());
    assert_eq!(names::<Secret>(&client).await, Vec::<String>::new());
}
