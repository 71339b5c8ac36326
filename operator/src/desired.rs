//! Pure construction of every child object an `Appstrate` resource wants (§20.3).
//!
//! No I/O happens here: the same resource always yields byte-identical objects, which is what
//! the golden YAML tests under `tests/golden/` pin down. Generated Secrets are not part of this
//! list; they are created once by [`crate::secrets`] and never re-applied.

use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::labels::{self, child_name, Component, CONFIG_HASH};
use crate::v1alpha1::{AccessMode, Appstrate, AppstrateSpec, RunAdapter};

pub const API_PORT: i32 = 3000;
pub const DOCKER_SOCKET_DIR: &str = "/var/run/docker";
pub const DOCKER_SOCKET: &str = "/var/run/docker/docker.sock";
/// Region given to the API for the operator-managed MinIO (MinIO accepts any).
pub const MINIO_REGION: &str = "us-east-1";
/// User, group and fsGroup of the API pod.
const NOBODY: i64 = 65534;

/// The kinds of child object the operator applies, lists and prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    Deployment,
    StatefulSet,
    Service,
    PersistentVolumeClaim,
    Secret,
    NetworkPolicy,
}

impl ChildKind {
    pub const ALL: [ChildKind; 6] = [
        ChildKind::Deployment,
        ChildKind::StatefulSet,
        ChildKind::Service,
        ChildKind::PersistentVolumeClaim,
        ChildKind::Secret,
        ChildKind::NetworkPolicy,
    ];

    pub fn api_resource(self) -> ApiResource {
        match self {
            ChildKind::Deployment => ApiResource::erase::<Deployment>(&()),
            ChildKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            ChildKind::Service => ApiResource::erase::<Service>(&()),
            ChildKind::PersistentVolumeClaim => ApiResource::erase::<PersistentVolumeClaim>(&()),
            ChildKind::Secret => ApiResource::erase::<Secret>(&()),
            ChildKind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            ChildKind::Deployment => "Deployment",
            ChildKind::StatefulSet => "StatefulSet",
            ChildKind::Service => "Service",
            ChildKind::PersistentVolumeClaim => "PersistentVolumeClaim",
            ChildKind::Secret => "Secret",
            ChildKind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Kinds that hold data: kept by pruning, deleted only with `deletionPolicy: Delete`.
    pub fn holds_data(self) -> bool {
        matches!(self, ChildKind::PersistentVolumeClaim | ChildKind::Secret)
    }
}

/// One object to server-side apply, as the JSON body of the apply patch.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub kind: ChildKind,
    pub name: String,
    pub component: Component,
    pub object: Value,
}

impl DesiredObject {
    /// The object as its typed k8s-openapi form (used by tests and status observation).
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.object.clone())
    }
}

/// What the resource's tier and sections switch on, resolved once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub tier: i32,
    pub postgres_managed: bool,
    pub postgres_external: bool,
    pub redis_managed: bool,
    pub redis_external: bool,
    pub storage_managed: bool,
    pub storage_external: bool,
    pub docker: bool,
    /// API replicas after forcing 1 at tiers 0 and 1.
    pub replicas: i32,
}

impl Plan {
    pub fn of(spec: &AppstrateSpec) -> Plan {
        let pg = spec.postgres.as_ref().filter(|_| spec.tier >= 1);
        let redis = spec.redis.as_ref().filter(|_| spec.tier >= 2);
        let storage = spec.storage.as_ref().filter(|_| spec.tier >= 3);
        Plan {
            tier: spec.tier,
            postgres_managed: pg.is_some_and(|p| p.managed.is_some()),
            postgres_external: pg.is_some_and(|p| p.managed.is_none() && p.external.is_some()),
            redis_managed: redis.is_some_and(|r| r.managed.is_some()),
            redis_external: redis.is_some_and(|r| r.managed.is_none() && r.external.is_some()),
            storage_managed: storage.is_some_and(|s| s.managed.is_some()),
            storage_external: storage.is_some_and(|s| s.managed.is_none() && s.external.is_some()),
            docker: spec.run_adapter == RunAdapter::Docker && spec.tier == 3,
            replicas: if spec.tier < 2 {
                1
            } else {
                spec.replicas.max(1)
            },
        }
    }

    pub fn s3(&self) -> bool {
        self.storage_managed || self.storage_external
    }

    pub fn replicas_forced(&self, spec: &AppstrateSpec) -> bool {
        spec.replicas != self.replicas
    }
}

/// Every child object of `app`, in apply order. The resource must have passed
/// [`crate::validate::validate`]; an owner reference is added when the resource has a uid.
pub fn desired_objects(app: &Appstrate) -> Vec<DesiredObject> {
    let name = app.name_any();
    let ns = app.namespace().unwrap_or_default();
    let spec = &app.spec;
    let plan = Plan::of(spec);
    let owner = app
        .controller_owner_ref(&())
        .map(|o| serde_json::to_value(vec![o]).unwrap_or(Value::Null));
    let ctx = Ctx {
        name: &name,
        ns: &ns,
        owner,
    };

    let mut out = Vec::new();
    let policies = spec.network_policy.enabled;
    if plan.postgres_managed {
        if policies {
            out.push(ctx.api_only_policy(Component::Postgres, 5432));
        }
        out.push(ctx.headless_service(Component::Postgres, "postgres", 5432));
        out.push(postgres_statefulset(&ctx, spec));
    }
    if plan.redis_managed {
        if policies {
            out.push(ctx.api_only_policy(Component::Redis, 6379));
        }
        out.push(ctx.headless_service(Component::Redis, "redis", 6379));
        out.push(redis_statefulset(&ctx, spec));
    }
    if plan.storage_managed {
        if policies {
            out.push(ctx.api_only_policy(Component::Minio, 9000));
        }
        out.push(ctx.headless_service(Component::Minio, "s3", 9000));
        out.push(minio_statefulset(&ctx, spec));
    }
    if !plan.s3() {
        out.push(data_pvc(&ctx, spec));
    }
    out.push(api_service(&ctx));
    out.push(api_deployment(&ctx, spec, &plan));
    out
}

struct Ctx<'a> {
    name: &'a str,
    ns: &'a str,
    owner: Option<Value>,
}

impl Ctx<'_> {
    fn metadata(&self, object_name: &str, component: Component, owned: bool) -> Value {
        let mut m = json!({
            "name": object_name,
            "namespace": self.ns,
            "labels": labels::labels(self.name, component),
        });
        if owned {
            if let Some(owner) = &self.owner {
                m["ownerReferences"] = owner.clone();
            }
        }
        m
    }

    /// A NetworkPolicy admitting connections to `component`'s pods on `port` from this
    /// instance's API pods only. Applied before the workload it protects, so the pods never run
    /// open. Kubelet probes come from the node, which NetworkPolicies do not restrict.
    fn api_only_policy(&self, component: Component, port: i32) -> DesiredObject {
        let policy_name = child_name(self.name, component.as_str());
        DesiredObject {
            kind: ChildKind::NetworkPolicy,
            name: policy_name.clone(),
            component,
            object: json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": self.metadata(&policy_name, component, true),
                "spec": {
                    "podSelector": {"matchLabels": labels::selector(self.name, component)},
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [{"podSelector": {"matchLabels": labels::selector(self.name, Component::Api)}}],
                        "ports": [{"protocol": "TCP", "port": port}],
                    }],
                },
            }),
        }
    }

    fn headless_service(&self, component: Component, port_name: &str, port: i32) -> DesiredObject {
        let svc_name = child_name(self.name, component.as_str());
        DesiredObject {
            kind: ChildKind::Service,
            name: svc_name.clone(),
            component,
            object: json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.metadata(&svc_name, component, true),
                "spec": {
                    "clusterIP": "None",
                    "selector": labels::selector(self.name, component),
                    "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
                },
            }),
        }
    }
}

fn secret_env(var: &str, secret: &str, key: &str) -> Value {
    json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

fn optional_secret_env(var: &str, secret: &str, key: &str) -> Value {
    json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": true}}})
}

fn plain_env(var: &str, value: impl Into<String>) -> Value {
    json!({"name": var, "value": value.into()})
}

fn restricted_container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn pod_security(uid: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn volume_claim_template(
    ctx: &Ctx<'_>,
    component: Component,
    size: &str,
    class: Option<&String>,
) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        // StatefulSet copies these labels onto the PVCs it creates, so pruning and
        // `deletionPolicy: Delete` find them by label.
        "metadata": {"name": "data", "labels": labels::labels(ctx.name, component)},
        "spec": spec,
    })
}

fn statefulset(
    ctx: &Ctx<'_>,
    component: Component,
    pod_spec: Value,
    claim: Value,
) -> DesiredObject {
    let sts_name = child_name(ctx.name, component.as_str());
    DesiredObject {
        kind: ChildKind::StatefulSet,
        name: sts_name.clone(),
        component,
        object: json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": ctx.metadata(&sts_name, component, true),
            "spec": {
                "serviceName": sts_name,
                "replicas": 1,
                "selector": {"matchLabels": labels::selector(ctx.name, component)},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "template": {
                    "metadata": {"labels": labels::labels(ctx.name, component)},
                    "spec": pod_spec,
                },
                "volumeClaimTemplates": [claim],
            },
        }),
    }
}

fn postgres_statefulset(ctx: &Ctx<'_>, spec: &AppstrateSpec) -> DesiredObject {
    let m = spec
        .postgres
        .as_ref()
        .and_then(|p| p.managed.clone())
        .unwrap_or_default();
    let secret = child_name(ctx.name, "postgres");
    let pod = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_security(999),
        "containers": [{
            "name": "postgres",
            "image": m.image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
            "env": [
                secret_env("POSTGRES_USER", &secret, "username"),
                secret_env("POSTGRES_PASSWORD", &secret, "password"),
                plain_env("POSTGRES_DB", "appstrate"),
                plain_env("PGDATA", "/var/lib/postgresql/data/pgdata"),
            ],
            "readinessProbe": {
                "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "appstrate", "-d", "appstrate"]},
                "periodSeconds": 5,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                "tcpSocket": {"port": 5432},
                "initialDelaySeconds": 30,
                "periodSeconds": 20,
            },
            "securityContext": restricted_container_security(),
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
        }],
    });
    let claim = volume_claim_template(
        ctx,
        Component::Postgres,
        &m.storage,
        m.storage_class_name.as_ref(),
    );
    statefulset(ctx, Component::Postgres, pod, claim)
}

fn redis_statefulset(ctx: &Ctx<'_>, spec: &AppstrateSpec) -> DesiredObject {
    let m = spec
        .redis
        .as_ref()
        .and_then(|r| r.managed.clone())
        .unwrap_or_default();
    let secret = child_name(ctx.name, "redis");
    let pod = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_security(999),
        "containers": [{
            "name": "redis",
            "image": m.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["redis-server"],
            // The kubelet expands $(REDIS_PASSWORD); the pod spec never holds the value.
            "args": ["--appendonly", "yes", "--dir", "/data", "--requirepass", "$(REDIS_PASSWORD)"],
            "ports": [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}],
            "env": [
                secret_env("REDIS_PASSWORD", &secret, "password"),
                // redis-cli reads the password from REDISCLI_AUTH.
                secret_env("REDISCLI_AUTH", &secret, "password"),
            ],
            "readinessProbe": {
                "exec": {"command": ["redis-cli", "ping"]},
                "periodSeconds": 5,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                "tcpSocket": {"port": 6379},
                "initialDelaySeconds": 15,
                "periodSeconds": 20,
            },
            "securityContext": restricted_container_security(),
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }],
    });
    let claim = volume_claim_template(
        ctx,
        Component::Redis,
        &m.storage,
        m.storage_class_name.as_ref(),
    );
    statefulset(ctx, Component::Redis, pod, claim)
}

fn minio_statefulset(ctx: &Ctx<'_>, spec: &AppstrateSpec) -> DesiredObject {
    let m = spec
        .storage
        .as_ref()
        .and_then(|s| s.managed.clone())
        .unwrap_or_default();
    let secret = child_name(ctx.name, "minio");
    let pod = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_security(1000),
        "containers": [{
            "name": "minio",
            "image": m.image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["server", "/data", "--address", ":9000"],
            "ports": [{"name": "s3", "containerPort": 9000, "protocol": "TCP"}],
            "env": [
                secret_env("MINIO_ROOT_USER", &secret, "accessKeyId"),
                secret_env("MINIO_ROOT_PASSWORD", &secret, "secretAccessKey"),
            ],
            "readinessProbe": {
                "httpGet": {"path": "/minio/health/ready", "port": "s3"},
                "periodSeconds": 5,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                "httpGet": {"path": "/minio/health/live", "port": "s3"},
                "initialDelaySeconds": 15,
                "periodSeconds": 20,
            },
            "securityContext": restricted_container_security(),
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }],
    });
    let claim = volume_claim_template(
        ctx,
        Component::Minio,
        &m.storage,
        m.storage_class_name.as_ref(),
    );
    statefulset(ctx, Component::Minio, pod, claim)
}

fn data_pvc(ctx: &Ctx<'_>, spec: &AppstrateSpec) -> DesiredObject {
    let pvc_name = child_name(ctx.name, "data");
    let mut pvc_spec = json!({
        "accessModes": [spec.data_volume.access_mode.as_str()],
        "resources": {"requests": {"storage": spec.data_volume.size}},
    });
    if let Some(class) = &spec.data_volume.storage_class_name {
        pvc_spec["storageClassName"] = json!(class);
    }
    DesiredObject {
        kind: ChildKind::PersistentVolumeClaim,
        name: pvc_name.clone(),
        component: Component::Api,
        object: json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            // No owner reference: the data outlives the resource unless deletionPolicy is Delete.
            "metadata": ctx.metadata(&pvc_name, Component::Api, false),
            "spec": pvc_spec,
        }),
    }
}

fn api_service(ctx: &Ctx<'_>) -> DesiredObject {
    let svc_name = child_name(ctx.name, "api");
    DesiredObject {
        kind: ChildKind::Service,
        name: svc_name.clone(),
        component: Component::Api,
        object: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": ctx.metadata(&svc_name, Component::Api, true),
            "spec": {
                "type": "ClusterIP",
                "selector": labels::selector(ctx.name, Component::Api),
                "ports": [{"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }),
    }
}

/// Environment of the API container, in a stable order.
pub fn api_env(name: &str, spec: &AppstrateSpec, plan: &Plan) -> Vec<Value> {
    let boot = spec
        .secrets_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| labels::boot_secret_name(name));
    let mut env = vec![
        plain_env("PORT", API_PORT.to_string()),
        plain_env("APP_URL", spec.app_url.clone()),
        plain_env("APP_ENV", "production"),
        plain_env("LOG_FORMAT", "json"),
        plain_env("DATA_DIR", "/data"),
        secret_env("BETTER_AUTH_SECRET", &boot, "BETTER_AUTH_SECRET"),
        secret_env("UPLOAD_SIGNING_SECRET", &boot, "UPLOAD_SIGNING_SECRET"),
        secret_env(
            "CONNECTION_ENCRYPTION_KEY",
            &boot,
            "CONNECTION_ENCRYPTION_KEY",
        ),
    ];
    if !plan.s3() {
        env.push(plain_env("FS_STORAGE_PATH", "/data/storage"));
    }
    if let Some(pg) = spec.postgres.as_ref().filter(|_| plan.tier >= 1) {
        match &pg.external {
            Some(ext) if pg.managed.is_none() => env.push(secret_env(
                "DATABASE_URL",
                &ext.secret_ref.name,
                &ext.secret_ref.key,
            )),
            _ => env.push(secret_env(
                "DATABASE_URL",
                &child_name(name, "postgres"),
                "url",
            )),
        }
    }
    if let Some(redis) = spec.redis.as_ref().filter(|_| plan.tier >= 2) {
        match &redis.external {
            Some(ext) if redis.managed.is_none() => env.push(secret_env(
                "REDIS_URL",
                &ext.secret_ref.name,
                &ext.secret_ref.key,
            )),
            _ => env.push(secret_env("REDIS_URL", &child_name(name, "redis"), "url")),
        }
    }
    if plan.storage_managed {
        let m = spec.storage.as_ref().and_then(|s| s.managed.as_ref());
        let minio = child_name(name, "minio");
        env.push(plain_env(
            "S3_BUCKET",
            m.map(|m| m.bucket.clone()).unwrap_or_default(),
        ));
        env.push(plain_env("S3_REGION", MINIO_REGION));
        env.push(plain_env("S3_ENDPOINT", format!("http://{minio}:9000")));
        env.push(plain_env("S3_FORCE_PATH_STYLE", "true"));
        env.push(secret_env("AWS_ACCESS_KEY_ID", &minio, "accessKeyId"));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &minio,
            "secretAccessKey",
        ));
    } else if plan.storage_external {
        let secret = spec
            .storage
            .as_ref()
            .and_then(|s| s.external.as_ref())
            .map(|e| e.secret_ref.name.clone())
            .unwrap_or_default();
        env.push(secret_env("S3_BUCKET", &secret, "bucket"));
        env.push(secret_env("S3_REGION", &secret, "region"));
        env.push(optional_secret_env("S3_ENDPOINT", &secret, "endpoint"));
        env.push(secret_env("AWS_ACCESS_KEY_ID", &secret, "accessKeyId"));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &secret,
            "secretAccessKey",
        ));
    }
    env.push(plain_env(
        "RUN_ADAPTER",
        if plan.docker {
            RunAdapter::Docker
        } else {
            RunAdapter::Process
        }
        .as_str(),
    ));
    if plan.docker {
        env.push(plain_env("DOCKER_SOCKET", DOCKER_SOCKET));
    }
    // `sidecarPool` is the run slot pool: `RUN_SLOT_POOL_SIZE` for the API, and the seed's
    // `SIDECAR_POOL_SIZE` with the same value for API images that predate run slots.
    let pool = spec.sidecar_pool.size.max(0).to_string();
    env.push(plain_env("RUN_SLOT_POOL_SIZE", pool.clone()));
    env.push(plain_env("SIDECAR_POOL_SIZE", pool));
    for extra in &spec.extra_env {
        env.push(serde_json::to_value(extra).unwrap_or(Value::Null));
    }
    env
}

fn api_deployment(ctx: &Ctx<'_>, spec: &AppstrateSpec, plan: &Plan) -> DesiredObject {
    let dep_name = child_name(ctx.name, "api");
    let rwo_volume = !plan.s3() && spec.data_volume.access_mode == AccessMode::ReadWriteOnce;

    let mut api_mounts = vec![
        json!({"name": "tmp", "mountPath": "/tmp"}),
        json!({"name": "data", "mountPath": "/data"}),
    ];
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {}})];
    if plan.s3() {
        volumes.push(json!({"name": "data", "emptyDir": {}}));
    } else {
        volumes.push(json!({
            "name": "data",
            "persistentVolumeClaim": {"claimName": child_name(ctx.name, "data")},
        }));
    }

    let mut api = json!({
        "name": "api",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy.as_str(),
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}],
        "env": api_env(ctx.name, spec, plan),
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": API_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 20,
        },
        "securityContext": {
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(resources) = &spec.resources {
        api["resources"] = serde_json::to_value(resources).unwrap_or(Value::Null);
    }

    let mut containers = Vec::new();
    if plan.docker {
        api_mounts.push(json!({"name": "docker-socket", "mountPath": DOCKER_SOCKET_DIR}));
        volumes.push(json!({"name": "docker-socket", "emptyDir": {}}));
        volumes.push(json!({"name": "docker-data", "emptyDir": {}}));
    }
    api["volumeMounts"] = json!(api_mounts);
    containers.push(api);
    if plan.docker {
        let image = spec
            .docker
            .as_ref()
            .map(|d| d.image.clone())
            .unwrap_or_else(crate::v1alpha1::default_docker_image);
        containers.push(json!({
            "name": "dind",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["--host=unix:///var/run/docker/docker.sock", "--group=65534"],
            // Only the unix socket is served, so the image's TLS certificate setup is skipped.
            "env": [plain_env("DOCKER_TLS_CERTDIR", "")],
            "securityContext": {"privileged": true, "runAsUser": 0, "runAsNonRoot": false},
            "volumeMounts": [
                {"name": "docker-socket", "mountPath": DOCKER_SOCKET_DIR},
                {"name": "docker-data", "mountPath": "/var/lib/docker"},
            ],
        }));
    }

    let pod_spec = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        // SHUTDOWN_GRACE_SECONDS (30) plus the server's own 10 s margin.
        "terminationGracePeriodSeconds": 45,
        "securityContext": {
            "runAsUser": NOBODY,
            "runAsGroup": NOBODY,
            "fsGroup": NOBODY,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": volumes,
    });
    let mut template = json!({
        "metadata": {"labels": labels::labels(ctx.name, Component::Api)},
        "spec": pod_spec,
    });
    let hash = config_hash(&template);
    template["metadata"]["annotations"] = json!({ CONFIG_HASH: hash });

    DesiredObject {
        kind: ChildKind::Deployment,
        name: dep_name.clone(),
        component: Component::Api,
        object: json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": ctx.metadata(&dep_name, Component::Api, true),
            "spec": {
                "replicas": plan.replicas,
                "selector": {"matchLabels": labels::selector(ctx.name, Component::Api)},
                // A ReadWriteOnce volume cannot be mounted by old and new pods at once. The
                // rolling parameters are spelled out so this field manager owns them and a later
                // switch to Recreate removes them (the API server refuses Recreate with them).
                "strategy": if rwo_volume {
                    json!({"type": "Recreate"})
                } else {
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
                },
                "template": template,
            },
        }),
    }
}

/// First 16 hex digits of the SHA-256 of the pod template's canonical JSON.
pub fn config_hash(template: &Value) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    fn app(yaml: &str) -> Appstrate {
        let mut a: Appstrate = serde_yaml::from_str(yaml).expect("fixture parses");
        a.metadata.namespace.get_or_insert_with(|| "default".into());
        a.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
        a
    }

    const TIER0: &str = "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {name: demo}\nspec:\n  tier: 0\n  image: appstrate:1\n  appUrl: https://a.example\n";
    const TIER2: &str = "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {name: demo}\nspec:\n  tier: 2\n  image: appstrate:1\n  appUrl: https://a.example\n  postgres: {managed: {}}\n  redis: {managed: {}}\n";

    fn names(objs: &[DesiredObject]) -> Vec<String> {
        objs.iter()
            .map(|o| format!("{}/{}", o.kind.kind(), o.name))
            .collect()
    }

    fn deployment(objs: &[DesiredObject]) -> Deployment {
        objs.iter()
            .find(|o| o.kind == ChildKind::Deployment)
            .expect("api deployment")
            .typed()
            .expect("valid Deployment")
    }

    fn env_names(d: &Deployment) -> Vec<String> {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    #[test]
    fn every_variable_the_operator_sets_is_reserved_from_extra_env() {
        let external = "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {name: demo}\nspec:\n  tier: 3\n  image: appstrate:1\n  appUrl: https://a.example\n  postgres: {external: {secretRef: {name: db}}}\n  redis: {external: {secretRef: {name: r}}}\n  storage: {external: {secretRef: {name: s3}}}\n  runAdapter: docker\n";
        let managed = "apiVersion: appstrate.dev/v1alpha1\nkind: Appstrate\nmetadata: {name: demo}\nspec:\n  tier: 3\n  image: appstrate:1\n  appUrl: https://a.example\n  postgres: {managed: {}}\n  redis: {managed: {}}\n  storage: {managed: {}}\n";
        let mut seen = std::collections::BTreeSet::new();
        for yaml in [TIER0, TIER2, external, managed] {
            let a = app(yaml);
            for e in api_env("demo", &a.spec, &Plan::of(&a.spec)) {
                let name = e["name"].as_str().unwrap().to_string();
                assert!(
                    crate::validate::is_reserved_env(&name),
                    "{name} is set by the operator but not reserved"
                );
                seen.insert(name);
            }
        }
        assert!(
            seen.contains("S3_BUCKET")
                && seen.contains("DOCKER_SOCKET")
                && seen.contains("DATABASE_URL")
        );
    }

    #[test]
    fn tier_up_adds_children_and_env_tier_down_removes_them() {
        let t0 = desired_objects(&app(TIER0));
        let t2 = desired_objects(&app(TIER2));
        assert_eq!(
            names(&t0),
            vec![
                "PersistentVolumeClaim/demo-data",
                "Service/demo-api",
                "Deployment/demo-api"
            ]
        );
        assert_eq!(
            names(&t2),
            vec![
                "NetworkPolicy/demo-postgres",
                "Service/demo-postgres",
                "StatefulSet/demo-postgres",
                "NetworkPolicy/demo-redis",
                "Service/demo-redis",
                "StatefulSet/demo-redis",
                "PersistentVolumeClaim/demo-data",
                "Service/demo-api",
                "Deployment/demo-api"
            ]
        );
        let e0 = env_names(&deployment(&t0));
        let e2 = env_names(&deployment(&t2));
        assert!(!e0.iter().any(|e| e == "DATABASE_URL" || e == "REDIS_URL"));
        assert!(e2.contains(&"DATABASE_URL".to_string()) && e2.contains(&"REDIS_URL".to_string()));
        // Going down again with the sections still present gives exactly the tier-0 objects.
        let down = desired_objects(&app(&TIER2.replace("tier: 2", "tier: 0")));
        assert_eq!(down, t0);
        // The rollout trigger differs between the two configurations.
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH]
                .clone()
        };
        assert_ne!(hash(&deployment(&t0)), hash(&deployment(&t2)));
    }

    #[test]
    fn replicas_forced_to_one_below_tier2() {
        let t1 = TIER2
            .replace("tier: 2", "tier: 1")
            .replace("  redis: {managed: {}}\n", "  replicas: 3\n");
        let d = deployment(&desired_objects(&app(&t1)));
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
        let rwx = format!("{TIER2}  replicas: 3\n  dataVolume: {{accessMode: ReadWriteMany}}\n");
        let d = deployment(&desired_objects(&app(&rwx)));
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(
            d.spec
                .as_ref()
                .unwrap()
                .strategy
                .as_ref()
                .unwrap()
                .type_
                .as_deref(),
            Some("RollingUpdate")
        );
    }

    #[test]
    fn secrets_reach_the_api_only_through_secret_key_refs() {
        let objs = desired_objects(&app(TIER2));
        let d = deployment(&objs);
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        for e in c.env.as_ref().unwrap() {
            if [
                "BETTER_AUTH_SECRET",
                "UPLOAD_SIGNING_SECRET",
                "CONNECTION_ENCRYPTION_KEY",
                "DATABASE_URL",
                "REDIS_URL",
            ]
            .contains(&e.name.as_str())
            {
                assert!(e.value.is_none(), "{} has a literal value", e.name);
                let r = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                assert!(r.name.starts_with("demo-"), "{}", r.name);
            }
        }
    }

    #[test]
    fn owner_references_on_everything_but_the_data_pvc() {
        for o in desired_objects(&app(TIER2)) {
            let owners = o.object["metadata"]["ownerReferences"].as_array().cloned();
            if o.kind == ChildKind::PersistentVolumeClaim {
                assert!(owners.is_none(), "{} must not be owned", o.name);
            } else {
                let owners = owners.unwrap_or_default();
                assert_eq!(owners.len(), 1, "{}", o.name);
                assert_eq!(owners[0]["controller"], true);
                assert_eq!(owners[0]["kind"], "Appstrate");
            }
            let l = &o.object["metadata"]["labels"];
            assert_eq!(l[labels::MANAGED_BY], "appstrate-operator");
            assert_eq!(l[labels::INSTANCE], "demo");
            assert_eq!(l[labels::PART_OF], "appstrate");
        }
    }

    #[test]
    fn external_sections_use_the_referenced_secret() {
        let y = TIER2
            .replace(
                "postgres: {managed: {}}",
                "postgres: {external: {secretRef: {name: db, key: dsn}}}",
            )
            .replace(
                "redis: {managed: {}}",
                "redis: {external: {secretRef: {name: cache}}}",
            );
        let objs = desired_objects(&app(&y));
        assert!(!objs.iter().any(|o| o.kind == ChildKind::StatefulSet));
        let d = deployment(&objs);
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let find = |n: &str| {
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == n)
                .unwrap()
                .clone()
        };
        let db = find("DATABASE_URL")
            .value_from
            .unwrap()
            .secret_key_ref
            .unwrap();
        assert_eq!((db.name.as_str(), db.key.as_str()), ("db", "dsn"));
        let r = find("REDIS_URL")
            .value_from
            .unwrap()
            .secret_key_ref
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("cache", "url"));
    }

    #[test]
    fn desired_objects_are_deterministic() {
        assert_eq!(desired_objects(&app(TIER2)), desired_objects(&app(TIER2)));
    }
}
