//! Reconciles against the scripted API server of `mock.rs`, for what kube-fake-client does not
//! show: list items without `apiVersion`/`kind` (as a real API server sends them), refused
//! applies, and the order of requests.

use std::sync::Arc;

use kube::core::DeserializeGuard;
use operator::v1alpha1::FINALIZER;
use operator::{desired_objects, reconcile, Appstrate};
use serde_json::{json, Value};

use crate::common::{example, unreachable_api, NS, UID};
use crate::mock::{collection, deleted, failure, lines, list, serve, Log};

/// The example of `tier`, already carrying the finalizer (so the reconcile goes straight on).
fn with_finalizer(tier: u8) -> Appstrate {
    let mut app = example(tier);
    app.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    app.metadata.generation = Some(1);
    app.metadata.resource_version = Some("7".into());
    app
}

/// A desired object as the API server would return it: with server-set metadata.
fn live(object: &Value) -> Value {
    let mut v = object.clone();
    let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
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

/// Every request but the GETs.
fn writes(log: &Log) -> Vec<String> {
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
