//! Reconcile duration of a tier-3 resource against kube-fake-client's in-memory API server.
//!
//! `cargo run --release -p operator --features bench --bin operator-bench [-- ITERATIONS]`
//! prints p50/p99 for the first reconcile (every child and Secret created) and for steady-state
//! reconciles (nothing to change), plus the process RSS afterwards. When the `appstrate-operator`
//! binary sits next to this one (or `OPERATOR_BIN` names it), it is also started against an empty
//! in-process API server and its idle RSS is printed. When `KUBECONFIG` is set, the controller
//! also runs in-process against that cluster: the time from creating the tier-3 resource to
//! every child existing is printed (a bare kube-apiserver is enough: nothing waits for pods).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::DeserializeGuard;
use kube::Api;
use kube_fake_client::ClientBuilder;
use operator::health::{ApiHealth, PoolHealth, StaticHealthProbe};
use operator::metrics::Metrics;
use operator::v1alpha1::FINALIZER;
use operator::{reconcile, Appstrate, Context};

const TIER3: &str = include_str!("../../../examples/appstrate-tier3.yaml");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn fresh_client() -> anyhow::Result<kube::Client> {
    let mut app: Appstrate = serde_yaml::from_str(TIER3)?;
    app.metadata.namespace = Some("default".into());
    app.metadata.uid = Some("00000000-0000-4000-8000-000000000001".into());
    app.metadata.finalizers = Some(vec![FINALIZER.into()]);
    Ok(ClientBuilder::new()
        .with_resource::<Appstrate>()
        .with_status_subresource::<Appstrate>()
        .with_object(app)
        .build()
        .await?)
}

async fn once(client: &kube::Client, ctx: &Arc<Context>) -> anyhow::Result<Duration> {
    let app = Api::<Appstrate>::namespaced(client.clone(), "default")
        .get("appstrate")
        .await?;
    let start = Instant::now();
    reconcile(Arc::new(DeserializeGuard(Ok(app))), ctx.clone()).await?;
    Ok(start.elapsed())
}

/// An API server with no objects: lists answer empty, watches stay open.
async fn empty_api_server() -> anyhow::Result<std::net::SocketAddr> {
    use axum::response::IntoResponse;
    async fn any(uri: axum::http::Uri) -> axum::response::Response {
        if uri.query().unwrap_or_default().contains("watch=") {
            let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
            return axum::response::Response::new(axum::body::Body::from_stream(never));
        }
        axum::Json(serde_json::json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": "1"}, "items": []}))
        .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(any)).await });
    Ok(addr)
}

/// Idle RSS of the operator binary watching an empty cluster, in KiB.
async fn operator_idle_rss(bin: &std::path::Path) -> anyhow::Result<u64> {
    let addr = empty_api_server().await?;
    let dir = std::env::temp_dir().join(format!("operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {{server: \"http://{addr}\"}}\n\
             contexts:\n- name: b\n  context: {{cluster: b, user: b}}\ncurrent-context: b\nusers:\n- name: b\n  user: {{token: b}}\n"
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(bin)
        .env("KUBECONFIG", &kubeconfig)
        .env("LEADER_ELECTION", "false")
        .env("METRICS_PORT", port.to_string())
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    // Let it connect, list and settle into its watches.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("operator exited early"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(kib)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let health = Arc::new(StaticHealthProbe(Ok(ApiHealth {
        status: "healthy".into(),
        tier: Some(3),
        sidecar_pool: Some(PoolHealth {
            enabled: true,
            desired: 2,
            ready: 2,
        }),
    })));
    let metrics = Arc::new(Metrics::default());

    let mut first = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let client = fresh_client().await?;
        let ctx = Arc::new(Context::new(
            client.clone(),
            health.clone(),
            metrics.clone(),
            None,
        ));
        first.push(once(&client, &ctx).await?);
    }

    let client = fresh_client().await?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        health.clone(),
        metrics.clone(),
        None,
    ));
    once(&client, &ctx).await?;
    let mut steady = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        steady.push(once(&client, &ctx).await?);
    }

    println!(
        "operator reconcile, tier-3 resource (examples/appstrate-tier3.yaml), kube-fake-client"
    );
    report(
        "first reconcile (4 Secrets + 11 objects created, status)",
        first,
    );
    report("steady-state reconcile (no change)", steady);
    if let Some(kib) = rss_kib() {
        println!(
            "bench process RSS after the runs: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    if std::env::var_os("KUBECONFIG").is_some() {
        match cluster_apply_to_children().await {
            Ok(d) => println!(
                "cluster (KUBECONFIG): apply -> every child exists: {} ms",
                d.as_millis()
            ),
            Err(e) => println!("cluster (KUBECONFIG): not measured ({e:#})"),
        }
    } else {
        println!("cluster: not measured (set KUBECONFIG)");
    }
    let bin = std::env::var_os("OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            Some(
                std::env::current_exe()
                    .ok()?
                    .with_file_name("appstrate-operator"),
            )
        })
        .filter(|p| p.exists());
    match bin {
        Some(bin) => match operator_idle_rss(&bin).await {
            Ok(kib) => println!(
                "operator idle RSS ({}): {:.1} MiB",
                bin.display(),
                kib as f64 / 1024.0
            ),
            Err(e) => println!("operator idle RSS: not measured ({e})"),
        },
        None => println!(
            "operator idle RSS: not measured (build appstrate-operator or set OPERATOR_BIN)"
        ),
    }
    Ok(())
}

/// Runs the controller in-process against the `KUBECONFIG` cluster, in a namespace of its own,
/// and measures the time from creating the tier-3 resource to every child existing. Everything
/// is removed afterwards without relying on the cluster's controllers.
async fn cluster_apply_to_children() -> anyhow::Result<Duration> {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret, Service};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use kube::core::{ApiResource, DynamicObject};
    use kube::runtime::{watcher, Controller};
    use kube::{CustomResourceExt, ResourceExt};

    let client = kube::Client::try_default().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "appstrates.appstrate.dev",
        &PatchParams::apply("appstrate-bench").force(),
        &Patch::Apply(Appstrate::crd()),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = crds.get("appstrates.appstrate.dev").await.is_ok_and(|c| {
            c.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "CRD not established in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ns = format!(
        "appstrate-bench-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
            % 0xffff_ffff
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;

    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(StaticHealthProbe(Err("not probed by the bench".into()))),
        Arc::new(Metrics::default()),
        None,
    ));
    let children =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=appstrate-operator");
    let controller = Controller::new(
        Api::<DeserializeGuard<Appstrate>>::namespaced(client.clone(), &ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(
        Api::<Deployment>::namespaced(client.clone(), &ns),
        children.clone(),
    )
    .owns(
        Api::<StatefulSet>::namespaced(client.clone(), &ns),
        children.clone(),
    )
    .owns(Api::<Service>::namespaced(client.clone(), &ns), children)
    .run(operator::reconcile, operator::error_policy, ctx)
    .for_each(|_| async {});
    let operator = tokio::spawn(controller);

    let mut app: Appstrate = serde_yaml::from_str(TIER3)?;
    app.metadata.namespace = Some(ns.clone());
    let apps: Api<Appstrate> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=appstrate-operator");
    async fn count<K>(client: &kube::Client, ns: &str, lp: &ListParams) -> usize
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(client.clone(), ns)
            .list(lp)
            .await
            .map(|l| l.items.len())
            .unwrap_or(0)
    }
    let start = Instant::now();
    let created = apps.create(&PostParams::default(), &app).await;
    let mut measured = created.map(|_| ()).map_err(anyhow::Error::from);
    if measured.is_ok() {
        measured = loop {
            if count::<Deployment>(&client, &ns, &lp).await == 1
                && count::<StatefulSet>(&client, &ns, &lp).await == 3
                && count::<Service>(&client, &ns, &lp).await == 4
                && count::<Secret>(&client, &ns, &lp).await == 4
            {
                break Ok(());
            }
            if start.elapsed() > Duration::from_secs(120) {
                break Err(anyhow::anyhow!("children not all created within 120 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
    }
    let elapsed = start.elapsed();

    // Clean up: the running operator's finalizer cleanup deletes the workloads; the rest
    // (Retain data, Events) and the namespace are removed here.
    let _ = apps.delete("appstrate", &DeleteParams::default()).await;
    let gone_by = Instant::now() + Duration::from_secs(60);
    while apps.get_opt("appstrate").await.ok().flatten().is_some() && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.abort();
    if apps.get_opt("appstrate").await.ok().flatten().is_some() {
        let _ = apps
            .patch(
                "appstrate",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    for ar in [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<k8s_openapi::api::events::v1::Event>(&()),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        for o in api
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            if o.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
            {
                let _ = api
                    .patch(
                        &o.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
            let _ = api.delete(&o.name_any(), &DeleteParams::background()).await;
        }
    }
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // No namespace controller on a bare API server: finalize the Terminating namespace by hand.
    if let Ok(Some(mut n)) = namespaces.get_opt(&ns).await {
        if let Some(spec) = n.spec.as_mut() {
            spec.finalizers = Some(vec![]);
        }
        let _ = namespaces
            .replace_subresource("finalize", &ns, &PostParams::default(), &n)
            .await;
    }
    measured.map(|()| elapsed)
}
