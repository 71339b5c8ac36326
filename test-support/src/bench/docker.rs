//! The Docker-mode benchmark (`bench docker`): run start → first runner event with a pool of 2 run
//! slots and without a pool, for the scratch runner image and for the agent image (Debian userland with
//! bash, git and Bun), the image sizes, the engine's container create+start floor, and the machine's
//! load average. (The sidecar-only pool of the seed is gone: a slot holds its sidecar.)
//!
//! The API runs in-process (`spawn_app_with`, listening on the bridge gateway; a release build of the
//! bench is a release build of the server), against a fake LLM on the host; the images are the `:test`
//! ones `images/build.sh` builds. Each run's latency is the first runner log row's `createdAt` (server
//! clock) minus the wall-clock time taken right before the POST was sent (same host, same clock). Runs
//! are sequential; with a pool, the next run starts once the pool is full again (the steady state of a
//! server that is not saturated).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use futures::StreamExt;
use serde_json::{json, Value};

use super::report::{Summary, Target};
use super::runs::quantile;
use super::{min_median_max, ms};
use crate::docker::{self as dk, Sweep};
use crate::fake_llm::{FakeLlm, Turn};

pub const POOLED_P50_TARGET_MS: f64 = 60.0;
pub const SPEEDUP_TARGET: f64 = 8.0;

fn body() -> Value {
    json!({
        "manifest": {"schema_version": "0.1", "name": "@bench/docker", "version": "1.0.0",
                     "type": "agent", "display_name": "Docker bench"},
        "prompt": "Say hi."
    })
}

/// Sequential runs on a server with `RUN_SLOT_POOL_SIZE=pool` and `AGENT_IMAGE=image`; the start →
/// first event latencies.
async fn start_latencies(
    pool: usize,
    runs: usize,
    gateway: &str,
    image: &str,
) -> anyhow::Result<Vec<Duration>> {
    let turns: Vec<Turn> = (0..runs + 2).map(|_| Turn::text("hi")).collect();
    let fake = FakeLlm::start_on(&format!("{gateway}:0"), turns)
        .await
        .context("fake LLM on the bridge gateway")?;
    let llm = format!("http://host.docker.internal:{}", fake.addr().port());
    let pool_s = pool.to_string();
    let app = crate::spawn_app_with(&[
        ("RUN_ADAPTER", "docker"),
        ("HOST", gateway),
        ("AGENT_IMAGE", image),
        ("SIDECAR_IMAGE", dk::sidecar_image()),
        ("RUN_SLOT_POOL_SIZE", pool_s.as_str()),
        ("LLM_BASE_URL", llm.as_str()),
        ("LLM_API_KEY", "sk-bench"),
        ("LLM_MODEL", "m"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "host.docker.internal"),
    ])
    .await;
    let _sweep = Sweep::new(dk::instance_of(&app.data_dir));
    let pool_full = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h: Value = app
                .client
                .get(app.url("/health"))
                .send()
                .await?
                .json()
                .await?;
            if h["run_slots"]["ready"].as_u64() == Some(pool as u64) {
                return anyhow::Ok(());
            }
            if Instant::now() > deadline {
                bail!("the pool never reached {pool}: {h}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut out = Vec::new();
    for i in 0..runs + 2 {
        pool_full().await?;
        let sent = SystemTime::now();
        let r = app
            .key(reqwest::Method::POST, "/api/runs/inline")
            .json(&body())
            .send()
            .await?;
        if r.status() != 201 {
            bail!("POST /api/runs/inline: {} {}", r.status(), r.text().await?);
        }
        let id = r.json::<Value>().await?["id"]
            .as_str()
            .context("run id")?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let run = loop {
            let run: Value = app
                .key(reqwest::Method::GET, &format!("/api/runs/{id}?wait=10"))
                .send()
                .await?
                .json()
                .await?;
            if run["completed_at"].is_string() {
                break run;
            }
            if Instant::now() > deadline {
                bail!("run {id} did not finish");
            }
        };
        if run["status"] != "success" {
            bail!("run {id}: {} {}", run["status"], run["error"]);
        }
        let logs: Value = app
            .key(reqwest::Method::GET, &format!("/api/runs/{id}/logs"))
            .send()
            .await?
            .json()
            .await?;
        let first = logs["data"]
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|l| l["data"]["platform"] != true && l["type"] == "progress")
            })
            .and_then(|l| l["createdAt"].as_str())
            .context("no runner event")?;
        let at: chrono::DateTime<chrono::Utc> = first.parse()?;
        let sent: chrono::DateTime<chrono::Utc> = sent.into();
        let took = (at - sent).to_std().unwrap_or_default();
        if i >= 2 {
            out.push(took);
        }
    }
    app.shutdown().await;
    Ok(out)
}

/// Create + start (and + wait) of a container that exits at once (the runner's `probe-connect` with no
/// address), on the default bridge or on a fresh internal network.
async fn floor(
    docker: &bollard::Docker,
    n: usize,
    internal: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let net = format!("appstrate-bench-floor-{}", uuid::Uuid::new_v4().simple());
    let labels = HashMap::from([("appstrate.bench".to_string(), "floor".to_string())]);
    if internal {
        docker
            .create_network(NetworkCreateRequest {
                name: net.clone(),
                internal: Some(true),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await?;
    }
    let (mut started, mut out) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let c = docker
            .create_container(
                None::<CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(dk::agent_image().into()),
                    cmd: Some(vec!["probe-connect".into()]),
                    labels: Some(labels.clone()),
                    host_config: Some(HostConfig {
                        network_mode: internal.then(|| net.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await?;
        docker.start_container(&c.id, None).await?;
        started.push(t.elapsed());
        let _ = docker.wait_container(&c.id, None).next().await;
        out.push(t.elapsed());
        docker
            .remove_container(
                &c.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await?;
    }
    if internal {
        docker.remove_network(&net).await?;
    }
    Ok((started, out))
}

/// `/proc/loadavg`'s 1-, 5- and 15-minute figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn docker_bench(runs: usize, summary: &mut Summary) -> anyhow::Result<()> {
    println!("\n== docker: images, engine floor, run start with and without run slots ==");
    println!("load average (1, 5, 15 min) before: {}", load_average());
    if !crate::services::docker_available() {
        bail!("no Docker engine answers (start dockerd; scripts/services.sh does)");
    }
    tokio::task::spawn_blocking(dk::ensure_images).await?;
    let docker = dk::client().await;
    let gateway = dk::bridge_gateway().await;
    for image in [
        dk::agent_image(),
        dk::agent_userland_image(),
        dk::sidecar_image(),
    ] {
        let size = docker.inspect_image(image).await?.size.unwrap_or(0) as f64 / 1024.0 / 1024.0;
        println!("image {image}: {size:.1} MiB");
        summary.add(format!("image size {image}"), size, "MiB", Target::None);
    }
    for internal in [false, true] {
        let (started, f) = floor(&docker, 10, internal).await?;
        let where_ = if internal {
            "internal network"
        } else {
            "default bridge"
        };
        let (min, med, max) = min_median_max(&started).context("floor")?;
        println!(
            "container create+start floor ({where_}, 10): min {:.1}  median {:.1}  max {:.1} ms",
            ms(min),
            ms(med),
            ms(max)
        );
        summary.add(
            format!("container create+start, {where_} (median)"),
            ms(med),
            "ms",
            Target::None,
        );
        let (min, med, max) = min_median_max(&f).context("floor")?;
        println!(
            "container create+start+wait floor ({where_}, 10): min {:.1}  median {:.1}  max {:.1} ms",
            ms(min),
            ms(med),
            ms(max)
        );
        summary.add(
            format!("container create+start+wait, {where_} (median)"),
            ms(med),
            "ms",
            Target::None,
        );
    }
    let mut p50s = HashMap::new();
    for pool in [2usize, 0] {
        // The agent image: same adapter, same hardening, a 100+ MiB root filesystem instead of one file.
        let mut v = start_latencies(pool, runs, &gateway, dk::agent_userland_image()).await?;
        v.sort();
        let (p50, p99) = (quantile(&v, 0.5), quantile(&v, 0.99));
        println!(
            "agent image, RUN_SLOT_POOL_SIZE={pool}: run start → first runner event over {} runs: min {:.1}  p50 {:.1}  p99 {:.1}  max {:.1} ms",
            v.len(),
            ms(v[0]),
            ms(p50),
            ms(p99),
            ms(v[v.len() - 1])
        );
        summary.add(
            format!("docker run start → first event p50, agent image, run slots {pool}"),
            ms(p50),
            "ms",
            Target::None,
        );
    }
    for pool in [2usize, 0] {
        let mut v = start_latencies(pool, runs, &gateway, dk::agent_image()).await?;
        v.sort();
        let (p50, p99) = (quantile(&v, 0.5), quantile(&v, 0.99));
        println!(
            "RUN_SLOT_POOL_SIZE={pool}: run start → first runner event over {} runs: min {:.1}  p50 {:.1}  p99 {:.1}  max {:.1} ms",
            v.len(),
            ms(v[0]),
            ms(p50),
            ms(p99),
            ms(v[v.len() - 1])
        );
        p50s.insert(pool, p50);
        let target = if pool > 0 {
            Target::AtMost(POOLED_P50_TARGET_MS)
        } else {
            Target::None
        };
        summary.add(
            format!("docker run start → first event p50, run slots {pool}"),
            ms(p50),
            "ms",
            target,
        );
        summary.add(
            format!("docker run start → first event p99, run slots {pool}"),
            ms(p99),
            "ms",
            Target::None,
        );
    }
    let speedup = ms(p50s[&0]) / ms(p50s[&2]).max(0.001);
    println!("a start in a run slot is {speedup:.2}× faster than a fresh one (p50)");
    println!("load average (1, 5, 15 min) after: {}", load_average());
    summary.add(
        "docker run slot vs fresh speed-up (p50)",
        speedup,
        "×",
        Target::AtLeast(SPEEDUP_TARGET),
    );
    Ok(())
}
