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

    // Tier 2: only REDIS_URL is added; same database, same data directory, everything still there.
    let redis = test_support::require!(services::RedisServer::start());
    app.restart_with(&[("REDIS_URL", redis.url.as_str())], &[])
        .await;
    let h = send(app.client.get(app.url("/health"))).await;
    assert_eq!(h["tier"], 2, "{h}");
    assert_eq!(h["adapters"]["queue"], "redis");
    assert_eq!(h["adapters"]["pubsub"], "redis");
    assert_eq!(h["adapters"]["rate_limiter"], "redis");
    assert_eq!(h["checks"]["redis"]["status"], "healthy");
    assert_same(&before, &snapshot(&app, &populated).await);

    // Tier 3 storage: only S3_* variables are added; same database, same data directory.
    let s3_env: Vec<(&str, String)> = s3.env();
    let s3_env: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.restart_with(&s3_env, &[]).await;
    let h = send(app.client.get(app.url("/health"))).await;
    assert_eq!(h["tier"], 3, "{h}");
    assert_eq!(h["adapters"]["storage"], "s3");
    assert_eq!(h["adapters"]["queue"], "redis");
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
