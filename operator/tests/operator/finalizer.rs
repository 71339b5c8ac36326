//! The first reconcile of a new resource adds the finalizer (tower-test mock API server: the
//! fake client cannot answer the JSON patch `kube::runtime::finalizer` sends).

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::Client;
use operator::v1alpha1::FINALIZER;
use operator::{reconcile, Appstrate};
use serde_json::{json, Value};

use crate::common::{context, example, unreachable_api};

#[tokio::test]
async fn new_resource_gets_the_finalizer_first() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let app: Appstrate = example(0);
    assert!(app.metadata.finalizers.is_none());

    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("one request");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            req.uri().path(),
            "/apis/appstrate.dev/v1alpha1/namespaces/default/appstrates/appstrate"
        );
        assert_eq!(
            req.headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json-patch+json")
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let ops = body.as_array().expect("a JSON patch");
        assert!(
            ops.iter().any(|op| op["op"] == "add"
                && op["path"] == "/metadata/finalizers"
                && op["value"] == json!([FINALIZER])),
            "patch adds the finalizer: {body}"
        );
        let mut answer = serde_json::to_value(example(0)).unwrap();
        answer["metadata"]["finalizers"] = json!([FINALIZER]);
        answer["metadata"]["resourceVersion"] = json!("2");
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        // Nothing else may be requested before the finalizer is in place.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), handle.next_request())
                .await
                .ok()
                .flatten()
                .is_none(),
            "no further request after adding the finalizer"
        );
    });

    let action = reconcile(
        Arc::new(DeserializeGuard(Ok(app))),
        context(client, unreachable_api()),
    )
    .await
    .expect("finalizer added");
    // The patch triggers a watch event; the next reconcile does the work.
    assert_eq!(action, Action::await_change());
    server.await.expect("mock server assertions hold");
}

#[tokio::test]
async fn a_rejected_finalizer_patch_is_an_error_with_a_metric_label() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    tokio::spawn(async move {
        let (_req, send) = handle.next_request().await.expect("one request");
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "forbidden", "reason": "Forbidden", "code": 403});
        send.send_response(
            Response::builder()
                .status(403)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    });
    let err = reconcile(
        Arc::new(DeserializeGuard(Ok(example(0)))),
        context(client, unreachable_api()),
    )
    .await
    .expect_err("a 403 surfaces as an error");
    assert_eq!(err.metric_label(), "add_finalizer");
}
