//! NetworkPolicies around the managed services, against kube-fake-client.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::common::{example, unreachable_api, NS};
use crate::reconcile::{fake, names, run};

#[tokio::test]
async fn only_the_instance_api_pods_reach_the_managed_services_unless_switched_off() {
    let client = fake(example(3)).await;
    run(&client, "appstrate", unreachable_api()).await;
    assert_eq!(
        names::<NetworkPolicy>(&client).await,
        vec!["appstrate-minio", "appstrate-postgres", "appstrate-redis"]
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), NS);
    for (component, port) in [("postgres", 5432), ("redis", 6379), ("minio", 9000)] {
        let p = policies
            .get(&format!("appstrate-{component}"))
            .await
            .unwrap();
        let v = serde_json::to_value(&p.spec).unwrap();
        assert_eq!(
            v["podSelector"]["matchLabels"],
            json!({"app.kubernetes.io/name": "appstrate", "app.kubernetes.io/instance": "appstrate",
                "app.kubernetes.io/component": component}),
            "{component}"
        );
        assert_eq!(v["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            v["ingress"],
            json!([{
                "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "appstrate",
                    "app.kubernetes.io/instance": "appstrate", "app.kubernetes.io/component": "api"}}}],
                "ports": [{"protocol": "TCP", "port": port}],
            }]),
            "{component}: only the API pods, only the service port"
        );
        assert_eq!(p.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    }

    // Switched off (a cluster whose policies another tool manages): the policies go.
    Api::<operator::Appstrate>::namespaced(client.clone(), NS)
        .patch(
            "appstrate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"networkPolicy": {"enabled": false}}})),
        )
        .await
        .unwrap();
    run(&client, "appstrate", unreachable_api()).await;
    assert_eq!(names::<NetworkPolicy>(&client).await, Vec::<String>::new());
}
