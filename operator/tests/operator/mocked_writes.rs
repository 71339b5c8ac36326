//! How the operator writes (scripted API server of `mock.rs`): one Event per generated
//! Secret, the field manager of every write, and a finalizer removal that finds the resource
//! already gone.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use operator::metrics::Metrics;
use operator::v1alpha1::FINALIZER;
use operator::{reconcile, Context};
use serde_json::Value;

use crate::common::{example, unreachable_api};
use crate::mock::{failure, lines, live_server, Log};
use crate::mocked::{bodies, context_with_events, with_finalizer};

fn requests(log: &Log) -> Vec<crate::mock::Recorded> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn each_generated_secret_gets_an_event_of_its_own() {
    let app = with_finalizer(3);
    let (client, log) = live_server(&app, vec![], |_| None);
    reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context_with_events(client, unreachable_api()),
    )
    .await
    .expect("reconcile succeeds");

    let created: Vec<Value> = bodies(&log, "POST", "/events")
        .into_iter()
        .filter(|e| e["reason"] == "SecretCreated")
        .collect();
    let mut named: Vec<(String, String)> = created
        .iter()
        .map(|e| {
            (
                e["related"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            "appstrate-boot-secrets",
            "appstrate-minio",
            "appstrate-postgres",
            "appstrate-redis"
        ]
        .iter()
        .map(|n| (n.to_string(), format!("generated Secret {n}")))
        .collect::<Vec<_>>(),
        "one Event per Secret, each naming it"
    );
    for e in &created {
        assert_eq!(e["related"]["kind"], "Secret");
        assert_eq!(e["regarding"]["kind"], "Appstrate");
    }
    assert!(
        !lines(&log)
            .iter()
            .any(|l| l.starts_with("PATCH") && l.contains("/events/")),
        "no Event was folded into another one's series"
    );
}

/// A context whose metrics the test can read.
fn context_with_metrics(client: kube::Client) -> (Arc<Context>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(
        client,
        unreachable_api(),
        metrics.clone(),
        None,
    ));
    (ctx, metrics)
}

fn deleting(app: &operator::Appstrate) -> operator::Appstrate {
    let mut app = app.clone();
    app.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    app
}

#[tokio::test]
async fn every_write_names_the_operator_as_field_manager() {
    // A new resource (the finalizer is added), its first reconcile (Secrets created, children
    // applied, status written), then its deletion (children deleted, finalizer removed).
    let mut fresh = example(1);
    fresh.metadata.resource_version = Some("1".into());
    let applied = with_finalizer(1);
    let mut deleted = deleting(&applied);
    deleted.spec.deletion_policy = operator::v1alpha1::DeletionPolicy::Delete;
    let mut all = Vec::new();
    for app in [fresh, applied, deleted] {
        let (client, log) = live_server(&app, vec![], |_| None);
        reconcile(
            Arc::new(DeserializeGuard(Ok(app))),
            crate::common::context(client, unreachable_api()),
        )
        .await
        .expect("reconcile succeeds");
        all.extend(requests(&log));
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &all {
        if matches!(r.method.as_str(), "POST" | "PATCH" | "PUT") {
            assert!(
                r.query
                    .split('&')
                    .any(|p| p == "fieldManager=appstrate-operator"),
                "{} without the operator's field manager (query {:?})",
                r.line(),
                r.query
            );
            // A POST names its collection last, a PATCH its object.
            let skip = usize::from(r.method == "PATCH");
            let segment = r.path.rsplit('/').nth(skip).unwrap_or_default();
            seen.insert(format!("{} {segment}", r.method));
        }
    }
    for expected in [
        "PATCH appstrates", // the finalizer, added and removed
        "POST secrets",
        "PATCH deployments",
        "PATCH appstrate", // the status subresource: .../appstrates/appstrate/status
    ] {
        assert!(seen.contains(expected), "no {expected} among {seen:?}");
    }
    assert_eq!(
        all.iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/appstrates/appstrate"))
            .count(),
        2,
        "the finalizer is added once and removed once"
    );
}

#[tokio::test]
async fn a_finalizer_removal_that_finds_the_resource_gone_is_not_an_error() {
    // Deleted right after it was created: by the time the cleanup is done, the resource is gone.
    let app = deleting(&with_finalizer(0));
    assert!(app
        .metadata
        .finalizers
        .as_ref()
        .unwrap()
        .contains(&FINALIZER.to_string()));
    let (client, log) = live_server(&app, vec![], |r| {
        (r.method == "PATCH" && r.path.ends_with("/appstrates/appstrate")).then(|| {
            failure(
                404,
                "NotFound",
                "appstrates.appstrate.dev \"appstrate\" not found",
            )
        })
    });
    let (ctx, metrics) = context_with_metrics(client);
    let action = reconcile(Arc::new(DeserializeGuard(Ok(app))), ctx)
        .await
        .expect("a resource already gone is done, not an error");
    assert_eq!(action, Action::await_change());
    assert!(
        lines(&log)
            .iter()
            .any(|l| l
                == "PATCH /apis/appstrate.dev/v1alpha1/namespaces/default/appstrates/appstrate")
    );
    let text = metrics.render();
    assert!(
        !text.contains("appstrate_operator_reconcile_errors_total{"),
        "no reconcile error counted:\n{text}"
    );

    // Any other refusal still keeps the finalizer and counts.
    let app = deleting(&with_finalizer(0));
    let (client, _log) = live_server(&app, vec![], |r| {
        (r.method == "PATCH" && r.path.ends_with("/appstrates/appstrate"))
            .then(|| failure(422, "Invalid", "the test operation failed"))
    });
    let (ctx, _) = context_with_metrics(client);
    let err = reconcile(Arc::new(DeserializeGuard(Ok(app))), ctx)
        .await
        .expect_err("a failed removal is retried");
    assert_eq!(err.metric_label(), "remove_finalizer");
}
