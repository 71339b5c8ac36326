//! Docker mode (`RUN_ADAPTER=docker`) against a real engine: the runner and sidecar images built by
//! `images/build.sh`, the fake LLM on the host reached only through the sidecar's egress.
//!
//! The API and the fake LLM listen on the default bridge's gateway address (a local interface; loopback
//! is unreachable from containers), which is what `host.docker.internal:host-gateway` names inside the
//! sidecar. Without an engine the tests are skipped, except under CI where they fail. Every object a
//! server creates carries its instance label, swept on drop even when a test fails.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::{runner_bin, TestApp, TEST_ENCRYPTION_KEY};
use test_support::docker::{self, Sweep};
use test_support::fake_llm::{FakeLlm, Turn};
use test_support::{services, spawn_app_with};

pub(crate) const CANARY: &str = "sk-live-canary-docker-77e1";
const BIN: &str = env!("CARGO_BIN_EXE_appstrate");

pub(crate) struct DockerApp {
    pub(crate) app: TestApp,
    pub(crate) fake: FakeLlm,
    pub(crate) docker: Docker,
    pub(crate) instance: String,
    pub(crate) gateway: String,
    // Dropped last: removes whatever the server left on the engine.
    _sweep: Sweep,
}

/// The engine is there (else skip, or fail under CI) and the images are built.
pub(crate) async fn engine() -> Option<(Docker, String)> {
    if !services::docker_available() {
        return None;
    }
    tokio::task::spawn_blocking(docker::ensure_images)
        .await
        .expect("image build");
    Some((docker::client().await, docker::bridge_gateway().await))
}

pub(crate) async fn docker_app(
    turns: Vec<Turn>,
    pool: &str,
    extra: &[(&str, &str)],
) -> Option<DockerApp> {
    let (docker, gateway) = engine().await?;
    let fake = FakeLlm::start_on(&format!("{gateway}:0"), turns)
        .await
        .expect("fake LLM on the bridge gateway");
    let llm = format!("http://host.docker.internal:{}", fake.addr().port());
    let mut env: Vec<(&str, &str)> = vec![
        ("RUN_ADAPTER", "docker"),
        ("HOST", gateway.as_str()),
        ("AGENT_IMAGE", docker::agent_image()),
        ("SIDECAR_IMAGE", docker::sidecar_image()),
        ("SIDECAR_POOL_SIZE", pool),
        ("LLM_BASE_URL", llm.as_str()),
        ("LLM_API_KEY", CANARY),
        ("LLM_MODEL", "fake-model"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "host.docker.internal"),
    ];
    env.extend_from_slice(extra);
    let app = spawn_app_with(&env).await;
    let instance = docker::instance_of(&app.data_dir);
    Some(DockerApp {
        _sweep: Sweep::new(instance.clone()),
        app,
        fake,
        docker,
        instance,
        gateway,
    })
}

pub(crate) fn inline(manifest_extra: Value) -> Value {
    let mut manifest = json!({
        "schema_version": "0.1",
        "name": "@tests/docker",
        "version": "1.0.0",
        "type": "agent",
        "display_name": "Docker test agent",
    });
    for (k, v) in manifest_extra.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    json!({"manifest": manifest, "prompt": "Say hello."})
}

pub(crate) async fn start_run(app: &TestApp, body: Value) -> String {
    let r = app
        .key(Method::POST, "/api/runs/inline")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let b: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

pub(crate) async fn get_run(app: &TestApp, id: &str, wait: u32) -> Value {
    app.key(Method::GET, &format!("/api/runs/{id}?wait={wait}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(crate) async fn wait_terminal(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = get_run(app, id, 10).await;
        if ["success", "failed", "timeout", "cancelled"].contains(&r["status"].as_str().unwrap()) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {r}");
    }
}

pub(crate) async fn health(app: &TestApp) -> Value {
    app.client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(crate) async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs`.
pub(crate) async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the run's agent container runs and the runner's first event arrived (so its sidecar is
/// wired up), and returns the container's inspection.
pub(crate) async fn running_agent(
    d: &DockerApp,
    id: &str,
) -> bollard::models::ContainerInspectResponse {
    let name = format!("appstrate-agent-{id}");
    eventually(60, "the agent's first event", || async {
        let info = d.docker.inspect_container(&name, None).await.ok()?;
        let logs: Value = d
            .app
            .key(Method::GET, &format!("/api/runs/{id}/logs"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let started = logs["data"]
            .as_array()?
            .iter()
            .any(|l| l["message"] == "runtime starting");
        (info.state.as_ref()?.running == Some(true) && started).then_some(info)
    })
    .await
}

/// Waits until no container and no network of run `id` remains.
pub(crate) async fn nothing_left(d: &DockerApp, id: &str, secs: u64) {
    eventually(secs, "the run's containers and network to go", || async {
        let c = docker::containers(&d.docker, &[("appstrate.run", id)]).await;
        let exec = format!("appstrate-exec-{id}");
        let net = d.docker.inspect_network(&exec, None).await.is_ok();
        // A run in a slot has the slot's labels and network; its containers carry the run's names.
        let mut named = false;
        for name in [
            format!("appstrate-agent-{id}"),
            format!("appstrate-sidecar-{id}"),
        ] {
            named |= d.docker.inspect_container(&name, None).await.is_ok();
        }
        (c.is_empty() && !net && !named).then_some(())
    })
    .await
}

pub(crate) fn env_of(info: &bollard::models::ContainerInspectResponse) -> Vec<String> {
    info.config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
}

pub(crate) fn networks_of(info: &bollard::models::ContainerInspectResponse) -> Vec<String> {
    let mut n: Vec<String> = info
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    n.sort();
    n
}

pub(crate) fn ip_on(info: &bollard::models::ContainerInspectResponse, network: &str) -> String {
    info.network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .and_then(|m| m.get(network))
        .and_then(|e| e.ip_address.clone())
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| panic!("no address on {network}"))
}

#[tokio::test]
async fn a_docker_run_succeeds_through_its_sidecar_in_hardened_containers() {
    let output = json!({"greeting": "hello from a container"});
    let Some(d) = docker_app(
        // The first turn waits so that the live containers can be inspected.
        vec![Turn::tool_call("output", json!({"data": output})).with_delay(2500)],
        "0",
        &[],
    )
    .await
    else {
        return;
    };
    let h = health(&d.app).await;
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["isolation"], "container");
    assert_eq!(h["adapters"]["run_adapter"], "docker");
    assert_eq!(h["checks"]["docker"]["status"], "healthy");
    assert_eq!(
        h["sidecar_pool"],
        json!({"enabled": false, "desired": 0, "ready": 0})
    );
    assert!(
        docker::containers(&d.docker, &[("appstrate.instance", &d.instance)])
            .await
            .is_empty()
    );

    let id = start_run(
        &d.app,
        inline(json!({"_meta": {"dev.appstrate/resources": {"memory_mb": 256, "cpu": 0.5}}})),
    )
    .await;
    let agent = running_agent(&d, &id).await;
    let exec = format!("appstrate-exec-{id}");

    // The agent: named, labelled, only on its internal run network, hardened, limited, no secret.
    assert_eq!(
        agent.name.as_deref(),
        Some(&*format!("/appstrate-agent-{id}"))
    );
    let cfg = agent.config.clone().unwrap();
    let labels = cfg.labels.clone().unwrap();
    assert_eq!(labels["appstrate.managed"], "true");
    assert_eq!(labels["appstrate.run"], id);
    assert_eq!(labels["appstrate.role"], "agent");
    assert_eq!(labels["appstrate.instance"], d.instance);
    assert_eq!(cfg.user.as_deref(), Some("65534:65534"));
    assert_eq!(cfg.image.as_deref(), Some(docker::agent_image()));
    assert_eq!(networks_of(&agent), vec![exec.clone()]);
    let hc = agent.host_config.clone().unwrap();
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(hc
        .security_opt
        .unwrap()
        .iter()
        .any(|o| o.starts_with("no-new-privileges")));
    assert_eq!(hc.memory, Some(256 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.pids_limit, Some(256));
    assert_eq!(hc.privileged, Some(false));
    let tmpfs = hc.tmpfs.unwrap();
    assert_eq!(
        tmpfs["/workspace"],
        "size=512m,uid=65534,gid=65534,mode=0700"
    );
    assert!(tmpfs.contains_key("/tmp"));
    let env = env_of(&agent);
    assert!(env.contains(&format!("AGENT_RUN_ID={id}")), "{env:?}");
    // The agent's model key is the run's sidecar token, which is also its forward-proxy password.
    let token = env
        .iter()
        .find_map(|e| e.strip_prefix("MODEL_API_KEY="))
        .expect("MODEL_API_KEY")
        .to_string();
    assert!(token.starts_with("sct_") && token.len() >= 36, "{token}");
    assert!(env.contains(&"SIDECAR_URL=http://sidecar:8080".to_string()));
    assert!(env.contains(&format!("HTTPS_PROXY=http://run:{token}@sidecar:8081")));
    assert!(env.contains(&"MODEL_BASE_URL=http://sidecar:8080/llm/openai".to_string()));
    let all_env = env.join("\n");
    for secret in [
        CANARY,
        TEST_ENCRYPTION_KEY,
        "LLM_API_KEY",
        "CONNECTION_ENCRYPTION_KEY",
        "DATABASE_URL",
    ] {
        assert!(!all_env.contains(secret), "{secret} in the agent's Env");
    }

    // The run network is internal and labelled.
    let net = d.docker.inspect_network(&exec, None).await.unwrap();
    assert_eq!(net.internal, Some(true));
    assert_eq!(
        net.options.unwrap()["com.docker.network.bridge.inhibit_ipv4"],
        "true"
    );
    let net_labels = net.labels.unwrap();
    assert_eq!(net_labels["appstrate.managed"], "true");
    assert_eq!(net_labels["appstrate.run"], id);

    // Without a pool, a fresh sidecar for this run: on the egress and run networks, hardened, and
    // holding the key only in memory (configured through /configure, not through its environment).
    let sc = d
        .docker
        .inspect_container(&format!("appstrate-sidecar-{id}"), None)
        .await
        .expect("a fresh sidecar for the run");
    let sc_labels = sc.config.clone().unwrap().labels.unwrap();
    assert_eq!(sc_labels["appstrate.managed"], "true");
    assert_eq!(sc_labels["appstrate.role"], "sidecar");
    assert_eq!(sc_labels["appstrate.run"], id);
    assert_eq!(
        networks_of(&sc),
        vec!["appstrate-egress".to_string(), exec.clone()]
    );
    let sc_hc = sc.host_config.clone().unwrap();
    assert_eq!(sc_hc.readonly_rootfs, Some(true));
    assert_eq!(sc_hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc_hc.memory, Some(256 * 1024 * 1024));
    assert_eq!(
        sc_hc.extra_hosts,
        Some(vec!["host.docker.internal:host-gateway".to_string()])
    );
    assert!(!env_of(&sc).join("\n").contains(CANARY));
    assert!(!env_of(&sc).join("\n").contains(&token));

    // The sidecar's published control port answers any host process, but its routes need the token.
    let port = sc
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .and_then(|p| p.get("8080/tcp").cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .expect("published control port");
    let control = format!("http://127.0.0.1:{port}");
    let host = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = host
        .post(format!("{control}/llm/openai/chat/completions"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = host
        .post(format!("{control}/proxy"))
        .header("x-target", "https://example.com/")
        .header("x-integration", "@a/b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = host
        .post(format!("{control}/proxy"))
        .header("proxy-authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "past the token check");

    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"]["output"], output);
    // The fake LLM on the host got the real key, injected by the sidecar.
    assert!(!d.fake.requests().is_empty());
    assert!(d
        .fake
        .authorizations()
        .iter()
        .all(|a| a == &format!("Bearer {CANARY}")));
    assert!(!done.to_string().contains(CANARY));
    assert_eq!(
        d.fake.requests().len(),
        1,
        "only the runner reached the model"
    );

    // Teardown: agent, sidecar and run network are gone.
    nothing_left(&d, &id, 20).await;
    let m = metrics(&d.app).await;
    assert!(
        m.contains(r#"appstrate_sidecar_acquire_total{source="fresh"} 1"#),
        "{m}"
    );
    assert!(m.contains("appstrate_sidecar_pool_desired 0"), "{m}");
}

/// A run in a container publishes a document through its sidecar's forward proxy; its signed URL serves it.
#[tokio::test]
async fn a_docker_run_publishes_a_document() {
    let Some(d) = docker_app(
        vec![
            Turn::tool_call(
                "publish_document",
                json!({"name": "notes.md", "mediaType": "text/markdown", "content": "from a container"}),
            ),
            Turn::text("done"),
        ],
        "0",
        &[],
    )
    .await
    else {
        return;
    };
    let id = start_run(&d.app, inline(json!({}))).await;
    let run = wait_terminal(&d.app, &id).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["documents"][0]["name"], "notes.md", "{run}");
    let docs: Value = d
        .app
        .key(Method::GET, &format!("/api/runs/{id}/documents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = docs["data"][0]["downloadUrl"].as_str().unwrap();
    let r = d.app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "from a container");
}

#[tokio::test]
async fn the_agent_container_reaches_nothing_but_its_own_sidecar() {
    let Some(d) = docker_app(
        vec![
            Turn::text("slow").with_delay(60_000),
            Turn::text("slow").with_delay(60_000),
        ],
        "2",
        &[],
    )
    .await
    else {
        return;
    };
    // Both runs take a ready run slot.
    eventually(90, "two ready run slots", || async {
        (health(&d.app).await["run_slots"]["ready"] == 2).then_some(())
    })
    .await;
    let a = start_run(&d.app, inline(json!({}))).await;
    let b = start_run(&d.app, inline(json!({}))).await;
    let agent_a = running_agent(&d, &a).await;
    let agent_b = running_agent(&d, &b).await;
    // With a pool of 2, both runs are in run slots: each on its slot's own network.
    let net_a = networks_of(&agent_a).remove(0);
    let net_b = networks_of(&agent_b).remove(0);
    assert!(net_a.starts_with("appstrate-exec-slot-"), "{net_a}");
    assert_ne!(net_a, net_b);
    // The sidecars are connected to their run network under the alias `sidecar`.
    let sidecar_on = |net: String| {
        let docker = d.docker.clone();
        async move {
            let n = docker.inspect_network(&net, None).await.unwrap();
            let containers = n.containers.unwrap_or_default();
            let id = containers
                .iter()
                .find(|(_, c)| c.name.as_deref().is_some_and(|n| n.contains("sidecar")))
                .map(|(id, _)| id.clone())
                .expect("a sidecar on the run network");
            docker.inspect_container(&id, None).await.unwrap()
        }
    };
    let sc_a = sidecar_on(net_a.clone()).await;
    let sc_b = sidecar_on(net_b.clone()).await;
    let gw_a = d
        .docker
        .inspect_network(&net_a, None)
        .await
        .unwrap()
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway))
        .expect("run network gateway");

    let own = format!("{}:8080", ip_on(&sc_a, &net_a));
    let llm = format!("{}:{}", d.gateway, d.fake.addr().port());
    let api = format!("{}:{}", d.gateway, d.app.port);
    let api_via_run_gw = format!("{gw_a}:{}", d.app.port);
    let other_run = format!("{}:8080", ip_on(&sc_b, &net_b));
    let other_egress = format!("{}:8080", ip_on(&sc_b, "appstrate-egress"));
    let other_proxy = format!("{}:8081", ip_on(&sc_b, "appstrate-egress"));
    let agent_name = agent_a.name.unwrap().trim_start_matches('/').to_string();
    let probe = {
        let targets = [
            &own,
            &llm,
            &api,
            &api_via_run_gw,
            &other_run,
            &other_egress,
            &other_proxy,
        ]
        .map(|s| s.to_string());
        tokio::task::spawn_blocking(move || {
            let mut cmd = vec!["/appstrate-runner", "probe-connect"];
            cmd.extend(targets.iter().map(String::as_str));
            docker::exec(&agent_name, &cmd)
        })
        .await
        .unwrap()
    };
    let result = |addr: &str| {
        probe
            .lines()
            .find(|l| l.starts_with(&format!("{addr} ")))
            .unwrap_or_else(|| panic!("no probe line for {addr}: {probe}"))
            .to_string()
    };
    // Positive control: the probe does connect where the agent may go.
    assert_eq!(result(&own), format!("{own} connected"), "{probe}");
    for blocked in [
        &llm,
        &api,
        &api_via_run_gw,
        &other_run,
        &other_egress,
        &other_proxy,
    ] {
        assert!(
            result(blocked).starts_with(&format!("{blocked} failed")),
            "the agent reached {blocked}: {probe}"
        );
    }
    // The fake LLM was only ever reached through a sidecar: both requests carry the injected key.
    assert!(d
        .fake
        .authorizations()
        .iter()
        .all(|k| k == &format!("Bearer {CANARY}")));

    for id in [&a, &b] {
        let r = d
            .app
            .key(Method::POST, &format!("/api/runs/{id}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for id in [&a, &b] {
        nothing_left(&d, id, 20).await;
    }
}

#[tokio::test]
async fn cancel_and_timeout_leave_nothing_behind() {
    let Some(d) = docker_app(
        vec![
            Turn::text("slow").with_delay(60_000),
            Turn::text("slow").with_delay(60_000),
        ],
        "0",
        &[],
    )
    .await
    else {
        return;
    };
    let id = start_run(&d.app, inline(json!({}))).await;
    running_agent(&d, &id).await;
    let t = Instant::now();
    let r = d
        .app
        .key(Method::POST, &format!("/api/runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "cancelled");
    assert_eq!(b["error"], "Cancelled by user");
    nothing_left(&d, &id, 20).await;
    assert!(t.elapsed() < Duration::from_secs(20));

    let id = start_run(&d.app, inline(json!({"timeout": 2}))).await;
    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "timeout", "{done}");
    assert_eq!(done["error"], "Run timed out after 2s");
    nothing_left(&d, &id, 20).await;
    assert!(
        docker::networks(&d.docker, &[("appstrate.instance", &d.instance)])
            .await
            .is_empty()
    );
}

// ---- A crashed Docker-mode server (real `appstrate` process, SIGKILL) ----

pub(crate) fn serve_env(
    dir: &std::path::Path,
    port: u16,
    gateway: &str,
    llm: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("BETTER_AUTH_SECRET", "s".into()),
        ("UPLOAD_SIGNING_SECRET", "0123456789abcdef".into()),
        ("CONNECTION_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY.into()),
        ("PORT", port.to_string()),
        ("HOST", gateway.into()),
        ("DATA_DIR", dir.join("data").to_string_lossy().into_owned()),
        ("LLM_BASE_URL", llm.into()),
        ("LLM_API_KEY", CANARY.into()),
        ("LLM_MODEL", "m".into()),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "host.docker.internal".into()),
        ("RUN_ADAPTER", "docker".into()),
        ("AGENT_IMAGE", docker::agent_image().into()),
        ("SIDECAR_IMAGE", docker::sidecar_image().into()),
        ("SIDECAR_POOL_SIZE", "2".into()),
        ("RUNNER_BIN", runner_bin().to_string_lossy().into_owned()),
        ("SYSTEM_PACKAGES_DIR", "./none".into()),
    ]
}

pub(crate) fn command(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&'static str, String)],
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub(crate) async fn serve(
    dir: &std::path::Path,
    env: &[(&'static str, String)],
    base: &str,
) -> Child {
    #[allow(clippy::zombie_processes)]
    let child = command(dir, &["serve"], env)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_server_with_ready_slots_and_runs_in_flight_leaves_nothing_after_restart() {
    let Some((docker, gateway)) = engine().await else {
        return;
    };
    let fake = FakeLlm::start_on(
        &format!("{gateway}:0"),
        vec![
            Turn::text("slow").with_delay(120_000),
            Turn::text("slow").with_delay(120_000),
            Turn::text("slow").with_delay(120_000),
        ],
    )
    .await
    .unwrap();
    let llm = format!("http://host.docker.internal:{}", fake.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let instance = docker::instance_of(&dir.path().join("data"));
    let _sweep = Sweep::new(instance.clone());
    let port = services::free_port();
    let base = format!("http://{gateway}:{port}");
    let env = serve_env(dir.path(), port, &gateway, &llm);
    let out = command(dir.path(), &["bootstrap"], &env).output().unwrap();
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut server = serve(dir.path(), &env, &base).await;
    let slots_ready = |want: u64| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let h: Value = client
                    .get(format!("{base}/health"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if h["run_slots"]["ready"] == want {
                    return;
                }
                assert!(Instant::now() < deadline, "run slots never ready: {h}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Two ready slots: two runs take them, the third is created on the hot path.
    slots_ready(2).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run: Value = client
            .post(format!("{base}/api/runs/inline"))
            .bearer_auth(&key)
            .json(&inline(json!({})))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    // All three agents run (slot agents carry the run's name once taken), and the pool is full again.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let running = docker
                .inspect_container(&format!("appstrate-agent-{id}"), None)
                .await
                .ok()
                .and_then(|i| i.state?.running)
                == Some(true);
            if running {
                break;
            }
            assert!(Instant::now() < deadline, "the agent of {id} never ran");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    slots_ready(2).await;
    let before = docker::containers(&docker, &[("appstrate.instance", &instance)]).await;
    assert_eq!(before.len(), 10, "3 runs and 2 ready slots: {before:?}");

    // Crash (SIGKILL): nothing is cleaned up.
    server.kill().unwrap();
    server.wait().unwrap();
    let nets_before = docker::networks(&docker, &[("appstrate.instance", &instance)]).await;
    assert_eq!(nets_before.len(), 5, "{nets_before:?}");

    let mut server = serve(dir.path(), &env, &base).await;
    for id in &ids {
        let run: Value = client
            .get(format!("{base}/api/runs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["error"], "Server restarted while run was in progress");
    }
    let after = docker::containers(&docker, &[("appstrate.instance", &instance)]).await;
    for (name, id) in &before {
        assert!(
            !after.values().any(|a| a == id),
            "{name} survived the restart"
        );
    }
    // The new server makes its own slots; nothing of the crashed one survives.
    let nets_after = docker::networks(&docker, &[("appstrate.instance", &instance)]).await;
    for net in &nets_before {
        assert!(!nets_after.contains(net), "{net} survived the restart");
    }

    // A graceful stop removes the ready slots and exits 0.
    slots_ready(2).await;
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert_eq!(server.wait().unwrap().code(), Some(0));
    assert!(
        docker::containers(&docker, &[("appstrate.instance", &instance)])
            .await
            .is_empty()
    );
    assert!(
        docker::networks(&docker, &[("appstrate.instance", &instance)])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn missing_images_degrade_health_and_are_imported_from_static_binaries() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (agent, sidecar) = (
        format!("appstrate-runner:import-{tag}"),
        format!("appstrate-sidecar:import-{tag}"),
    );
    let _images = docker::ImageSweep(vec![agent.clone(), sidecar.clone()]);

    // A dynamically linked runner cannot be imported: Docker mode is unavailable, and says why.
    let Some(d) = docker_app(
        vec![Turn::tool_call("output", json!({"data": {"ok": 1}}))],
        "0",
        &[("AGENT_IMAGE", agent.as_str())],
    )
    .await
    else {
        return;
    };
    let h = health(&d.app).await;
    assert_eq!(h["status"], "degraded", "{h}");
    let why = h["checks"]["docker"]["error"].as_str().unwrap().to_string();
    assert!(
        why.contains(&format!("the image {agent} is missing")),
        "{why}"
    );
    assert!(
        why.contains("is not a statically linked executable"),
        "{why}"
    );
    let r = d
        .app
        .key(Method::POST, "/api/runs/inline")
        .json(&inline(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "runtime_unavailable", "{b}");
    drop(d);

    // Static binaries are imported as one-file images (nothing pulled), and runs work.
    let runner = docker::static_binary("appstrate-runner");
    let sidecar_bin = docker::static_binary("appstrate-sidecar");
    let (runner, sidecar_bin) = (
        runner.to_string_lossy().into_owned(),
        sidecar_bin.to_string_lossy().into_owned(),
    );
    let d = docker_app(
        vec![Turn::tool_call("output", json!({"data": {"ok": 1}}))],
        "0",
        &[
            ("AGENT_IMAGE", agent.as_str()),
            ("SIDECAR_IMAGE", sidecar.as_str()),
            ("RUNNER_BIN", runner.as_str()),
            ("SIDECAR_BIN", sidecar_bin.as_str()),
        ],
    )
    .await
    .unwrap();
    let h = health(&d.app).await;
    assert_eq!(h["status"], "healthy", "{h}");
    let img = d.docker.inspect_image(&agent).await.unwrap();
    let cfg = img.config.unwrap();
    assert_eq!(cfg.user.as_deref(), Some("65534:65534"));
    assert_eq!(cfg.entrypoint, Some(vec!["/appstrate-runner".to_string()]));
    let id = start_run(&d.app, inline(json!({}))).await;
    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
}

#[tokio::test]
async fn an_unreachable_engine_stops_boot_naming_docker_socket() {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("BETTER_AUTH_SECRET", "s".to_string()),
        ("UPLOAD_SIGNING_SECRET", "0123456789abcdef".into()),
        ("CONNECTION_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY.into()),
        ("PORT", services::free_port().to_string()),
        ("HOST", "127.0.0.1".into()),
        ("RUN_ADAPTER", "docker".into()),
        ("DOCKER_SOCKET", "/nonexistent/docker.sock".into()),
        ("SYSTEM_PACKAGES_DIR", "./none".into()),
    ];
    let out = command(dir.path(), &["serve"], &env).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DOCKER_SOCKET"), "{err}");
    assert!(
        err.contains("/nonexistent/docker.sock does not exist"),
        "{err}"
    );
    assert!(err.contains("docker images | grep appstrate"), "{err}");
}

/// An organization's provider key (Anthropic messages) reaches the provider from a container run through
/// a run slot's sidecar, configured over `/configure`: never the instance key, never a container's `Env`
/// (the slot's agent gets its run, model included, from its sidecar).
#[tokio::test]
async fn an_organization_key_reaches_the_provider_through_a_pooled_sidecar() {
    const ORG_KEY: &str = "sk-ant-org-canary-docker-5d21";
    let Some(d) = docker_app(
        vec![Turn::text("Hello from the organization's model.").with_delay(2000)],
        "1",
        &[],
    )
    .await
    else {
        return;
    };
    eventually(90, "a ready run slot", || async {
        (health(&d.app).await["run_slots"]["ready"] == 1).then_some(())
    })
    .await;
    let base = format!("http://host.docker.internal:{}", d.fake.addr().port());
    let admin = |m: Method, p: &str| d.app.admin(m, p);
    let r = admin(Method::POST, "/api/model-provider-credentials")
        .json(&json!({"providerId": "anthropic", "apiKey": ORG_KEY, "baseUrl": base}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cred: Value = r.json().await.unwrap();
    let r = admin(Method::POST, "/api/models")
        .json(&json!({"credentialId": cred["id"], "modelId": "claude-fake", "label": "Claude"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let model: Value = r.json().await.unwrap();
    let r = admin(Method::PUT, "/api/models/default")
        .json(&json!({"modelId": model["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let id = start_run(&d.app, inline(json!({}))).await;
    running_agent(&d, &id).await;
    let containers = docker::containers(&d.docker, &[("appstrate.instance", &d.instance)]).await;
    assert!(containers.len() >= 2, "{containers:?}");
    for id in containers.values() {
        // A warm slot may be replaced between the listing and the inspection: a container that is gone
        // holds no environment to check.
        if let Ok(info) = d.docker.inspect_container(id, None).await {
            assert!(!env_of(&info).join("\n").contains(ORG_KEY));
        }
    }
    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["model_label"], "Claude");
    assert_eq!(d.fake.api_keys(), vec![ORG_KEY.to_string()]);
    assert!(d.fake.authorizations().iter().all(|a| a.is_empty()));
    assert!(!done.to_string().contains(ORG_KEY));
}
