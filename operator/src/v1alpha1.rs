//! The `Appstrate` custom resource, version `v1alpha1`.
//!
//! The schema carries the same rules as [`crate::validate::validate`]: enums and ranges through
//! schemars, cross-field rules as CEL (`x-kubernetes-validations`), so `kubectl apply` of a bad
//! resource is refused by the API server with a clear message.

use k8s_openapi::api::core::v1::{EnvVarSource, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Longest resource name: `<name>-postgres` names a StatefulSet, and a StatefulSet name must
/// leave room in 63 characters for the `-<hash>` of its pods' `controller-revision-hash` label
/// (at most 52 characters); 52 - len("-postgres") = 43.
pub const MAX_NAME_LEN: usize = 43;

/// CEL rule on the root: `metadata.name` is a DNS-1035 label of at most [`MAX_NAME_LEN`].
pub const NAME_RULE: &str = "self.metadata.name.size() <= 43 && !self.metadata.name.contains('.') && !(self.metadata.name.startsWith('0') || self.metadata.name.startsWith('1') || self.metadata.name.startsWith('2') || self.metadata.name.startsWith('3') || self.metadata.name.startsWith('4') || self.metadata.name.startsWith('5') || self.metadata.name.startsWith('6') || self.metadata.name.startsWith('7') || self.metadata.name.startsWith('8') || self.metadata.name.startsWith('9'))";
pub const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label of at most 43 characters (a lowercase letter first, then lowercase letters, digits or '-', no '.'): children are named after it, such as the StatefulSet <name>-postgres, which must fit in 52 characters, and Services, which must be DNS-1035 labels";

/// Environment variables the operator sets on the API container itself: `spec.extraEnv` may not
/// name them (a duplicate would make the Deployment's env list invalid), nor any `S3_*`.
pub const RESERVED_ENV: [&str; 17] = [
    "PORT",
    "APP_URL",
    "APP_ENV",
    "LOG_FORMAT",
    "DATA_DIR",
    "BETTER_AUTH_SECRET",
    "UPLOAD_SIGNING_SECRET",
    "CONNECTION_ENCRYPTION_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "FS_STORAGE_PATH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "RUN_ADAPTER",
    "DOCKER_SOCKET",
    "SIDECAR_POOL_SIZE",
    "RUN_SLOT_POOL_SIZE",
];
/// Prefix reserved for the S3 settings the operator sets.
pub const RESERVED_ENV_PREFIX: &str = "S3_";

const EXTRA_ENV_RULE: &str = "!(self.name in ['PORT', 'APP_URL', 'APP_ENV', 'LOG_FORMAT', 'DATA_DIR', 'BETTER_AUTH_SECRET', 'UPLOAD_SIGNING_SECRET', 'CONNECTION_ENCRYPTION_KEY', 'DATABASE_URL', 'REDIS_URL', 'FS_STORAGE_PATH', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'RUN_ADAPTER', 'DOCKER_SOCKET', 'SIDECAR_POOL_SIZE', 'RUN_SLOT_POOL_SIZE']) && !self.name.startsWith('S3_')";
const EXTRA_ENV_MESSAGE: &str = "spec.extraEnv: this name is set by the operator and cannot be overridden (PORT, APP_URL, APP_ENV, LOG_FORMAT, DATA_DIR, BETTER_AUTH_SECRET, UPLOAD_SIGNING_SECRET, CONNECTION_ENCRYPTION_KEY, DATABASE_URL, REDIS_URL, FS_STORAGE_PATH, S3_*, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, RUN_ADAPTER, DOCKER_SOCKET, SIDECAR_POOL_SIZE, RUN_SLOT_POOL_SIZE); configure it through the spec instead";

/// Finalizer that runs the cleanup of data volumes and generated Secrets.
pub const FINALIZER: &str = "appstrates.appstrate.dev/cleanup";

/// Desired state of an Appstrate installation.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "appstrate.dev",
    derive = "Default",
    version = "v1alpha1",
    kind = "Appstrate",
    plural = "appstrates",
    namespaced,
    shortname = "appst",
    status = "AppstrateStatus",
    doc = "An Appstrate installation: the API server and the infrastructure of its tier",
    printcolumn = r#"{"name":"Tier","type":"integer","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The API server already enforces a DNS-1123 subdomain (lowercase letters, digits, '-', '.').
    // `contains`/`startsWith` instead of `matches`: metadata.name has no maxLength in the schema
    // CEL sees, and a regex over an unbounded string exceeds the rule cost budget.
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[x_kube(
    validation = Rule::new("self.tier < 1 || has(self.postgres)").message("spec.postgres is required when tier >= 1"),
    validation = Rule::new("self.tier < 2 || has(self.redis)").message("spec.redis is required when tier >= 2"),
    validation = Rule::new("!has(self.runAdapter) || self.runAdapter != 'docker' || self.tier == 3").message("spec.runAdapter: docker requires tier 3"),
    validation = Rule::new("self.tier != 3 || has(self.storage) || (has(self.runAdapter) && self.runAdapter == 'docker')").message("tier 3 requires spec.storage or spec.runAdapter: docker"),
    validation = Rule::new("!has(self.replicas) || self.replicas <= 1 || self.tier < 2 || (self.tier == 3 && has(self.storage)) || (has(self.dataVolume) && has(self.dataVolume.accessMode) && self.dataVolume.accessMode == 'ReadWriteMany')").message("spec.replicas > 1 requires S3 storage (tier 3 with spec.storage) or spec.dataVolume.accessMode: ReadWriteMany"),
)]
#[serde(rename_all = "camelCase")]
pub struct AppstrateSpec {
    /// Infrastructure tier: 0 SQLite, 1 + PostgreSQL, 2 + Redis, 3 + S3 storage and/or Docker runs.
    #[schemars(range(min = 0, max = 3))]
    pub tier: i32,

    /// API server image (the `appstrate` image).
    #[schemars(length(min = 1))]
    pub image: String,

    /// Pull policy of the API server image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,

    /// API replicas. Forced to 1 at tiers 0 and 1, where in-process state cannot be shared.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// Public URL of the API: `https://…`, or `http://localhost` / `http://127.0.0.1` for local use.
    // The length bound keeps the CEL cost estimate of the rule within the API server's budget.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^?#]*)?$') || self.matches('^http://(localhost|127[.]0[.]0[.]1)(:[0-9]{1,5})?(/[^?#]*)?$')").message("spec.appUrl must be https://…, or http://localhost / http://127.0.0.1"))]
    pub app_url: String,

    /// Volume mounted at `/data` for SQLite and filesystem storage (not created with S3 storage).
    #[serde(default)]
    pub data_volume: DataVolume,

    /// PostgreSQL: required at tier >= 1, ignored below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,

    /// Redis: required at tier >= 2, ignored below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,

    /// S3 object storage: used at tier 3 only, ignored below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// How runs execute: `process` (no isolation) or `docker` (tier 3, adds a Docker engine container).
    #[serde(default)]
    pub run_adapter: RunAdapter,

    /// Docker engine container settings for `runAdapter: docker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,

    /// Pre-started sidecars kept warm for Docker runs.
    #[serde(default)]
    pub sidecar_pool: SidecarPoolSpec,

    /// Secret holding BETTER_AUTH_SECRET, UPLOAD_SIGNING_SECRET and CONNECTION_ENCRYPTION_KEY.
    /// When absent the operator generates `<name>-boot-secrets` once and never rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_ref: Option<SecretsRef>,

    /// What happens to PVCs and generated Secrets when the resource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Extra environment variables appended to the API container, keyed by name. Names the
    /// operator sets itself are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub extra_env: Vec<ExtraEnvVar>,

    /// Resources of the API container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// NetworkPolicies that let only this instance's API pods reach the managed PostgreSQL,
    /// Redis and MinIO.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// `spec.networkPolicy`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Reconcile the NetworkPolicies (default true). Turn off where another tool manages
    /// NetworkPolicies; without a policy engine in the cluster they are stored but not enforced.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

/// One entry of `spec.extraEnv`: the shape of a container's `EnvVar`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(EXTRA_ENV_RULE).message(EXTRA_ENV_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct ExtraEnvVar {
    /// Variable name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Source of the value (Secret key, ConfigMap key, field or resource reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

fn default_replicas() -> i32 {
    1
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RunAdapter {
    #[default]
    Process,
    Docker,
}

impl RunAdapter {
    pub fn as_str(self) -> &'static str {
        match self {
            RunAdapter::Process => "process",
            RunAdapter::Docker => "docker",
        }
    }
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep PVCs and generated Secrets after the resource is deleted.
    #[default]
    Retain,
    /// Delete PVCs and generated Secrets with the resource.
    Delete,
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum AccessMode {
    #[default]
    ReadWriteOnce,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// A Kubernetes quantity such as `1Gi` or `500Mi`.
const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolume {
    /// Requested size. It can grow (when the storage class allows expansion), never below the
    /// size the PersistentVolumeClaim already has; the operator compares with the live claim, so
    /// a refused growth can be taken back.
    #[serde(default = "default_data_size")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 64))]
    pub size: String,
    /// Storage class; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `ReadWriteMany` allows several API replicas without S3 storage.
    #[serde(default)]
    pub access_mode: AccessMode,
}

impl Default for DataVolume {
    fn default() -> Self {
        DataVolume {
            size: default_data_size(),
            storage_class_name: None,
            access_mode: AccessMode::ReadWriteOnce,
        }
    }
}

fn default_data_size() -> String {
    "1Gi".into()
}

/// A reference to a Secret key holding a connection URL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlSecretRef {
    /// Secret name, in the resource's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the URL.
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalUrl {
    pub secret_ref: UrlSecretRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedPostgres {
    #[serde(default = "default_postgres_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Size of the database volume.
    #[serde(default = "default_postgres_storage")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.postgres.managed.storage is immutable: it sizes the StatefulSet's volumeClaimTemplates, which cannot change; resize the PVC data-<name>-postgres-0 directly"))]
    pub storage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for ManagedPostgres {
    fn default() -> Self {
        ManagedPostgres {
            image: default_postgres_image(),
            storage: default_postgres_storage(),
            storage_class_name: None,
        }
    }
}

fn default_postgres_image() -> String {
    "postgres:16".into()
}
fn default_postgres_storage() -> String {
    "5Gi".into()
}

/// PostgreSQL: exactly one of `managed` or `external`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("exactly one of managed or external must be set"))]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// A PostgreSQL StatefulSet run by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    /// An existing database: `DATABASE_URL` comes from the referenced Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalUrl>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default = "default_redis_storage")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.redis.managed.storage is immutable: it sizes the StatefulSet's volumeClaimTemplates, which cannot change; resize the PVC data-<name>-redis-0 directly"))]
    pub storage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for ManagedRedis {
    fn default() -> Self {
        ManagedRedis {
            image: default_redis_image(),
            storage: default_redis_storage(),
            storage_class_name: None,
        }
    }
}

fn default_redis_image() -> String {
    "redis:7".into()
}
fn default_redis_storage() -> String {
    "1Gi".into()
}

/// Redis: exactly one of `managed` or `external`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("exactly one of managed or external must be set"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// An existing Redis: `REDIS_URL` comes from the referenced Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalUrl>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedStorage {
    #[serde(default = "default_minio_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default = "default_minio_storage")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.storage.managed.storage is immutable: it sizes the StatefulSet's volumeClaimTemplates, which cannot change; resize the PVC data-<name>-minio-0 directly"))]
    pub storage: String,
    /// Bucket the API creates at boot.
    #[serde(default = "default_bucket")]
    #[schemars(regex(pattern = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for ManagedStorage {
    fn default() -> Self {
        ManagedStorage {
            image: default_minio_image(),
            storage: default_minio_storage(),
            bucket: default_bucket(),
            storage_class_name: None,
        }
    }
}

fn default_minio_image() -> String {
    "minio/minio:latest".into()
}
fn default_minio_storage() -> String {
    "10Gi".into()
}
fn default_bucket() -> String {
    "appstrate".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalStorage {
    /// Secret with keys `bucket`, `region`, `endpoint` (optional), `accessKeyId`, `secretAccessKey`.
    pub secret_ref: SecretName,
}

/// S3 storage: exactly one of `managed` (MinIO) or `external`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("exactly one of managed or external must be set"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStorage>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DockerSpec {
    /// Image of the Docker engine container.
    #[serde(default = "default_docker_image")]
    #[schemars(length(min = 1))]
    pub image: String,
}

pub fn default_docker_image() -> String {
    "docker:dind".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPoolSpec {
    /// Run slots kept ready (each a network, a sidecar and a waiting agent); 0 disables the pool.
    /// Becomes `RUN_SLOT_POOL_SIZE` (and `SIDECAR_POOL_SIZE`, for API images that predate slots).
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 0, max = 64))]
    pub size: i32,
}

impl Default for SidecarPoolSpec {
    fn default() -> Self {
        SidecarPoolSpec {
            size: default_pool_size(),
        }
    }
}

fn default_pool_size() -> i32 {
    2
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Observed state, written by the operator on the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppstrateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_pool: Option<SidecarPoolStatus>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Provisioning,
    Ready,
    Degraded,
    Failed,
    Deleting,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Ready,
        Phase::Degraded,
        Phase::Failed,
        Phase::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Provisioning => "Provisioning",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

/// Where the parts of the installation are reached: `host:port`, `"external"`, or absent.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPoolStatus {
    pub desired: i64,
    pub ready: i64,
}
