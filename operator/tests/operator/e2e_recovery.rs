//! End-to-end tests (see `e2e.rs`) of states a person has to resolve: a Secret made by hand,
//! a refused volume growth, lost credentials, a deletion racing the creation, and pods Pod
//! Security refuses.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use operator::reconcile::Requeue;
use operator::v1alpha1::Phase;
use operator::Appstrate;
use serde_json::json;

use crate::common::example;
use crate::e2e::{
    cluster, condition, condition_message, controller_manager_runs, default_requeue,
    in_labelled_namespace, in_namespace, wait_for, TestNs,
};

/// Periodic reconciles every second: a test waiting on what a reconcile observes (Secrets are
/// not watched) does not wait for the default 10 s.
fn fast_requeue() -> Requeue {
    Requeue {
        not_ready: Duration::from_secs(1),
        ready: Duration::from_secs(1),
    }
}

async fn wait_for_condition(t: &TestNs, type_: &str, reason: &str) -> Appstrate {
    let apps = t.api::<Appstrate>();
    wait_for(&format!("{type_} {reason}"), || async {
        apps.get("appstrate")
            .await
            .is_ok_and(|a| condition(&a, type_).is_some_and(|(_, r)| r == reason))
    })
    .await;
    apps.get("appstrate").await.unwrap()
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_secret_created_by_hand_under_a_generated_name_is_used() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(client, "appst-e2e-hand", fast_requeue(), |t| async move {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "appstrate-boot-secrets"},
            "stringData": {"BETTER_AUTH_SECRET": "made-by-hand-0123456789",
                "UPLOAD_SIGNING_SECRET": "made-by-hand-0123456789"},
        }))
        .unwrap();
        let secrets = t.api::<Secret>();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        t.create(example(0)).await;
        // A key missing: reported by name.
        let apps = t.api::<Appstrate>();
        wait_for("the missing key reported", || async {
            apps.get("appstrate").await.is_ok_and(|a| {
                condition_message(&a, "ApiReady")
                    .starts_with("Secret appstrate-boot-secrets lacks key(s) CONNECTION_ENCRYPTION_KEY")
            })
        })
        .await;
        // Complete: used as it is, never replaced.
        secrets
            .patch(
                "appstrate-boot-secrets",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"CONNECTION_ENCRYPTION_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}})),
            )
            .await
            .unwrap();
        wait_for("the Secret used", || async {
            apps.get("appstrate").await.is_ok_and(|a| {
                condition_message(&a, "ApiReady").starts_with("Deployment appstrate-api: 0/1 ready")
            })
        })
        .await;
        let s = secrets.get("appstrate-boot-secrets").await.unwrap();
        assert!(s.labels().is_empty(), "the operator does not touch it");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_refused_volume_growth_does_not_block_other_changes_and_can_be_taken_back() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(client, "appst-e2e-grow", fast_requeue(), |t| async move {
        // A storage class that does not exist: the claim stays unbound and cannot be resized,
        // with or without a controller-manager or provisioner.
        let mut app = example(0);
        app.spec.data_volume.storage_class_name = Some("appstrate-e2e-no-such-class".into());
        t.create(app).await;
        let deployments = t.api::<Deployment>();
        wait_for("the data volume and the Deployment", || async {
            t.names::<PersistentVolumeClaim>().await == vec!["appstrate-data".to_string()]
                && t.names::<Deployment>().await.len() == 1
        })
        .await;
        let apps = t.api::<Appstrate>();
        apps.patch(
            "appstrate",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"dataVolume": {"size": "2Gi"}, "image": "appstrate:0.2.0"}}),
            ),
        )
        .await
        .unwrap();
        wait_for("the new image on the Deployment", || async {
            deployments.get("appstrate-api").await.is_ok_and(|d| {
                d.spec
                    .and_then(|s| s.template.spec)
                    .is_some_and(|p| p.containers[0].image.as_deref() == Some("appstrate:0.2.0"))
            })
        })
        .await;
        let app = wait_for_condition(&t, "Ready", "ApplyFailed").await;
        assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Failed));
        assert!(
            condition_message(&app, "Ready").starts_with("PersistentVolumeClaim/appstrate-data: "),
            "{}",
            condition_message(&app, "Ready")
        );

        // Back to what the claim has: accepted by the API server and by the operator.
        apps.patch(
            "appstrate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dataVolume": {"size": "1Gi"}}})),
        )
        .await
        .expect("the size can return to the live claim's");
        wait_for("Failed left", || async {
            apps.get("appstrate").await.is_ok_and(|a| {
                a.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p != Phase::Failed)
            })
        })
        .await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_deleted_credential_secret_is_not_regenerated_while_its_volume_exists() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(client, "appst-e2e-creds", fast_requeue(), |t| async move {
        t.create(example(1)).await;
        wait_for("the postgres StatefulSet and Secret", || async {
            t.names::<StatefulSet>().await.len() == 1 && t.names::<Secret>().await.len() == 2
        })
        .await;
        // The StatefulSet's claim: its controller creates it where a controller-manager runs;
        // elsewhere the test does, labelled as the claim template labels it.
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data-appstrate-postgres-0", "labels": {
                "app.kubernetes.io/name": "appstrate", "app.kubernetes.io/instance": "appstrate",
                "app.kubernetes.io/component": "postgres",
                "app.kubernetes.io/managed-by": "appstrate-operator",
                "app.kubernetes.io/part-of": "appstrate"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
        }))
        .unwrap();
        match t.api::<PersistentVolumeClaim>().create(&PostParams::default(), &claim).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("claim: {e}"),
        }
        let secrets = t.api::<Secret>();
        secrets
            .delete("appstrate-postgres", &DeleteParams::default())
            .await
            .unwrap();
        let app = wait_for_condition(&t, "DatabaseReady", "CredentialsLost").await;
        assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Degraded));
        assert!(condition_message(&app, "DatabaseReady").contains("data-appstrate-postgres-0"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            secrets.get_opt("appstrate-postgres").await.unwrap().is_none(),
            "no new password the database would refuse"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_deleting_right_after_creating_counts_no_finalizer_error() {
    let Some(client) = cluster().await else {
        return;
    };
    in_namespace(
        client,
        "appst-e2e-quick",
        default_requeue(),
        |t| async move {
            let apps = t.api::<Appstrate>();
            for _ in 0..3 {
                t.create(example(0)).await;
                apps.delete("appstrate", &DeleteParams::default())
                    .await
                    .unwrap();
                wait_for("resource gone", || async {
                    apps.get_opt("appstrate").await.ok().flatten().is_none()
                })
                .await;
            }
            // Let any reconcile still queued for the deleted resource finish.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let metrics = t.metrics.render();
            assert!(
                !metrics.contains("reason=\"remove_finalizer\""),
                "a finalizer removal that found the resource gone counted as an error:\n{metrics}"
            );
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG"]
async fn e2e_pods_refused_by_pod_security_are_reported_on_the_resource() {
    let Some(client) = cluster().await else {
        return;
    };
    in_labelled_namespace(
        client,
        "appst-e2e-psa",
        fast_requeue(),
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
        |t| async move {
            t.create(example(3)).await;
            wait_for("the API Deployment", || async {
                t.names::<Deployment>().await.len() == 1
            })
            .await;
            if !controller_manager_runs(&t).await {
                println!("skipped: no controller-manager creates ReplicaSets on this cluster");
                return;
            }
            let app = wait_for_condition(&t, "ApiReady", "FailedCreate").await;
            let message = condition_message(&app, "ApiReady");
            assert!(
                message.contains("PodSecurity")
                    && message.contains("pod-security.kubernetes.io/enforce=privileged"),
                "{message}"
            );
            assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Failed));
        },
    )
    .await;
}
