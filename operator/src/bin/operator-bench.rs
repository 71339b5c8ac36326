//! Reconcile duration of a tier-3 resource against kube-fake-client's in-memory API server.
//!
//! `cargo run --release -p operator --features bench --bin operator-bench [-- ITERATIONS]`
//! prints p50/p99 for the first reconcile (every child and Secret created) and for steady-state
//! reconciles (nothing to change), plus the process RSS afterwards. When the `appstrate-operator`
//! binary sits next to this one (or `OPERATOR_BIN` names it), it is also started against an empty
//! in-process API server and its idle RSS is printed.

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
        "first reconcile (4 Secrets + 8 objects created, status)",
        first,
    );
    report("steady-state reconcile (no change)", steady);
    if let Some(kib) = rss_kib() {
        println!(
            "bench process RSS after the runs: {:.1} MiB",
            kib as f64 / 1024.0
        );
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
