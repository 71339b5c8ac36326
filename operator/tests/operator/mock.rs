//! A scripted API server on tower-test: every request is answered by a function of its method,
//! path and body, and recorded in order. Used where the exact requests matter (what is applied,
//! deleted, in which order) or where a real API server answers differently from kube-fake-client
//! (list items without `apiVersion`/`kind`, refused applies).

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request the operator sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// The query string, without `?` (empty when none).
    pub query: String,
    pub body: Value,
}

impl Recorded {
    /// `"PATCH /apis/apps/v1/…/deployments/x"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

pub type Log = Arc<Mutex<Vec<Recorded>>>;

/// A client whose API server is `answer`; the log holds every request, oldest first.
pub fn serve<F>(answer: F) -> (Client, Log)
where
    F: Fn(&Recorded) -> (u16, Value) + Send + 'static,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let log: Log = Arc::default();
    let recorded = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let r = Recorded {
                method,
                path,
                query,
                body,
            };
            let (code, answer) = answer(&r);
            recorded.lock().unwrap().push(r);
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (client, log)
}

/// The requests recorded so far, as `METHOD path` lines.
pub fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().map(Recorded::line).collect()
}

/// A list answer in the form a real API server gives for built-in kinds: the items carry no
/// `apiVersion` or `kind`.
pub fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut i| {
            if let Some(o) = i.as_object_mut() {
                o.remove("apiVersion");
                o.remove("kind");
            }
            i
        })
        .collect();
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "100"}, "items": items})
}

/// A `Status` failure as the API server sends it.
pub fn failure(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
    )
}

/// The `Status` a successful delete returns.
pub fn deleted() -> (u16, Value) {
    (
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
    )
}

/// The `(apiVersion, kind)` of a namespaced collection path such as
/// `/apis/apps/v1/namespaces/default/deployments`, for the child kinds the operator lists.
pub fn collection(path: &str) -> Option<(&'static str, &'static str)> {
    let plural = path.rsplit('/').next()?;
    Some(match plural {
        "deployments" => ("apps/v1", "Deployment"),
        "statefulsets" => ("apps/v1", "StatefulSet"),
        "services" => ("v1", "Service"),
        "persistentvolumeclaims" => ("v1", "PersistentVolumeClaim"),
        "secrets" => ("v1", "Secret"),
        "networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicy"),
        "replicasets" => ("apps/v1", "ReplicaSet"),
        _ => return None,
    })
}

/// The kind and name a single-object path such as `/api/v1/namespaces/default/secrets/x` names.
pub fn object(path: &str) -> Option<(&'static str, &str)> {
    let (collection_path, name) = path.rsplit_once('/')?;
    Some((collection(collection_path)?.1, name))
}

/// A scripted API server holding `live` children (listed and read as a real API server serves
/// them) that accepts every write, except the requests `refuse` answers itself. The status
/// subresource answers with `app`.
pub fn live_server<F>(app: &operator::Appstrate, live: Vec<Value>, refuse: F) -> (Client, Log)
where
    F: Fn(&Recorded) -> Option<(u16, Value)> + Send + 'static,
{
    let app_json = serde_json::to_value(app).unwrap();
    serve(move |r| {
        if let Some(answer) = refuse(r) {
            return answer;
        }
        let of_kind = |kind: &str| {
            live.iter()
                .filter(|o| o["kind"] == kind)
                .cloned()
                .collect::<Vec<_>>()
        };
        match (r.method.as_str(), collection(&r.path), object(&r.path)) {
            ("GET", Some((api_version, kind)), _) => (200, list(api_version, kind, of_kind(kind))),
            ("GET", None, Some((kind, name))) => of_kind(kind)
                .into_iter()
                .find(|o| o["metadata"]["name"] == name)
                .map(|o| (200, o))
                .unwrap_or_else(|| failure(404, "NotFound", &format!("{kind} {name} not found"))),
            ("PATCH", _, _) if r.path.contains("/appstrates/") => (200, app_json.clone()),
            ("PATCH", _, _) => (200, r.body.clone()),
            ("POST", _, _) => (201, r.body.clone()),
            ("DELETE", _, _) => deleted(),
            _ => failure(500, "InternalError", &format!("unexpected {}", r.line())),
        }
    })
}

/// The generated Secrets of `app` as the API server holds them (labelled, every key present).
pub fn generated_secrets(app: &operator::Appstrate) -> Vec<Value> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    operator::secrets::generated_secrets(app)
        .iter()
        .map(|which| {
            let mut v =
                serde_json::to_value(operator::secrets::new_secret(app, which, &mut rng)).unwrap();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Secret");
            v["metadata"]["resourceVersion"] = json!("5");
            v
        })
        .collect()
}
