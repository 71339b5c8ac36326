//! S3 object storage (`S3_BUCKET`), for AWS S3 and S3-compatible servers such as MinIO.
//!
//! Only what both support is used: SigV4, `PutObject`/`GetObject`/`DeleteObject`/`HeadBucket`/
//! `CreateBucket`, path-style addressing when asked (the default with `S3_ENDPOINT`), and no flexible
//! checksums unless an operation requires them (older MinIO releases reject the newer checksum headers).
//! Credentials come from the standard AWS chain (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, profiles,
//! web identity, container and instance roles) and are never logged.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{validate_key, ObjectReader, ObjectStore, StorageError};
use crate::config::S3Config;
use crate::infra::InfraError;

pub struct S3ObjectStore {
    client: Client,
    bucket: String,
}

/// The HTTP status of a failed call, when the server answered.
fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn backend<E: std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    e: SdkError<E, R>,
) -> StorageError {
    StorageError::Backend(format!("S3 {what} failed: {}", DisplayErrorContext(&e)))
}

impl S3ObjectStore {
    /// Builds the client from the configuration and the standard AWS credential chain, then checks the
    /// bucket with `HeadBucket`. A missing bucket is created when `S3_ENDPOINT` is set (MinIO and other
    /// self-hosted servers, SPEC §4.1); on AWS itself it must exist already.
    pub async fn connect(config: &S3Config) -> Result<S3ObjectStore, InfraError> {
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(60))
            .operation_timeout(Duration::from_secs(180))
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts)
            .load()
            .await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        let store = S3ObjectStore {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
        };
        store.ensure_bucket(config).await?;
        Ok(store)
    }

    async fn ensure_bucket(&self, config: &S3Config) -> Result<(), InfraError> {
        let where_ = match &config.endpoint {
            Some(e) => format!("at S3_ENDPOINT {e}"),
            None => format!("in AWS region {}", config.region),
        };
        let err = match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let status = status_of(&err);
        let not_found =
            status == Some(404) || err.as_service_error().is_some_and(|s| s.is_not_found());
        if not_found && config.endpoint.is_some() {
            return self.create_bucket(config, &where_).await;
        }
        let detail = DisplayErrorContext(&err).to_string();
        Err(bucket_error(&self.bucket, config, status, &detail))
    }

    async fn create_bucket(&self, config: &S3Config, where_: &str) -> Result<(), InfraError> {
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the default location and must not be named (AWS and moto refuse it).
        if config.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(config.region.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created the S3 bucket");
                Ok(())
            }
            // Another replica created it meanwhile.
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(InfraError {
                var: "S3_BUCKET",
                message: format!(
                    "bucket {} does not exist {where_} and creating it failed ({}); create it by hand or \
                     check that the credentials may create buckets",
                    self.bucket,
                    DisplayErrorContext(&e)
                ),
            }),
        }
    }
}

/// The boot error for a bucket check that failed with HTTP `status` (`None`: no answer), naming the
/// variable to fix and what to check.
fn bucket_error(bucket: &str, config: &S3Config, status: Option<u16>, detail: &str) -> InfraError {
    let where_ = match &config.endpoint {
        Some(e) => format!("at S3_ENDPOINT {e}"),
        None => format!("in AWS region {}", config.region),
    };
    let (var, message) = match status {
        Some(404) => (
            "S3_BUCKET",
            format!(
                "bucket {bucket} does not exist {where_}; create it (e.g. `aws s3 mb s3://{bucket}`) \
                 or fix S3_BUCKET. Buckets are only created automatically on a self-hosted server \
                 (S3_ENDPOINT set)"
            ),
        ),
        Some(403) => (
            "S3_BUCKET",
            format!(
                "access to bucket {bucket} {where_} is denied (403): check the credentials \
                 (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role) and that they may \
                 read and write this bucket"
            ),
        ),
        Some(code @ (301 | 400)) => (
            "S3_REGION",
            format!(
                "bucket {bucket} answered {code} {where_}: it is probably in another region than \
                 S3_REGION={} ({detail})",
                config.region
            ),
        ),
        Some(code) => (
            "S3_BUCKET",
            format!("checking bucket {bucket} {where_} failed with HTTP {code} ({detail})"),
        ),
        None if detail.to_ascii_lowercase().contains("credential") => (
            "S3_BUCKET",
            format!(
                "no usable AWS credentials for bucket {bucket}: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or a profile or role) ({detail})"
            ),
        ),
        None => match &config.endpoint {
            Some(_) => (
                "S3_ENDPOINT",
                format!(
                    "cannot reach the S3 server {where_} to check bucket {bucket} ({detail}); check \
                     that the server is running and that S3_ENDPOINT is its URL"
                ),
            ),
            None => (
                "S3_BUCKET",
                format!(
                    "cannot reach S3 {where_} to check bucket {bucket} ({detail}); check this host's \
                     network access to AWS, or set S3_ENDPOINT for a self-hosted server"
                ),
            ),
        },
    };
    InfraError { var, message }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        validate_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| backend("PutObject", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        validate_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(backend("GetObject", e)),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Backend(format!("S3 GetObject body failed: {e}")))?;
        Ok(Some(body.into_bytes()))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        // DeleteObject of a missing key succeeds on both AWS and MinIO.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend("DeleteObject", e))?;
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<(), StorageError> {
        validate_key(key)?;
        // Read from the file as it is sent, with its length known up front.
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::Backend(format!("S3 PutObject body failed: {e}")))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| backend("PutObject", e))?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        validate_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(backend("GetObject", e)),
        };
        let size = out.content_length.unwrap_or(0).max(0) as u64;
        let chunks = futures::stream::try_unfold(out.body, |mut body| async move {
            match body.next().await {
                None => Ok(None),
                Some(Ok(b)) => Ok(Some((b, body))),
                Some(Err(e)) => Err(std::io::Error::other(format!("S3 GetObject body: {e}"))),
            }
        });
        Ok(Some(ObjectReader {
            size,
            chunks: Box::pin(chunks),
        }))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        validate_key(prefix.trim_end_matches('/'))?;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| backend("ListObjectsV2", e))?;
            // One DeleteObject per key: DeleteObjects needs a checksum header older MinIO refuses.
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    self.client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(k)
                        .send()
                        .await
                        .map_err(|e| backend("DeleteObject", e))?;
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| backend("HeadBucket", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>) -> S3Config {
        S3Config {
            bucket: "b".into(),
            region: "eu-west-3".into(),
            endpoint: endpoint.map(str::to_string),
            force_path_style: endpoint.is_some(),
        }
    }

    #[test]
    fn each_bucket_failure_names_the_variable_to_fix() {
        let aws = config(None);
        let minio = config(Some("http://minio:9000"));
        let e = bucket_error("b", &aws, Some(404), "NotFound");
        assert_eq!(e.var, "S3_BUCKET");
        assert!(
            e.message.contains("does not exist in AWS region eu-west-3"),
            "{e}"
        );
        assert!(e.message.contains("aws s3 mb s3://b"), "{e}");
        let e = bucket_error("b", &minio, Some(403), "Forbidden");
        assert_eq!(e.var, "S3_BUCKET");
        assert!(e.message.contains("denied (403)") && e.message.contains("AWS_SECRET_ACCESS_KEY"));
        assert!(
            e.message.contains("at S3_ENDPOINT http://minio:9000"),
            "{e}"
        );
        let e = bucket_error("b", &aws, Some(301), "PermanentRedirect");
        assert_eq!(e.var, "S3_REGION");
        assert!(e.message.contains("S3_REGION=eu-west-3"), "{e}");
        let e = bucket_error("b", &aws, Some(500), "InternalError");
        assert_eq!(e.var, "S3_BUCKET");
        assert!(e.message.contains("HTTP 500"), "{e}");
        let e = bucket_error("b", &aws, None, "failed to load credentials: no providers");
        assert!(e.message.contains("no usable AWS credentials"), "{e}");
        let e = bucket_error("b", &minio, None, "dispatch failure: connection refused");
        assert_eq!(e.var, "S3_ENDPOINT");
        assert!(e.message.contains("connection refused"), "{e}");
        let e = bucket_error("b", &aws, None, "dispatch failure: dns error");
        assert_eq!(e.var, "S3_BUCKET");
        assert!(e.message.contains("network access to AWS"), "{e}");
    }
}
