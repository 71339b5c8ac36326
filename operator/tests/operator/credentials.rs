//! Generated Secrets against kube-fake-client: a Secret created by hand under a generated name,
//! and a credential Secret deleted while its volume holds data.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::ByteString;
use kube::api::Api;
use operator::v1alpha1::Phase;
use serde_json::json;

use crate::common::{example, unreachable_api, NS};
use crate::reconcile::{condition, fake, fake_with, get_app, run};

fn by_hand(keys: &[&str]) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| (k.to_string(), json!("c2VjcmV0LXZhbHVlLTEyMzQ1Njc4OTA=")))
        .collect();
    // No labels: not listed by the operator's selector.
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "appstrate-boot-secrets", "namespace": NS}, "data": data})
}

#[tokio::test]
async fn a_secret_created_by_hand_under_a_generated_name_is_used_when_complete() {
    let all = [
        "BETTER_AUTH_SECRET",
        "UPLOAD_SIGNING_SECRET",
        "CONNECTION_ENCRYPTION_KEY",
    ];
    let client = fake_with(example(0), vec![by_hand(&all)]).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let before = secrets.get("appstrate-boot-secrets").await.unwrap().data;
    run(&client, "appstrate", unreachable_api()).await;
    run(&client, "appstrate", unreachable_api()).await;

    let app = get_app(&client, "appstrate").await;
    let api = condition(&app, "ApiReady");
    assert_eq!(api.reason, "DeploymentProgressing");
    assert_eq!(
        api.message, "Deployment appstrate-api: 0/1 ready",
        "the Secret made by hand is used, not reported missing"
    );
    assert_eq!(
        secrets.get("appstrate-boot-secrets").await.unwrap().data,
        before,
        "and left as it is"
    );
}

#[tokio::test]
async fn a_secret_created_by_hand_without_a_key_is_reported_naming_the_key() {
    let client = fake_with(
        example(0),
        vec![by_hand(&[
            "BETTER_AUTH_SECRET",
            "CONNECTION_ENCRYPTION_KEY",
        ])],
    )
    .await;
    run(&client, "appstrate", unreachable_api()).await;
    let app = get_app(&client, "appstrate").await;
    let api = condition(&app, "ApiReady");
    assert_eq!(api.status, "False");
    assert!(
        api.message
            .starts_with("Secret appstrate-boot-secrets lacks key(s) UPLOAD_SIGNING_SECRET: "),
        "{}",
        api.message
    );
    assert_eq!(condition(&app, "Ready").reason, "ApiNotReady");
}

async fn password(secrets: &Api<Secret>, name: &str) -> Option<ByteString> {
    secrets
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|s| s.data)
        .and_then(|d| d.get("password").cloned())
}

#[tokio::test]
async fn a_deleted_credential_secret_is_not_regenerated_while_its_volume_holds_data() {
    let client = fake(example(1)).await;
    run(&client, "appstrate", unreachable_api()).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);

    // No volume yet (no StatefulSet controller has created the claim): nothing to mismatch,
    // so a deleted Secret is simply generated again.
    secrets
        .delete("appstrate-postgres", &Default::default())
        .await
        .unwrap();
    run(&client, "appstrate", unreachable_api()).await;
    let original = password(&secrets, "appstrate-postgres")
        .await
        .expect("generated again while no data exists");

    // The StatefulSet's claim, as its controller creates it from the claim template.
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-appstrate-postgres-0", "namespace": NS, "labels": {
            "app.kubernetes.io/name": "appstrate", "app.kubernetes.io/instance": "appstrate",
            "app.kubernetes.io/component": "postgres", "app.kubernetes.io/managed-by": "appstrate-operator",
            "app.kubernetes.io/part-of": "appstrate"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}});
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
        .create(&Default::default(), &serde_json::from_value(claim).unwrap())
        .await
        .unwrap();
    let kept = secrets.get("appstrate-postgres").await.unwrap();
    secrets
        .delete("appstrate-postgres", &Default::default())
        .await
        .unwrap();
    run(&client, "appstrate", unreachable_api()).await;

    assert_eq!(
        password(&secrets, "appstrate-postgres").await,
        None,
        "no new password that the initialised database would refuse"
    );
    let app = get_app(&client, "appstrate").await;
    assert_eq!(app.status.as_ref().unwrap().phase, Some(Phase::Degraded));
    let db = condition(&app, "DatabaseReady");
    assert_eq!(
        (db.status.as_str(), db.reason.as_str()),
        ("False", "CredentialsLost")
    );
    assert!(
        db.message.contains("data-appstrate-postgres-0")
            && db
                .message
                .contains("Recreate appstrate-postgres from a backup")
            && db.message.contains("username, password, url"),
        "{}",
        db.message
    );
    assert_eq!(condition(&app, "Ready").reason, "DatabaseNotReady");

    // Restoring the Secret (without the operator's labels, as a backup tool may) recovers.
    let mut restored = kept.clone();
    restored.metadata = kube::api::ObjectMeta {
        name: Some("appstrate-postgres".into()),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &restored)
        .await
        .unwrap();
    run(&client, "appstrate", unreachable_api()).await;
    let app = get_app(&client, "appstrate").await;
    assert_eq!(
        condition(&app, "DatabaseReady").reason,
        "StatefulSetNotReady"
    );
    assert_eq!(
        password(&secrets, "appstrate-postgres").await,
        Some(original)
    );
}
