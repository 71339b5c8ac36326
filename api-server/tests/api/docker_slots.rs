//! Run slots against a real engine (docs/docker.md "Run slots"): a run through a ready slot, the run
//! configuration handed to the slot's agent only, pool exhaustion and other limits on the fresh path,
//! and slots replaced when they fail or wait too long. The SIGKILL case is in `docker.rs`.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use test_support::app::TEST_ENCRYPTION_KEY;
use test_support::docker;
use test_support::fake_llm::Turn;

use crate::docker::{
    docker_app, env_of, eventually, health, inline, ip_on, metrics, networks_of, running_agent,
    start_run, wait_terminal, DockerApp, CANARY,
};

/// A ready slot as the engine shows it.
#[derive(Debug, Clone, PartialEq)]
struct ReadySlot {
    id: String,
    agent: String,
    sidecar: String,
    network: String,
}

/// The slots of this server that no run took yet (taken ones are renamed after their run).
async fn ready_slots_now(d: &DockerApp) -> Vec<ReadySlot> {
    let containers = docker::containers(
        &d.docker,
        &[
            ("appstrate.instance", &d.instance),
            ("appstrate.pool", "slot"),
        ],
    )
    .await;
    let mut slots: Vec<ReadySlot> = containers
        .keys()
        .filter_map(|n| n.strip_prefix("appstrate-agent-slot-"))
        .filter(|id| containers.contains_key(&format!("appstrate-sidecar-slot-{id}")))
        .map(|id| ReadySlot {
            id: id.to_string(),
            agent: format!("appstrate-agent-slot-{id}"),
            sidecar: format!("appstrate-sidecar-slot-{id}"),
            network: format!("appstrate-exec-slot-{id}"),
        })
        .collect();
    slots.sort_by(|a, b| a.id.cmp(&b.id));
    slots
}

/// Waits until `/health` reports `n` ready slots and the engine shows as many.
async fn ready_slots(d: &DockerApp, n: u64) -> Vec<ReadySlot> {
    eventually(90, "the run slots to be ready", || async {
        let h = health(&d.app).await;
        let slots = ready_slots_now(d).await;
        (h["run_slots"]["ready"] == n && slots.len() as u64 == n).then_some(slots)
    })
    .await
}

/// Waits until nothing of slot `id` remains on the engine.
async fn slot_gone(d: &DockerApp, slot: &ReadySlot) {
    eventually(30, "the used slot to be removed", || async {
        let left = docker::containers(&d.docker, &[("appstrate.slot", &slot.id)]).await;
        let net = d.docker.inspect_network(&slot.network, None).await.is_ok();
        (left.is_empty() && !net).then_some(())
    })
    .await
}

/// The agent hardening of today's fresh path (§13.2), with the slots' limits.
fn assert_hardened(agent: &bollard::models::ContainerInspectResponse, network: &str) {
    let cfg = agent.config.clone().unwrap();
    assert_eq!(cfg.user.as_deref(), Some("65534:65534"));
    assert_eq!(cfg.image.as_deref(), Some(docker::agent_image()));
    let labels = cfg.labels.unwrap();
    assert_eq!(labels["appstrate.managed"], "true");
    assert_eq!(labels["appstrate.role"], "agent");
    assert_eq!(labels["appstrate.pool"], "slot");
    assert_eq!(networks_of(agent), vec![network.to_string()]);
    let hc = agent.host_config.clone().unwrap();
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(hc
        .security_opt
        .unwrap()
        .iter()
        .any(|o| o.starts_with("no-new-privileges")));
    assert_eq!(hc.memory, Some(1536 * 1024 * 1024));
    assert_eq!(hc.memory_swap, Some(1536 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(2_000_000_000));
    assert_eq!(hc.pids_limit, Some(256));
    assert_eq!(hc.privileged, Some(false));
    let tmpfs = hc.tmpfs.unwrap();
    assert_eq!(
        tmpfs["/workspace"],
        "size=512m,uid=65534,gid=65534,mode=0700"
    );
    assert!(tmpfs.contains_key("/tmp"));
}

/// Nothing of a run's secrets or of the platform's in an agent's environment.
fn assert_no_secret(env: &[String]) {
    let all = env.join("\n");
    for secret in [
        CANARY,
        TEST_ENCRYPTION_KEY,
        "APPSTRATE_SINK_SECRET",
        "AGENT_RUN_ID",
        "MODEL_API_KEY",
        "HTTP_PROXY",
        "sct_",
        "LLM_API_KEY",
        "DATABASE_URL",
    ] {
        assert!(!all.contains(secret), "{secret} in the agent's Env: {all}");
    }
}

/// `probe-get` of each URL from a throwaway container on `network` (labelled with the server's
/// instance, so the test's sweep removes it even when it fails).
fn probe_from_another_container(d: &DockerApp, network: &str, urls: &[String]) -> String {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", network])
        .args(["--label", "appstrate.managed=true"])
        .args(["--label", &format!("appstrate.instance={}", d.instance)])
        .args(["--user", "65534:65534", "--read-only", "--cap-drop", "ALL"])
        .arg(docker::agent_image())
        .arg("probe-get")
        .args(urls)
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn sidecar_control(d: &DockerApp, sidecar: &str) -> String {
    let info = d.docker.inspect_container(sidecar, None).await.unwrap();
    let port = info.network_settings.unwrap().ports.unwrap()["8080/tcp"]
        .clone()
        .unwrap()[0]
        .host_port
        .clone()
        .unwrap();
    format!("http://127.0.0.1:{port}")
}

async fn sidecar_health(d: &DockerApp, control: &str) -> Value {
    d.app
        .client
        .get(format!("{control}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_run_through_a_slot_is_hardened_holds_no_secret_and_its_slot_is_replaced() {
    let output = json!({"greeting": "hello from a slot"});
    let Some(d) = docker_app(
        // The turn waits so that the running agent can be inspected and probed.
        vec![Turn::tool_call("output", json!({"data": output})).with_delay(5000)],
        "0",
        // RUN_SLOT_POOL_SIZE wins over the seed's SIDECAR_POOL_SIZE.
        &[("RUN_SLOT_POOL_SIZE", "1")],
    )
    .await
    else {
        return;
    };
    let slot = ready_slots(&d, 1).await.remove(0);
    let h = health(&d.app).await;
    for (k, v) in [
        ("enabled", json!(true)),
        ("desired", json!(1)),
        ("ready", json!(1)),
        ("creating", json!(0)),
    ] {
        assert_eq!(h["run_slots"][k], v, "{h}");
    }
    assert_eq!(
        h["sidecar_pool"],
        json!({"enabled": true, "desired": 1, "ready": 1})
    );
    let m = metrics(&d.app).await;
    assert!(m.contains("appstrate_run_slots_desired 1"), "{m}");
    assert!(m.contains("appstrate_run_slots_ready 1"), "{m}");

    // The waiting agent: hardened as today, its runner started, nothing run-specific in its env.
    let waiting = d.docker.inspect_container(&slot.agent, None).await.unwrap();
    assert_eq!(waiting.state.as_ref().unwrap().running, Some(true));
    assert_hardened(&waiting, &slot.network);
    let env = env_of(&waiting);
    assert!(env.contains(&"RUNNER_CONFIG_URL=http://sidecar:8080/agent-config".to_string()));
    assert!(env.contains(&"RUNNER_CONFIG_WAIT_SECONDS=660".to_string()));
    assert_no_secret(&env);
    let net = d.docker.inspect_network(&slot.network, None).await.unwrap();
    assert_eq!(net.internal, Some(true));
    assert_eq!(
        net.options.unwrap()["com.docker.network.bridge.inhibit_ipv4"],
        "true"
    );
    let sc = d
        .docker
        .inspect_container(&slot.sidecar, None)
        .await
        .unwrap();
    assert_eq!(
        networks_of(&sc),
        vec!["appstrate-egress".to_string(), slot.network.clone()]
    );
    let sc_hc = sc.host_config.clone().unwrap();
    assert_eq!(sc_hc.readonly_rootfs, Some(true));
    assert_eq!(sc_hc.cap_drop, Some(vec!["ALL".to_string()]));
    let sidecar_ip = ip_on(&sc, &slot.network);
    // A slot's sidecar refuses a configuration without its own secret.
    let control = sidecar_control(&d, &slot.sidecar).await;
    let r = d
        .app
        .client
        .post(format!("{control}/configure"))
        .bearer_auth("not-the-secret")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The run takes the slot: the waiting container runs it, unchanged.
    let id = start_run(&d.app, inline(json!({}))).await;
    let agent = running_agent(&d, &id).await;
    assert_eq!(agent.id, waiting.id, "the run did not use the ready slot");
    assert_hardened(&agent, &slot.network);
    assert_eq!(env_of(&agent), env);
    assert_no_secret(&env_of(&agent));

    // From inside the agent, the configuration endpoint answers nothing a second time (by name and
    // by address), and nothing to another container on the slot's network.
    let agent_name = format!("appstrate-agent-{id}");
    let urls = [
        "http://sidecar:8080/agent-config?wait=0".to_string(),
        format!("http://{sidecar_ip}:8080/agent-config?wait=0"),
    ];
    let inside = {
        let urls = urls.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = vec!["/appstrate-runner", "probe-get"];
            cmd.extend(urls.iter().map(String::as_str));
            docker::exec(&agent_name, &cmd)
        })
        .await
        .unwrap()
    };
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines.len(), 2, "{inside}");
    for line in &lines {
        assert!(line.starts_with("HTTP 410 "), "{inside}");
        assert!(line.contains("already_handed_over"), "{inside}");
    }
    let other = probe_from_another_container(&d, &slot.network, &urls[1..]);
    assert!(other.starts_with("HTTP 410 "), "{other}");
    assert!(!inside.contains("SINK") && !other.contains("SINK"));

    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"]["output"], output);
    assert!(d
        .fake
        .authorizations()
        .iter()
        .all(|a| a == &format!("Bearer {CANARY}")));

    // The slot served one run and is gone; a new one is made.
    slot_gone(&d, &slot).await;
    let next = ready_slots(&d, 1).await;
    assert_ne!(next[0].id, slot.id);
    let m = metrics(&d.app).await;
    assert!(
        m.contains(r#"appstrate_sidecar_acquire_total{source="pool"} 1"#),
        "{m}"
    );
    assert!(!m.contains(r#"source="fresh""#), "{m}");
}

#[tokio::test]
async fn the_run_configuration_is_handed_to_the_slots_agent_only() {
    let Some(d) = docker_app(
        vec![Turn::tool_call("output", json!({"data": {"ok": true}}))],
        "1",
        &[],
    )
    .await
    else {
        return;
    };
    let slot = ready_slots(&d, 1).await.remove(0);
    let control = sidecar_control(&d, &slot.sidecar).await;
    let sc = d
        .docker
        .inspect_container(&slot.sidecar, None)
        .await
        .unwrap();
    let sidecar_ip = ip_on(&sc, &slot.network);
    // By id: the slot's containers take the run's names once it has them.
    let agent_id = d
        .docker
        .inspect_container(&slot.agent, None)
        .await
        .unwrap()
        .id
        .unwrap();

    // Freeze the waiting runner, and let the long-poll it sent at start (25 s) end, so that the
    // handover stays pending once the run is posted.
    let paused = Command::new("docker")
        .args(["pause", &agent_id])
        .output()
        .unwrap();
    assert!(paused.status.success());
    tokio::time::sleep(Duration::from_secs(27)).await;
    let id = start_run(&d.app, inline(json!({}))).await;
    eventually(30, "the slot's sidecar to be configured", || async {
        let h = sidecar_health(&d, &control).await;
        (h["configured"] == true).then_some(())
    })
    .await;

    // Another address gets nothing and takes nothing: the host through the control port, and
    // another container on the slot's network.
    let r = d
        .app
        .client
        .get(format!("{control}/agent-config?wait=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(!body.contains("APPSTRATE"), "{body}");
    let other = probe_from_another_container(
        &d,
        &slot.network,
        &[format!("http://{sidecar_ip}:8080/agent-config?wait=0")],
    );
    assert!(other.starts_with("HTTP 403 "), "{other}");
    assert!(!other.contains("APPSTRATE"), "{other}");
    assert_eq!(sidecar_health(&d, &control).await["handedOver"], false);

    // The agent itself gets it once it runs again, and the run succeeds.
    let resumed = Command::new("docker")
        .args(["unpause", &agent_id])
        .output()
        .unwrap();
    assert!(resumed.status.success());
    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    slot_gone(&d, &slot).await;
}

#[tokio::test]
async fn more_runs_than_slots_and_other_limits_take_the_fresh_path() {
    let turns = (0..4)
        .map(|i| Turn::tool_call("output", json!({"data": {"n": i}})))
        .collect();
    let Some(d) = docker_app(turns, "1", &[]).await else {
        return;
    };
    ready_slots(&d, 1).await;
    // Three runs at once with one slot: one takes it, two are created on the hot path, no error.
    let ids = futures::future::join_all((0..3).map(|_| start_run(&d.app, inline(json!({}))))).await;
    for id in &ids {
        let done = wait_terminal(&d.app, id).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    let m = metrics(&d.app).await;
    assert!(
        m.contains(r#"appstrate_sidecar_acquire_total{source="pool"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"appstrate_sidecar_acquire_total{source="fresh"} 2"#),
        "{m}"
    );

    // A run whose limits differ from the slots' takes the fresh path and leaves the slot ready.
    let slot = ready_slots(&d, 1).await.remove(0);
    let id = start_run(
        &d.app,
        inline(json!({"_meta": {"dev.appstrate/resources": {"memory_mb": 256, "cpu": 0.5}}})),
    )
    .await;
    let agent = eventually(60, "the fresh agent", || async {
        d.docker
            .inspect_container(&format!("appstrate-agent-{id}"), None)
            .await
            .ok()
    })
    .await;
    assert_eq!(
        agent.host_config.as_ref().unwrap().memory,
        Some(256 * 1024 * 1024)
    );
    assert_eq!(
        networks_of(&agent),
        vec![format!("appstrate-exec-{id}")],
        "a fresh run network"
    );
    let done = wait_terminal(&d.app, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    let m = metrics(&d.app).await;
    assert!(
        m.contains(r#"appstrate_sidecar_acquire_total{source="fresh"} 3"#),
        "{m}"
    );
    assert_eq!(ready_slots(&d, 1).await, vec![slot]);
}

#[tokio::test]
async fn slots_that_fail_their_health_check_or_wait_too_long_are_replaced() {
    let Some(d) = docker_app(vec![], "1", &[("RUN_SLOT_MAX_IDLE_SECONDS", "6")]).await else {
        return;
    };
    let first = ready_slots(&d, 1).await.remove(0);
    let env = env_of(
        &d.docker
            .inspect_container(&first.agent, None)
            .await
            .unwrap(),
    );
    // The runner waits 60 s longer than the pool keeps a slot: the pool retires it first.
    assert!(
        env.contains(&"RUNNER_CONFIG_WAIT_SECONDS=66".to_string()),
        "{env:?}"
    );

    // An agent that dies in its slot: the slot is removed, counted as failed, and replaced.
    let killed = Command::new("docker")
        .args(["kill", &first.agent])
        .output()
        .unwrap();
    assert!(killed.status.success());
    slot_gone(&d, &first).await;
    let second = ready_slots(&d, 1).await.remove(0);
    assert_ne!(second.id, first.id);
    let h = health(&d.app).await;
    assert_eq!(h["run_slots"]["failed"], 1, "{h}");
    assert!(metrics(&d.app)
        .await
        .contains("appstrate_run_slots_failed_total 1"));

    // A slot nobody used within RUN_SLOT_MAX_IDLE_SECONDS is replaced; that is not a failure.
    slot_gone(&d, &second).await;
    let third = ready_slots(&d, 1).await.remove(0);
    assert!(third.id != first.id && third.id != second.id);
    assert_eq!(health(&d.app).await["run_slots"]["failed"], 1);
}
