//! Reconciles against the scripted API server of `mock.rs`, for what kube-fake-client does not
//! show: list items without `apiVersion`/`kind` (as a real API server sends them), refused
//! applies, and the order of requests.

use std::sync::Arc;

use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use operator::health::HealthProbe;
use operator::metrics::Metrics;
use operator::v1alpha1::FINALIZER;
use operator::{desired_objects, error_policy, reconcile, Appstrate, Context};
use serde_json::{json, Value};

use crate::common::{example, unreachable_api, NS, UID};
use crate::mock::{collection, deleted, failure, lines, list, serve, Log};

/// The example of `tier`, already carrying the finalizer (so the reconcile goes straight on).
pub(crate) fn with_finalizer(tier: u8) -> Appstrate {
    let mut app = example(tier);
    app.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    app.metadata.generation = Some(1);
    app.metadata.resource_version = Some("7".into());
    app
}

/// A desired object as the API server would return it: with server-set metadata.
pub(crate) fn live(object: &Value) -> Value {
    let mut v = object.clone();
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    v["metadata"]["resourceVersion"] = json!("42");
    v["metadata"]["uid"] = json!(format!("uid-{name}"));
    v["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    v
}

fn owner_ref() -> Value {
    json!([{"apiVersion": "appstrate.dev/v1alpha1", "kind": "Appstrate", "name": "appstrate",
        "uid": UID, "controller": true, "blockOwnerDeletion": true}])
}

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": "appstrate", "app.kubernetes.io/instance": "appstrate",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "appstrate-operator", "app.kubernetes.io/part-of": "appstrate"})
}

/// A child of kind `kind` named `name`, optionally already being deleted.
fn child(api_version: &str, kind: &str, name: &str, terminating: bool) -> Value {
    let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": {
        "name": name, "namespace": NS, "labels": labels("postgres"), "ownerReferences": owner_ref(),
        "resourceVersion": "9", "uid": format!("uid-{name}")}});
    if terminating {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        v["metadata"]["finalizers"] = json!(["example.com/hold"]);
    }
    v
}

pub(crate) fn context_with_events(
    client: kube::Client,
    health: Arc<dyn HealthProbe>,
) -> Arc<Context> {
    let reporter = Reporter {
        controller: "appstrate-operator".into(),
        instance: Some("test".into()),
    };
    Arc::new(Context::new(
        client.clone(),
        health,
        Arc::new(Metrics::default()),
        Some(Recorder::new(client, reporter)),
    ))
}

/// Every request but the GETs.
pub(crate) fn writes(log: &Log) -> Vec<String> {
    lines(log)
        .into_iter()
        .filter(|l| !l.starts_with("GET "))
        .collect()
}

#[tokio::test]
async fn listed_children_without_type_fields_match_and_terminating_ones_are_not_pruned() {
    let app = with_finalizer(0);
    let desired = desired_objects(&app);
    let app_json = serde_json::to_value(&app).unwrap();
    let boot = json!({"metadata": {"name": "appstrate-boot-secrets", "namespace": NS,
        "labels": labels("boot-secrets"), "resourceVersion": "3"}, "type": "Opaque",
        "data": {"BETTER_AUTH_SECRET": "eA==", "UPLOAD_SIGNING_SECRET": "eA==",
            "CONNECTION_ENCRYPTION_KEY": "eA=="}});
    let (client, log) = serve(move |r| match (r.method.as_str(), collection(&r.path)) {
        ("GET", Some((api_version, kind))) => {
            let mut items: Vec<Value> = desired
                .iter()
                .filter(|d| d.kind.kind() == kind)
                .map(|d| live(&d.object))
                .collect();
            match kind {
                // Left over from a higher tier: one already being deleted, one not.
                "StatefulSet" => {
                    items.push(child(api_version, kind, "appstrate-postgres", true));
                    items.push(child(api_version, kind, "appstrate-redis", false));
                }
                "Secret" => items.push(boot.clone()),
                _ => {}
            }
            (200, list(api_version, kind, items))
        }
        ("PATCH", _) if r.path.ends_with("/status") => (200, app_json.clone()),
        ("DELETE", _) => deleted(),
        _ => failure(500, "InternalError", &format!("unexpected {}", r.line())),
    });

    reconcile(
        Arc::new(DeserializeGuard(Ok(with_finalizer(0)))),
        crate::common::context(client, unreachable_api()),
    )
    .await
    .expect("reconcile succeeds");

    assert_eq!(
        writes(&log),
        vec![
            "DELETE /apis/apps/v1/namespaces/default/statefulsets/appstrate-redis".to_string(),
            "PATCH /apis/appstrate.dev/v1alpha1/namespaces/default/appstrates/appstrate/status"
                .to_string(),
        ],
        "unchanged children are not re-applied; a child already being deleted is left alone"
    );
}

/// A scripted API server for a first reconcile whose apply of the API Deployment is refused
/// with `message`; everything else is accepted.
fn refusing_deployment(app: &Appstrate, code: u16, message: &'static str) -> (kube::Client, Log) {
    let app_json = serde_json::to_value(app).unwrap();
    serve(move |r| match (r.method.as_str(), collection(&r.path)) {
        ("GET", Some((api_version, kind))) => (200, list(api_version, kind, vec![])),
        ("GET", None) => failure(404, "NotFound", "not found"),
        ("POST", _) => (201, r.body.clone()),
        ("PATCH", _) if r.path.ends_with("/status") => (200, app_json.clone()),
        ("PATCH", _) if r.path.contains("/deployments/") => failure(code, "Invalid", message),
        ("PATCH", _) => (200, r.body.clone()),
        _ => failure(500, "InternalError", &format!("unexpected {}", r.line())),
    })
}

pub(crate) fn bodies(log: &Log, method: &str, path_end: &str) -> Vec<Value> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == method && r.path.ends_with(path_end))
        .map(|r| r.body.clone())
        .collect()
}

#[tokio::test]
async fn a_refused_apply_sets_failed_naming_the_child_and_the_server_message_then_backs_off() {
    const REFUSAL: &str = "Deployment.apps \"appstrate-api\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1";
    let app = with_finalizer(0);
    let (client, log) = refusing_deployment(&app, 422, REFUSAL);
    let ctx = context_with_events(client, unreachable_api());
    let guard = Arc::new(DeserializeGuard(Ok(app)));

    let err = reconcile(guard.clone(), ctx.clone())
        .await
        .expect_err("a refused apply is a reconcile error");
    assert_eq!(err.metric_label(), "invalid");

    let statuses = bodies(&log, "PATCH", "/status");
    let last = statuses.last().expect("status written");
    assert_eq!(last["status"]["phase"], "Failed", "{last}");
    let ready = last["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition")
        .clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ApplyFailed"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("Deployment/appstrate-api: ")
            && message.contains("must be less than or equal to cpu limit"),
        "{message}"
    );

    let events = bodies(&log, "POST", "/events");
    let warning = events
        .iter()
        .find(|e| e["reason"] == "ApplyFailed")
        .unwrap_or_else(|| panic!("no ApplyFailed event in {events:?}"));
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["note"].as_str(), Some(message));

    // A retry that meets the same refusal writes nothing and publishes no second Event.
    let mut failed = with_finalizer(0);
    failed.status = Some(serde_json::from_value(last["status"].clone()).unwrap());
    let (client, log) = refusing_deployment(&failed, 422, REFUSAL);
    reconcile(
        Arc::new(DeserializeGuard(Ok(failed))),
        context_with_events(client, unreachable_api()),
    )
    .await
    .expect_err("still refused");
    assert!(bodies(&log, "PATCH", "/status").is_empty());
    assert!(
        !bodies(&log, "POST", "/events")
            .iter()
            .any(|e| e["reason"] == "ApplyFailed"),
        "one ApplyFailed Event per message"
    );

    // The error policy still backs off: 5 s, then 10 s.
    assert_eq!(
        error_policy(guard.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(guard, &err, ctx),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn a_server_error_on_apply_is_retried_without_marking_the_resource_failed() {
    let app = with_finalizer(0);
    let (client, log) = refusing_deployment(&app, 503, "etcdserver: leader changed");
    let err = reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context_with_events(client, unreachable_api()),
    )
    .await
    .expect_err("a failed apply is a reconcile error");
    assert_eq!(err.metric_label(), "kube_api");
    assert!(
        bodies(&log, "PATCH", "/status").is_empty(),
        "no Failed phase for a transient error"
    );
}

#[tokio::test]
async fn deletion_with_policy_delete_removes_workloads_before_volumes_and_secrets() {
    let mut app = with_finalizer(1);
    app.spec.deletion_policy = operator::v1alpha1::DeletionPolicy::Delete;
    app.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let mut gone = serde_json::to_value(&app).unwrap();
    gone["metadata"]["finalizers"] = json!([]);
    let (client, log) = serve(move |r| match (r.method.as_str(), collection(&r.path)) {
        ("GET", Some((api_version, kind))) => {
            let names: &[&str] = match kind {
                "Deployment" => &["appstrate-api"],
                "StatefulSet" => &["appstrate-postgres"],
                "Service" => &["appstrate-api", "appstrate-postgres"],
                "PersistentVolumeClaim" => &["appstrate-data", "data-appstrate-postgres-0"],
                "NetworkPolicy" => &["appstrate-postgres"],
                _ => &["appstrate-boot-secrets", "appstrate-postgres"],
            };
            let items = names
                .iter()
                .map(|n| {
                    let mut c = child(api_version, kind, n, false);
                    if matches!(kind, "PersistentVolumeClaim" | "Secret") {
                        c["metadata"]
                            .as_object_mut()
                            .unwrap()
                            .remove("ownerReferences");
                    }
                    c
                })
                .collect();
            (200, list(api_version, kind, items))
        }
        ("DELETE", _) => deleted(),
        ("PATCH", _) => (200, gone.clone()),
        ("POST", _) => (201, r.body.clone()),
        _ => failure(500, "InternalError", &format!("unexpected {}", r.line())),
    });
    let action = reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context_with_events(client, unreachable_api()),
    )
    .await
    .expect("cleanup succeeds");
    assert_eq!(action, Action::await_change());

    let deletes: Vec<String> = lines(&log)
        .into_iter()
        .filter_map(|l| {
            l.strip_prefix("DELETE /api")
                .map(|p| p.rsplit_once("/namespaces/default/").unwrap().1.to_string())
        })
        .collect();
    assert_eq!(
        deletes,
        vec![
            "deployments/appstrate-api",
            "statefulsets/appstrate-postgres",
            "services/appstrate-api",
            "services/appstrate-postgres",
            "networkpolicies/appstrate-postgres",
            "persistentvolumeclaims/appstrate-data",
            "persistentvolumeclaims/data-appstrate-postgres-0",
            "secrets/appstrate-boot-secrets",
            "secrets/appstrate-postgres",
        ],
        "workloads go before the volumes they mount and the Secrets they read"
    );
    // The finalizer comes off last, once every child is deleted.
    let last = lines(&log).pop().unwrap();
    assert_eq!(
        last,
        "PATCH /apis/appstrate.dev/v1alpha1/namespaces/default/appstrates/appstrate"
    );
}

#[tokio::test]
async fn deletion_with_policy_retain_still_deletes_owned_workloads_but_keeps_data() {
    let mut app = with_finalizer(1);
    app.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let gone = serde_json::to_value(&app).unwrap();
    let (client, log) = serve(move |r| match (r.method.as_str(), collection(&r.path)) {
        ("GET", Some((api_version, kind))) => {
            let mut items = vec![child(
                api_version,
                kind,
                &format!("appstrate-{}", kind.to_lowercase()),
                false,
            )];
            // Labelled like ours but controlled by another owner: never ours to delete.
            let mut foreign = child(api_version, kind, "someone-else", false);
            foreign["metadata"]["ownerReferences"][0]["uid"] = json!("another-uid");
            items.push(foreign);
            (200, list(api_version, kind, items))
        }
        ("DELETE", _) => deleted(),
        ("PATCH", _) => (200, gone.clone()),
        _ => failure(500, "InternalError", &format!("unexpected {}", r.line())),
    });
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        crate::common::context(client, unreachable_api()),
    )
    .await
    .expect("cleanup succeeds");
    let deletes: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| l.starts_with("DELETE "))
        .collect();
    assert_eq!(
        deletes,
        vec![
            "DELETE /apis/apps/v1/namespaces/default/deployments/appstrate-deployment",
            "DELETE /apis/apps/v1/namespaces/default/statefulsets/appstrate-statefulset",
            "DELETE /api/v1/namespaces/default/services/appstrate-service",
            "DELETE /apis/networking.k8s.io/v1/namespaces/default/networkpolicies/appstrate-networkpolicy",
        ]
    );
}

#[tokio::test]
async fn event_notes_are_cut_to_the_api_server_limit() {
    // 3000 two-byte characters: cutting at 1024 bytes must not split one.
    static LONG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "é".repeat(3000));
    let app = with_finalizer(0);
    let (client, log) = refusing_deployment(&app, 422, LONG.as_str());
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context_with_events(client, unreachable_api()),
    )
    .await
    .expect_err("refused");
    let events = bodies(&log, "POST", "/events");
    let note = events
        .iter()
        .find(|e| e["reason"] == "ApplyFailed")
        .and_then(|e| e["note"].as_str())
        .expect("ApplyFailed event")
        .to_string();
    assert!(note.len() <= 1024, "note is {} bytes", note.len());
    assert!(
        note.len() > 1000,
        "the note keeps as much as fits: {} bytes",
        note.len()
    );
    assert!(
        note.starts_with("Deployment/appstrate-api: éé") && note.ends_with('…'),
        "{note}"
    );
    // The condition keeps the whole message (well under its 32 KiB limit).
    let status = bodies(&log, "PATCH", "/status").pop().unwrap();
    let ready = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert!(ready["message"].as_str().unwrap().ends_with(LONG.as_str()));
}
