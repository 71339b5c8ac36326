//! The `ObjectStore` conformance suite: every case is written once against `Arc<dyn ObjectStore>` and
//! instantiated for the filesystem (`storage::fs::*`) and S3 (`storage::s3::*`, against the test S3
//! server). Plus the S3 boot rules and `/health` with S3.

use std::sync::Arc;

use appstrate::config::S3Config;
use appstrate::infra::storage::{FsObjectStore, ObjectStore, S3ObjectStore, StorageError};
use bytes::Bytes;
use serde_json::Value;
use test_support::services::{self, S3Target};

fn s3_config(t: &S3Target) -> S3Config {
    S3Config {
        bucket: t.bucket.clone(),
        region: t.region.clone(),
        endpoint: Some(t.endpoint.clone()),
        force_path_style: true,
    }
}

async fn fs_store() -> (Arc<dyn ObjectStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsObjectStore::new(&dir.path().join("storage")).unwrap();
    (Arc::new(store), dir)
}

async fn s3_store() -> Option<Arc<dyn ObjectStore>> {
    let target = services::s3_bucket()?;
    let store = S3ObjectStore::connect(&s3_config(&target))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Some(Arc::new(store))
}

/// Generates `fs::<case>` and `s3::<case>` tests for each case function.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _dir) = super::fs_store().await;
                    super::$case(store).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $case() {
                    let store = test_support::require!(super::s3_store().await);
                    super::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_overwrite_delete,
    missing_keys,
    empty_binary_and_large_objects,
    keys_with_nested_prefixes,
    invalid_keys_are_refused_and_nothing_is_written,
    health_check,
    files_in_streams_out_and_prefix_deletes,
);

/// `put_file` consumes a local file, `get_stream` reads an object in chunks with its size, and
/// `delete_prefix` removes every object under a prefix (a run's documents) and nothing else.
async fn files_in_streams_out_and_prefix_deletes(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(3 * 1024 * 1024 + 11))
        .map(|i: usize| (i % 251) as u8)
        .collect();
    for name in ["a", "b"] {
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        store
            .put_file(&format!("runs/run_x/documents/{name}"), &path)
            .await
            .unwrap();
        assert!(!path.exists(), "the staged file is consumed");
    }
    store
        .put("runs/run_y/documents/c", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    let reader = store
        .get_stream("runs/run_x/documents/a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.size, data.len() as u64);
    let back = appstrate::infra::storage::collect(reader.chunks)
        .await
        .unwrap();
    assert!(back == data, "streamed bytes differ");
    assert!(store
        .get_stream("runs/run_x/missing")
        .await
        .unwrap()
        .is_none());
    store.delete_prefix("runs/run_x/").await.unwrap();
    assert!(store.get("runs/run_x/documents/a").await.unwrap().is_none());
    assert!(store.get("runs/run_x/documents/b").await.unwrap().is_none());
    assert_eq!(
        store.get("runs/run_y/documents/c").await.unwrap().unwrap(),
        "kept"
    );
    // Nothing there: not an error.
    store.delete_prefix("runs/run_none/").await.unwrap();
}

const KEY: &str = "packages/3f7c9a6e-0000-4000-8000-000000000001/@acme/agent/1.0.0.afps";

async fn put_get_overwrite_delete(store: Arc<dyn ObjectStore>) {
    store.put(KEY, Bytes::from_static(b"v1")).await.unwrap();
    assert_eq!(store.get(KEY).await.unwrap().unwrap(), "v1");
    store
        .put(KEY, Bytes::from_static(b"version two"))
        .await
        .unwrap();
    assert_eq!(store.get(KEY).await.unwrap().unwrap(), "version two");
    store.delete(KEY).await.unwrap();
    assert!(store.get(KEY).await.unwrap().is_none());
    // Deleting again is not an error.
    store.delete(KEY).await.unwrap();
}

async fn missing_keys(store: Arc<dyn ObjectStore>) {
    assert!(store.get("never/written.bin").await.unwrap().is_none());
    assert!(store
        .get("packages/_system/@x/y/0.0.1.afps")
        .await
        .unwrap()
        .is_none());
    store.delete("never/written.bin").await.unwrap();
}

async fn empty_binary_and_large_objects(store: Arc<dyn ObjectStore>) {
    store.put("blobs/empty", Bytes::new()).await.unwrap();
    assert_eq!(store.get("blobs/empty").await.unwrap().unwrap().len(), 0);
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    store
        .put("blobs/binary", Bytes::from(all_bytes.clone()))
        .await
        .unwrap();
    assert_eq!(store.get("blobs/binary").await.unwrap().unwrap(), all_bytes);
    // Past the 8 MiB multipart threshold of common S3 tools; one PutObject.
    let large: Vec<u8> = (0..(9 * 1024 * 1024 + 7))
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    store
        .put("blobs/large.afps", Bytes::from(large.clone()))
        .await
        .unwrap();
    let back = store.get("blobs/large.afps").await.unwrap().unwrap();
    assert_eq!(back.len(), large.len());
    assert!(back == large, "large object corrupted");
}

async fn keys_with_nested_prefixes(store: Arc<dyn ObjectStore>) {
    let keys = [
        "packages/org-1/@acme/agent/1.0.0.afps",
        "packages/org-1/@acme/agent/1.1.0.afps",
        "packages/org-1/@acme/other/1.0.0.afps",
        "packages/_system/@appstrate/github/1.0.0.afps",
        "packages/org-1/@acme/agent/1.0.0+build.7.afps",
        "a/b/c/d/e/f/g/h/deep name with spaces.bin",
    ];
    for (i, k) in keys.iter().enumerate() {
        store
            .put(k, Bytes::from(format!("object {i}")))
            .await
            .unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            store.get(k).await.unwrap().unwrap(),
            format!("object {i}"),
            "{k}"
        );
    }
    // A prefix is not an object.
    assert!(store.get("packages/org-1/@acme").await.unwrap().is_none());
    store.delete(keys[0]).await.unwrap();
    assert!(store.get(keys[0]).await.unwrap().is_none());
    assert_eq!(store.get(keys[1]).await.unwrap().unwrap(), "object 1");
    assert_eq!(store.get(keys[2]).await.unwrap().unwrap(), "object 2");
}

async fn invalid_keys_are_refused_and_nothing_is_written(store: Arc<dyn ObjectStore>) {
    let long = "x".repeat(1025);
    for bad in [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "a\\b",
        "a\0b",
        "./a",
        "trailing/",
        long.as_str(),
    ] {
        assert!(
            matches!(
                store.put(bad, Bytes::from_static(b"x")).await,
                Err(StorageError::InvalidKey(..))
            ),
            "put {bad:?}"
        );
        assert!(
            matches!(store.get(bad).await, Err(StorageError::InvalidKey(..))),
            "get {bad:?}"
        );
        assert!(
            matches!(store.delete(bad).await, Err(StorageError::InvalidKey(..))),
            "delete {bad:?}"
        );
    }
    assert!(store.get("escape").await.unwrap().is_none());
    assert!(store.get("etc/passwd").await.unwrap().is_none());
}

async fn health_check(store: Arc<dyn ObjectStore>) {
    store.check().await.unwrap();
    store.check().await.unwrap();
}

/// With an endpoint (MinIO-style deployments) a missing bucket is created at boot, and a second boot
/// finds it.
#[tokio::test]
async fn s3_bucket_is_created_at_boot_when_missing() {
    let target = test_support::require!(services::s3_bucket());
    let config = s3_config(&target);
    let first = S3ObjectStore::connect(&config).await.unwrap();
    first.put("k", Bytes::from_static(b"kept")).await.unwrap();
    let second = S3ObjectStore::connect(&config).await.unwrap();
    assert_eq!(second.get("k").await.unwrap().unwrap(), "kept");
}

/// An S3 endpoint that does not answer stops boot naming S3_ENDPOINT and what to check.
#[tokio::test]
async fn an_unreachable_s3_endpoint_stops_boot_naming_it() {
    let port = services::free_port();
    let config = S3Config {
        bucket: "appstrate-nowhere".into(),
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        force_path_style: true,
    };
    let err = S3ObjectStore::connect(&config)
        .await
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(
        text.starts_with("S3_ENDPOINT: cannot reach the S3 server"),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("appstrate-nowhere"), "{text}");
    assert!(
        !text.contains("testing"),
        "no credential in the message: {text}"
    );
}

async fn health(app: &test_support::TestApp) -> (u16, Value) {
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `/health` reports S3 storage and its HeadBucket check; a bucket that disappears makes it unhealthy.
#[tokio::test]
async fn health_reports_s3_storage_and_its_check() {
    let target = test_support::require!(services::s3_bucket());
    let env: Vec<(&str, String)> = target.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = test_support::spawn_app_with(&env).await;
    let (status, h) = health(&app).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["adapters"]["storage"], "s3");
    assert_eq!(h["checks"]["storage"]["status"], "healthy");
    assert!(
        !app.data_dir.join("storage").exists(),
        "no filesystem storage is created when S3 is used"
    );

    // Remove the bucket behind the server's back: after the 10 s cache, the check fails.
    let sdk = aws_config::defaults(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(target.region.clone()))
        .load()
        .await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .endpoint_url(&target.endpoint)
            .force_path_style(true)
            .build(),
    );
    client
        .delete_bucket()
        .bucket(&target.bucket)
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let (status, h) = health(&app).await;
        if status == 503 {
            assert_eq!(h["status"], "unhealthy", "{h}");
            assert_eq!(h["checks"]["storage"]["status"], "unhealthy");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still healthy: {h}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    app.shutdown().await;
}
