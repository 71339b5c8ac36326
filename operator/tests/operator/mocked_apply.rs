//! What the apply step does with what a real API server answers (scripted with `mock.rs`): a
//! refused child among accepted ones, quantities the server stores in canonical form, and
//! pods an admission controller refuses.

use std::sync::Arc;

use kube::core::DeserializeGuard;
use operator::{desired_objects, reconcile, Appstrate};
use serde_json::{json, Value};

use crate::common::{context, unreachable_api};
use crate::mock::{failure, generated_secrets, live_server, Log};
use crate::mocked::{bodies, live, with_finalizer, writes};

/// The children of `app` as the API server holds them, with its generated Secrets.
fn children_of(app: &Appstrate) -> Vec<Value> {
    let mut out: Vec<Value> = desired_objects(app)
        .iter()
        .map(|d| live(&d.object))
        .collect();
    out.extend(generated_secrets(app));
    out
}

/// Writes to children: every request but reads, the status and Events.
fn child_writes(log: &Log) -> Vec<String> {
    writes(log)
        .into_iter()
        .filter(|l| !l.ends_with("/status") && !l.contains("/events"))
        .collect()
}

fn last_status(log: &Log) -> Value {
    bodies(log, "PATCH", "/status")
        .pop()
        .expect("status written")["status"]
        .clone()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
        .clone()
}

const RESIZE_REFUSED: &str = "persistentvolumeclaims \"appstrate-data\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";

#[tokio::test]
async fn a_refused_volume_growth_does_not_hold_back_the_other_children() {
    // Live: the tier-0 children with a 1Gi data volume and image 0.1.0.
    let live_children = children_of(&with_finalizer(0));
    // Spec: the volume grows (the storage class cannot expand it) and the image changes.
    let mut app = with_finalizer(0);
    app.spec.data_volume.size = "2Gi".into();
    app.spec.image = "appstrate:0.2.0".into();
    let (client, log) = live_server(&app, live_children, |r| {
        (r.method == "PATCH" && r.path.ends_with("/persistentvolumeclaims/appstrate-data"))
            .then(|| failure(403, "Forbidden", RESIZE_REFUSED))
    });
    let err = reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client, unreachable_api()),
    )
    .await
    .expect_err("a refused child is a reconcile error (backoff)");
    assert_eq!(err.metric_label(), "forbidden");

    let writes = child_writes(&log);
    assert!(
        writes.contains(
            &"PATCH /apis/apps/v1/namespaces/default/deployments/appstrate-api".to_string()
        ),
        "the image change still reaches the Deployment: {writes:?}"
    );
    let deployment = bodies(&log, "PATCH", "/deployments/appstrate-api")
        .pop()
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "appstrate:0.2.0"
    );
    assert!(
        !writes.iter().any(|w| w.starts_with("DELETE")),
        "a refused child is not pruned: {writes:?}"
    );
    let status = last_status(&log);
    assert_eq!(status["phase"], "Failed");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "ApplyFailed");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("PersistentVolumeClaim/appstrate-data: ")
            && message.contains("must support resize"),
        "{message}"
    );
}

#[tokio::test]
async fn a_size_may_return_to_the_live_claim_but_not_below_it() {
    // The growth to 2Gi was refused: the live claim still has 1Gi.
    let live_children = children_of(&with_finalizer(0));

    // Back to the claim's size, spelled differently: nothing to apply, nothing refused.
    let mut back = with_finalizer(0);
    back.spec.data_volume.size = "1024Mi".into();
    let (client, log) = live_server(&back, live_children.clone(), |_| None);
    reconcile(
        Arc::new(DeserializeGuard(Ok(back))),
        context(client, unreachable_api()),
    )
    .await
    .expect("the size of the live claim is accepted");
    assert_eq!(child_writes(&log), Vec::<String>::new());
    assert_eq!(last_status(&log)["phase"], "Provisioning");

    // Below the live claim: refused by the operator itself, naming the floor, and not sent.
    let mut below = with_finalizer(0);
    below.spec.data_volume.size = "512Mi".into();
    let (client, log) = live_server(&below, live_children, |_| None);
    let err = reconcile(
        Arc::new(DeserializeGuard(Ok(below))),
        context(client, unreachable_api()),
    )
    .await
    .expect_err("a shrink is refused");
    assert_eq!(err.metric_label(), "invalid");
    assert_eq!(child_writes(&log), Vec::<String>::new());
    let status = last_status(&log);
    assert_eq!(status["phase"], "Failed");
    let message = condition(&status, "Ready")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("PersistentVolumeClaim/appstrate-data: spec.dataVolume.size 512Mi is smaller than the 1Gi")
            && message.contains("at least 1Gi"),
        "{message}"
    );
}

/// `v` with every string equal to a key of `canonical` replaced by its value, as the API server
/// stores quantities.
fn canonicalize(v: &Value, canonical: &[(&str, &str)]) -> Value {
    match v {
        Value::String(s) => canonical
            .iter()
            .find(|(from, _)| from == s)
            .map(|(_, to)| json!(to))
            .unwrap_or_else(|| v.clone()),
        Value::Array(a) => Value::Array(a.iter().map(|x| canonicalize(x, canonical)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), canonicalize(x, canonical)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test]
async fn non_canonical_quantities_reach_a_steady_state() {
    let mut app = with_finalizer(2);
    app.spec.data_volume.size = "1024Mi".into();
    app.spec.resources = Some(
        serde_json::from_value(json!({
            "requests": {"cpu": "0.5", "memory": "1024Mi"},
            "limits": {"cpu": "1.5", "memory": "2048Mi"},
        }))
        .unwrap(),
    );
    if let Some(m) = app.spec.postgres.as_mut().and_then(|p| p.managed.as_mut()) {
        m.storage = "5120Mi".into();
    }
    // What the API server stores and lists back.
    let canonical = [
        ("1024Mi", "1Gi"),
        ("2048Mi", "2Gi"),
        ("5120Mi", "5Gi"),
        ("0.5", "500m"),
        ("1.5", "1500m"),
    ];
    let stored: Vec<Value> = children_of(&app)
        .iter()
        .map(|c| canonicalize(c, &canonical))
        .collect();
    let deployment = stored.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "500m",
        "the fixture stores canonical quantities"
    );
    let (client, log) = live_server(&app, stored, |_| None);
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client, unreachable_api()),
    )
    .await
    .expect("reconcile succeeds");
    assert_eq!(
        child_writes(&log),
        Vec::<String>::new(),
        "children whose quantities only differ in spelling are not re-applied"
    );
}

#[tokio::test]
async fn pods_refused_by_pod_security_are_reported_with_the_namespace_label() {
    let app = with_finalizer(3);
    let mut live_children = children_of(&app);
    // The Deployment exists with no ready replica; its ReplicaSet cannot create pods.
    live_children.push(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "appstrate-api-7d9f", "namespace": "default",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app.kubernetes.io/name": "appstrate", "app.kubernetes.io/instance": "appstrate",
                "app.kubernetes.io/component": "api", "app.kubernetes.io/managed-by": "appstrate-operator",
                "app.kubernetes.io/part-of": "appstrate", "pod-template-hash": "7d9f"}},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/component": "api"}}},
        "status": {"replicas": 0, "conditions": [{"type": "ReplicaFailure", "status": "True",
            "reason": "FailedCreate",
            "message": "pods \"appstrate-api-7d9f-x2\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"dind\" must not set securityContext.privileged=true)"}]},
    }));
    let (client, log) = live_server(&app, live_children, |_| None);
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client, unreachable_api()),
    )
    .await
    .expect("reconcile succeeds");
    let status = last_status(&log);
    assert_eq!(status["phase"], "Failed", "{status}");
    let api = condition(&status, "ApiReady");
    assert_eq!(api["reason"], "FailedCreate");
    let message = api["message"].as_str().unwrap();
    assert!(
        message.starts_with("ReplicaSet appstrate-api-7d9f: FailedCreate: pods \"appstrate-api-7d9f-x2\" is forbidden: violates PodSecurity")
            && message.contains("pod-security.kubernetes.io/enforce=privileged")
            && message.contains("0/2 ready"),
        "{message}"
    );
}
