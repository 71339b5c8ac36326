//! `appstrate-operator`: reconciles `Appstrate` resources.
//!
//! Environment: `LOG_LEVEL` (info), `LOG_FORMAT` (json|text), `METRICS_PORT` (8080),
//! `POD_NAMESPACE` (namespace of the leader-election Lease), `POD_NAME` (Lease holder identity),
//! `LEADER_ELECTION` (true), `WATCH_NAMESPACE` (all namespaces when unset),
//! `REQUEUE_NOT_READY_SECONDS` (10) and `REQUEUE_READY_SECONDS` (300): periodic reconciles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{error, info, warn};

use operator::health::HttpHealthProbe;
use operator::labels::{MANAGED_BY, MANAGER};
use operator::leader::{LeaderElector, RENEW_INTERVAL, RETRY_INTERVAL};
use operator::metrics::Metrics;
use operator::server::{router, ServerState};
use operator::{error_policy, reconcile, Appstrate, Context};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_new(env("LOG_LEVEL").unwrap_or_else(|| "info".into()))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if env("LOG_FORMAT").as_deref() == Some("text") {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let port: u16 = env("METRICS_PORT")
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let namespace = env("POD_NAMESPACE").unwrap_or_else(|| "default".into());
    let identity =
        env("POD_NAME").unwrap_or_else(|| format!("appstrate-operator-{}", std::process::id()));
    let leader_election = env("LEADER_ELECTION").is_none_or(|v| v != "false");
    let requeue = operator::reconcile::Requeue::from_env(env).map_err(|message| {
        error!(%message, "invalid configuration");
        anyhow::anyhow!(message)
    })?;

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let app = router(ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "metrics server stopped");
        }
    });
    info!(port, "serving /metrics, /healthz and /readyz");

    // One shutdown flag for SIGTERM and for a lost Lease.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutdown signal received");
            let _ = stop_tx.send(true);
        });
    }

    let mut config = kube::Config::infer().await?;
    operator::identify(&mut config);
    let client = Client::try_from(config)?;
    let elector = LeaderElector::new(client.clone(), &namespace, &identity);

    if leader_election {
        let mut stop = stop_rx.clone();
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => ready.store(true, Ordering::Relaxed),
                Err(e) => warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_INTERVAL) => {},
                _ = stop.changed() => return Ok(()),
            }
        }
        info!(identity = %elector.identity(), lease = operator::leader::LEASE_NAME, "became leader");
        let renew = LeaderElector::new(client.clone(), &namespace, &identity);
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(RENEW_INTERVAL).await;
                match renew.try_acquire_or_renew().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        error!("lost the leader Lease to another replica; stopping");
                        let _ = stop_tx.send(true);
                        return;
                    }
                    Err(e) if last_ok.elapsed() < operator::leader::LEASE_DURATION => {
                        warn!(error = %e, "could not renew the leader Lease; retrying")
                    }
                    Err(e) => {
                        error!(error = %e, "could not renew the leader Lease in time; stopping");
                        let _ = stop_tx.send(true);
                        return;
                    }
                }
            }
        });
    }
    ready.store(true, Ordering::Relaxed);

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Arc::new(HttpHealthProbe::default()),
            metrics.clone(),
            Some(Recorder::new(client.clone(), reporter)),
        )
        .with_requeue(requeue),
    );

    let watch_ns = env("WATCH_NAMESPACE");
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let apps: Api<DeserializeGuard<Appstrate>> = api(&client, &watch_ns);
    let children = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}"));
    let mut stop = stop_rx.clone();
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };

    info!("starting controller");
    Controller::new(apps, watcher::Config::default().any_semantic())
        .owns(api::<Deployment>(&client, &watch_ns), children.clone())
        .owns(api::<StatefulSet>(&client, &watch_ns), children.clone())
        .owns(api::<Service>(&client, &watch_ns), children.clone())
        .owns(api::<NetworkPolicy>(&client, &watch_ns), children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller event");
            }
        })
        .await;

    if leader_election {
        if let Err(e) = elector.release().await {
            warn!(error = %e, "could not release the leader Lease");
        }
    }
    info!("stopped");
    Ok(())
}
