//! Promotion by adding environment variables to an existing deployment (seed: "Promoting Tier 1 → Tier 2
//! (adding Redis) or Tier 2 → Tier 3 (adding S3/Docker) is non-destructive"): the same `DATABASE_URL` and
//! data directory, restarted with more variables, still serves everything created before.

use std::path::Path;

use reqwest::Method;
use serde_json::Value;
use test_support::services;
use test_support::Backend;

use crate::migrate_data::{
    assert_same, briefing_llm, llm_app_on, populate, run_briefing, send, snapshot, BRIEFING,
};

async fn s3_client(target: &services::S3Target) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(target.region.clone()))
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .endpoint_url(&target.endpoint)
            .force_path_style(true)
            .build(),
    )
}

async fn s3_has(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

#[tokio::test]
async fn tier1_promoted_to_s3_storage_keeps_everything() {
    let s3 = test_support::require!(services::s3_bucket());
    let fake = briefing_llm(3).await;
    let mut app = test_support::require!(llm_app_on(Backend::Postgres, &fake, &[]).await);
    let populated = populate(&app).await;
    let new_key = &populated.new_key;
    let before = snapshot(&app, &populated).await;
    let h = send(app.client.get(app.url("/health"))).await;
    assert_eq!(h["tier"], 1);
    assert_eq!(h["adapters"]["storage"], "fs");

    // The imported agent's archive lives on the filesystem before the promotion.
    let versions = send(app.key(
        Method::GET,
        "/api/packages/@examples/daily-briefing/versions",
    ))
    .await;
    let version = versions["data"][0]["version"].as_str().unwrap().to_string();
    let key = format!(
        "packages/{}/@examples/daily-briefing/{version}.afps",
        app.org_id
    );
    let fs_path = Path::new(&app.env["FS_STORAGE_PATH"]).join(&key);
    let original = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(BRIEFING)).unwrap();
    assert_eq!(std::fs::read(&fs_path).unwrap(), original);

    // Tier 2 (REDIS_URL) is added here once the Redis adapters are in this branch.

    // Tier 3 storage: only S3_* variables are added; same database, same data directory.
    let s3_env: Vec<(&str, String)> = s3.env();
    let s3_env: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.restart_with(&s3_env, &[]).await;
    let h = send(app.client.get(app.url("/health"))).await;
    assert_eq!(h["adapters"]["storage"], "s3");
    assert_eq!(h["adapters"]["database"], "postgres");
    assert_eq!(h["checks"]["storage"]["status"], "healthy");
    let after = snapshot(&app, &populated).await;
    assert_same(&before, &after);
    let r = app
        .client
        .get(app.url("/api/runs"))
        .bearer_auth(new_key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The archive stored before S3 was enabled is still served: a new run of the agent reads it (its
    // workspace is built from the archive), and the store returns the same bytes.
    let client = s3_client(&s3).await;
    assert!(!s3_has(&client, &s3.bucket, &key).await);
    let stored = app.state().infra.storage.get(&key).await.unwrap().unwrap();
    assert_eq!(stored, original);
    let second = run_briefing(&app).await;
    let done = send(app.key(Method::GET, &format!("/api/runs/{second}"))).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["runNumber"], 2);
    // Read once, it was copied into the bucket for replicas that do not share the directory.
    assert!(s3_has(&client, &s3.bucket, &key).await);

    // New objects go to S3 only.
    let created = send(app.key(Method::POST, "/api/packages").json(&serde_json::json!({
        "manifest": {
            "schema_version": "0.1", "name": "@promoted/agent", "version": "1.0.0", "type": "agent",
            "display_name": "Created after the promotion"
        },
        "files": {"prompt.md": "Hello"}
    })))
    .await;
    assert_eq!(created["package"]["id"], "@promoted/agent", "{created}");
    let new_key_path = format!("packages/{}/@promoted/agent/1.0.0.afps", app.org_id);
    assert!(s3_has(&client, &s3.bucket, &new_key_path).await);
    assert!(!Path::new(&app.env["FS_STORAGE_PATH"])
        .join(&new_key_path)
        .exists());

    // And a later restart still has all of it.
    app.restart().await;
    let listed: Value = send(app.key(Method::GET, "/api/packages")).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"@promoted/agent") && ids.contains(&"@examples/daily-briefing"));
    app.shutdown().await;
}

/// A webhook retry queued by an instance that is then SIGKILLed is delivered by an instance started
/// afterwards: the job lives in Redis, not in the dead process.
#[tokio::test]
async fn a_webhook_retry_queued_by_a_killed_instance_is_delivered_by_another() {
    use appstrate::infra::queue::{RedisQueue, RedisQueueOptions};
    use test_support::webhook_receiver::{Reply, WebhookReceiver};

    let pg = require!(postgres_database().await);
    let redis = require!(RedisServer::start());
    let fake = FakeLlm::start(vec![Turn::tool_call(
        "output",
        json!({"data": {"ok": true}}),
    )])
    .await;
    let receiver = WebhookReceiver::start(vec![Reply::Status(500)]).await;
    let storage = tempfile::tempdir().unwrap();
    let storage_path = storage.path().to_string_lossy().into_owned();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(), free_port());
    let with_retry = |mut env: Vec<(&'static str, String)>| {
        env.push(("WEBHOOK_RETRY_DELAYS_SECONDS", "8".into()));
        env.push(("WEBHOOK_TIMEOUT_SECONDS", "5".into()));
        env
    };
    let env_a = with_retry(process_env(
        &pg,
        &redis.url,
        &fake.url(),
        &storage_path,
        port_a,
    ));
    let env_b = with_retry(process_env(
        &pg,
        &redis.url,
        &fake.url(),
        &storage_path,
        port_b,
    ));
    let out = command(dir_a.path(), &["bootstrap"], &env_a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = boot["apiKey"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let on = |port: u16, method: Method, path: &str| {
        client
            .request(method, format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(&key)
    };

    let mut a = serve(dir_a.path(), &env_a, port_a).await;
    let (s, hook) = json_of(on(port_a, Method::POST, "/api/webhooks").json(&json!({
        "url": receiver.url("/hook"), "events": ["run.success"]
    })))
    .await;
    assert_eq!(s, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let (s, run) =
        json_of(on(port_a, Method::POST, "/api/runs/inline").json(&inline_run("@tiers/hooked")))
            .await;
    assert_eq!(s, 201, "{run}");
    let run_id = run["id"].as_str().unwrap().to_string();
    let (_, run) = json_of(on(
        port_a,
        Method::GET,
        &format!("/api/runs/{run_id}?wait=30"),
    ))
    .await;
    assert_eq!(run["status"], "success", "{run}");

    // Attempt 1 gets a 500; A queues attempt 2 (8 s later) in Redis, then dies.
    let first = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(first[0].header("webhook-attempt").as_deref(), Some("1"));
    let queue = RedisQueue::new(
        appstrate::infra::redis_client::Redis::connect(&redis.url)
            .await
            .unwrap(),
        RedisQueueOptions::new(Duration::from_secs(30)),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.counts().await.unwrap().delayed != 1 {
        assert!(Instant::now() < deadline, "attempt 2 never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    assert_eq!(receiver.received().len(), 1, "A died before attempt 2");

    // A new instance picks the retry up from Redis.
    let _b = serve(dir_b.path(), &env_b, port_b).await;
    let got = receiver.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("webhook-attempt").as_deref(), Some("2"));
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert!(got[1].signed_with(hook["secret"].as_str().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = json_of(on(
            port_b,
            Method::GET,
            &format!("/api/webhooks/{hook_id}/deliveries"),
        ))
        .await;
        let rows = list["data"].as_array().cloned().unwrap_or_default();
        if rows
            .iter()
            .any(|d| d["attempt"] == 2 && d["status"] == "success")
        {
            break;
        }
        assert!(Instant::now() < deadline, "attempt 2 not recorded: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.delayed, counts.processing, counts.dead), (0, 0, 0));
}
