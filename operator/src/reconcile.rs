//! The reconcile pipeline (§20.4): validate → secrets → build → apply → prune → observe →
//! status → requeue, wrapped by the finalizer `appstrates.appstrate.dev/cleanup`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::InvalidObject;
use kube::core::{DeserializeGuard, DynamicObject, TypeMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::desired::{desired_objects, ChildKind, Plan, API_PORT};
use crate::health::HealthProbe;
use crate::labels::{self, child_name, Component, MANAGER};
use crate::metrics::Metrics;
use crate::secrets::{self, generated_secrets, new_secret};
use crate::status::{self, ApiObservation, Backing, Cond};
use crate::v1alpha1::{
    Appstrate, AppstrateStatus, DeletionPolicy, Endpoints, Phase, RunAdapter, FINALIZER,
};

/// Requeue while anything is not ready (default of `REQUEUE_NOT_READY_SECONDS`).
pub const REQUEUE_NOT_READY: Duration = Duration::from_secs(10);
/// Requeue once everything is ready, an eventual-consistency sweep (default of
/// `REQUEUE_READY_SECONDS`).
pub const REQUEUE_READY: Duration = Duration::from_secs(300);

/// Periodic reconcile intervals. Changes to owned children trigger a reconcile at once through
/// the controller's watches; these only bound how stale the observed readiness can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeue {
    pub not_ready: Duration,
    pub ready: Duration,
}

impl Default for Requeue {
    fn default() -> Self {
        Requeue {
            not_ready: REQUEUE_NOT_READY,
            ready: REQUEUE_READY,
        }
    }
}

impl Requeue {
    /// Reads `REQUEUE_NOT_READY_SECONDS` and `REQUEUE_READY_SECONDS` through `var` (unset or
    /// empty: the default); a value that is not a whole number of seconds from 1 to 86400 is an
    /// error naming the variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Requeue, String> {
        let read = |name: &str, default: Duration| -> Result<Duration, String> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
                    _ => Err(format!(
                        "{name}={v:?} is invalid: set a whole number of seconds from 1 to 86400, or unset it for {}",
                        default.as_secs()
                    )),
                },
            }
        };
        Ok(Requeue {
            not_ready: read("REQUEUE_NOT_READY_SECONDS", REQUEUE_NOT_READY)?,
            ready: read("REQUEUE_READY_SECONDS", REQUEUE_READY)?,
        })
    }
}
/// First and last delay of the error backoff.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("resource has no namespace")]
    MissingNamespace,
    #[error("cannot serialize object: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the API server refused {child}: {source}")]
    Apply {
        child: String,
        #[source]
        source: kube::Error,
    },
}

fn kube_label(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 409 => "conflict",
        kube::Error::Api(s) if s.code == 403 => "forbidden",
        kube::Error::Api(s) if s.code == 422 => "invalid",
        kube::Error::Api(_) => "kube_api",
        _ => "kube_client",
    }
}

impl Error {
    /// Low-cardinality label for `appstrate_operator_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(e) | Error::Apply { source: e, .. } => kube_label(e),
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                F::AddFinalizer(_) => "add_finalizer",
                F::RemoveFinalizer(_) => "remove_finalizer",
                F::UnnamedObject | F::InvalidFinalizer => "finalizer",
            },
            Error::MissingNamespace => "missing_namespace",
            Error::Serialize(_) => "serialize",
        }
    }
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub health: Arc<dyn HealthProbe>,
    pub metrics: Arc<Metrics>,
    /// Kubernetes Events publisher; `None` disables Events (tests, bench).
    pub recorder: Option<Recorder>,
    /// Consecutive failures per object, for the exponential error backoff.
    failures: Mutex<HashMap<String, u32>>,
    requeue: Requeue,
}

impl Context {
    pub fn new(
        client: Client,
        health: Arc<dyn HealthProbe>,
        metrics: Arc<Metrics>,
        recorder: Option<Recorder>,
    ) -> Context {
        Context {
            client,
            health,
            metrics,
            recorder,
            failures: Mutex::new(HashMap::new()),
            requeue: Requeue::default(),
        }
    }

    /// The same context with other periodic reconcile intervals.
    pub fn with_requeue(mut self, requeue: Requeue) -> Context {
        self.requeue = requeue;
        self
    }

    async fn event(&self, app: &Appstrate, type_: EventType, reason: &str, note: String) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(truncate_utf8(&note, EVENT_NOTE_MAX_BYTES)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &app.object_ref(&())).await {
            debug!(error = %e, reason, "could not publish event");
        }
    }

    fn reset_backoff(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// 5 s, 10 s, 20 s … capped at 5 min.
    fn next_backoff(&self, key: &str) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff_delay(n)
    }
}

/// Delay before retry number `n` (1-based) after consecutive errors.
pub fn backoff_delay(n: u32) -> Duration {
    let secs = BACKOFF_MIN
        .as_secs()
        .saturating_mul(1u64 << n.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(BACKOFF_MAX.as_secs()))
}

fn object_key(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Controller entry point: tolerates objects that do not deserialize.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<Appstrate>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let start = Instant::now();
    let key = object_key(guard.meta());
    let result = match &guard.0 {
        Ok(app) => reconcile_appstrate(Arc::new(app.clone()), ctx.clone()).await,
        Err(invalid) => report_invalid_object(invalid, &ctx).await,
    };
    ctx.metrics.reconciled(
        start.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

/// Error policy: exponential backoff from 5 s to 5 min per object.
pub fn error_policy(
    guard: Arc<DeserializeGuard<Appstrate>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = object_key(guard.meta());
    let delay = ctx.next_backoff(&key);
    warn!(object = %key, error = %err, reason = err.metric_label(), retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// The finalizer-wrapped reconcile of one well-formed resource.
pub async fn reconcile_appstrate(app: Arc<Appstrate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = app.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Appstrate> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, app, |event| async {
        match event {
            FinalizerEvent::Apply(app) => apply(&app, &ctx).await,
            FinalizerEvent::Cleanup(app) => cleanup(&app, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn dyn_api(client: &Client, ns: &str, kind: ChildKind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &kind.api_resource())
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Existing children by kind and name, as listed by the instance labels.
type Existing = BTreeMap<(ChildKind, String), Value>;

/// Lists one kind of child by the instance labels, each item carrying its `apiVersion` and `kind`.
///
/// The API server omits `apiVersion`/`kind` on the items of a list of built-in resources, while
/// a desired object always carries them: without this, every listed child would differ from its
/// desired form.
async fn list_kind(
    client: &Client,
    ns: &str,
    instance: &str,
    kind: ChildKind,
) -> Result<Vec<DynamicObject>, Error> {
    let lp = ListParams::default().labels(&labels::instance_selector(instance));
    let list = dyn_api(client, ns, kind).list(&lp).await?;
    Ok(list.items.into_iter().map(|o| with_type(kind, o)).collect())
}

/// Sets `apiVersion` and `kind` from the resource type the object was listed as.
pub fn with_type(kind: ChildKind, mut obj: DynamicObject) -> DynamicObject {
    let ar = kind.api_resource();
    obj.types = Some(TypeMeta {
        api_version: ar.api_version,
        kind: ar.kind,
    });
    obj
}

/// Whether the object is already being deleted (a `deletionTimestamp` is set): pruning and
/// cleanup leave it to the API server instead of deleting it again.
pub fn is_terminating(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

async fn list_children(client: &Client, ns: &str, instance: &str) -> Result<Existing, Error> {
    let mut out = Existing::new();
    for kind in ChildKind::ALL {
        for obj in list_kind(client, ns, instance, kind).await? {
            let name = obj.name_any();
            out.insert((kind, name), serde_json::to_value(&obj)?);
        }
    }
    Ok(out)
}

async fn apply(app: &Appstrate, ctx: &Context) -> Result<Action, Error> {
    let name = app.name_any();
    let ns = app.namespace().ok_or(Error::MissingNamespace)?;
    let key = format!("{ns}/{name}");
    let previous = app.status.clone();
    let previous_phase = previous.as_ref().and_then(|s| s.phase);

    // 1 Validate: an invalid spec touches no child.
    if let Err(invalid) = crate::validate::validate_resource(app) {
        let message = invalid.to_string();
        let conds = vec![status::invalid_spec_condition(&message)];
        let st = AppstrateStatus {
            phase: Some(Phase::Failed),
            observed_generation: app.metadata.generation,
            tier: Some(app.spec.tier),
            conditions: status::to_conditions(
                &conds,
                previous.as_ref(),
                app.metadata.generation,
                &now(),
            ),
            endpoints: None,
            sidecar_pool: None,
        };
        write_status(app, ctx, &st).await?;
        ctx.metrics.set_phase(&key, Some(Phase::Failed));
        let same_message = previous
            .as_ref()
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == status::READY))
            .is_some_and(|c| c.reason == "InvalidSpec" && c.message == message);
        if !same_message {
            ctx.event(app, EventType::Warning, "InvalidSpec", message.clone())
                .await;
        }
        info!(object = %key, %message, "invalid spec");
        return Ok(Action::await_change());
    }

    let client = &ctx.client;
    let mut existing = list_children(client, &ns, &name).await?;

    // 2 Secrets: create the generated ones that are missing; never update one.
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // A Send generator seeded from the OS (ThreadRng cannot cross an await).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    for which in generated_secrets(app) {
        if existing.contains_key(&(ChildKind::Secret, which.name.clone())) {
            continue;
        }
        let secret = new_secret(app, &which, &mut rng);
        match secret_api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                existing.insert(
                    (ChildKind::Secret, which.name.clone()),
                    serde_json::to_value(&created)?,
                );
                ctx.event(
                    app,
                    EventType::Normal,
                    "SecretCreated",
                    format!("generated Secret {}", which.name),
                )
                .await;
                info!(object = %key, secret = %which.name, "generated secret created");
            }
            // Created meanwhile, or a Secret of that name exists without our labels: keep it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }

    // 3 Build, 4 Apply (skipping objects that already match, so an unchanged resource writes nothing).
    let desired = desired_objects(app);
    let mut applied: BTreeMap<(ChildKind, String), Value> = BTreeMap::new();
    for obj in &desired {
        let k = (obj.kind, obj.name.clone());
        match existing.get(&k) {
            Some(current) if is_subset(&obj.object, current) => {
                applied.insert(k, current.clone());
            }
            _ => {
                let result = match dyn_api(client, &ns, obj.kind)
                    .patch(&obj.name, &apply_params(), &Patch::Apply(&obj.object))
                    .await
                {
                    Ok(result) => result,
                    // Refused (invalid, conflict, forbidden…): say so on the resource, then back off.
                    Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => {
                        let child = format!("{}/{}", obj.kind.kind(), obj.name);
                        report_apply_failure(app, ctx, &child, &s.message).await;
                        return Err(Error::Apply {
                            child,
                            source: kube::Error::Api(s),
                        });
                    }
                    Err(e) => return Err(e.into()),
                };
                debug!(object = %key, kind = obj.kind.kind(), child = %obj.name, "applied");
                applied.insert(k, serde_json::to_value(&result)?);
            }
        }
    }

    // 5 Prune: workloads and Services no longer desired; data (PVCs, Secrets) stays.
    let mut pruned = Vec::new();
    for ((kind, child), obj) in &existing {
        if kind.holds_data() || applied.contains_key(&(*kind, child.clone())) {
            continue;
        }
        if owned_by_other(obj, app) || is_terminating(obj) {
            continue;
        }
        match dyn_api(client, &ns, *kind)
            .delete(child, &DeleteParams::background())
            .await
        {
            Ok(_) => pruned.push(format!("{}/{child}", kind.kind())),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !pruned.is_empty() {
        info!(object = %key, pruned = ?pruned, "pruned children");
        ctx.event(
            app,
            EventType::Normal,
            "Pruned",
            format!("removed {}", pruned.join(", ")),
        )
        .await;
    }

    // 6 Observe.
    let observed = observe(app, ctx, &ns, &applied, &existing).await?;

    // 7 Status.
    let ready = observed.ready.ok;
    let phase = status::phase(ready, previous_phase, observed.waiting_for_user_secret);
    let mut conds = observed.conditions.clone();
    conds.push(observed.ready.clone());
    let mut st = AppstrateStatus {
        phase: Some(phase),
        observed_generation: app.metadata.generation,
        tier: Some(app.spec.tier),
        conditions: Vec::new(),
        endpoints: Some(observed.endpoints),
        sidecar_pool: observed.sidecar_pool,
    };
    let now = now();
    st.conditions = status::to_conditions(&conds, previous.as_ref(), app.metadata.generation, &now);
    if previous.as_ref() != Some(&st) {
        write_status(app, ctx, &st).await?;
    }
    ctx.metrics.set_phase(&key, Some(phase));
    if previous_phase != Some(phase) {
        let (type_, note) = match phase {
            Phase::Ready => (EventType::Normal, "all conditions are true".to_string()),
            Phase::Degraded => (EventType::Warning, observed.ready.message.clone()),
            _ => (EventType::Normal, observed.ready.message.clone()),
        };
        ctx.event(app, type_, phase.as_str(), note).await;
    }
    let previous_tier = previous.as_ref().and_then(|s| s.tier);
    if previous_tier.is_some_and(|t| t != app.spec.tier) {
        let note = format!(
            "tier {} -> {}",
            previous_tier.unwrap_or_default(),
            app.spec.tier
        );
        ctx.event(app, EventType::Normal, "TierChanged", note).await;
    }

    // 8 Requeue.
    Ok(Action::requeue(if ready {
        ctx.requeue.ready
    } else {
        ctx.requeue.not_ready
    }))
}

/// Phase `Failed` with `Ready=False` (reason `ApplyFailed`) naming the refused child and the API
/// server's message, and a Warning Event when the message is new. The other conditions keep
/// their last observed values. Best effort: the reconcile error that follows drives the backoff.
async fn report_apply_failure(app: &Appstrate, ctx: &Context, child: &str, server_message: &str) {
    let key = object_key(&app.metadata);
    let message = truncate_utf8(
        &format!("{child}: {server_message}"),
        CONDITION_MESSAGE_MAX_BYTES,
    );
    warn!(object = %key, %child, message = %server_message, "server-side apply refused");
    let previous = app.status.as_ref();
    let mut st = previous.cloned().unwrap_or_default();
    st.phase = Some(Phase::Failed);
    st.observed_generation = app.metadata.generation;
    st.tier = Some(app.spec.tier);
    st.conditions.retain(|c| c.type_ != status::READY);
    st.conditions.extend(status::to_conditions(
        &[status::apply_failed_condition(&message)],
        previous,
        app.metadata.generation,
        &now(),
    ));
    // Unchanged on a retry: no write, so no watch event cuts the backoff short.
    if previous != Some(&st) {
        if let Err(e) = write_status(app, ctx, &st).await {
            warn!(object = %key, error = %e, "could not write the Failed status");
        }
    }
    ctx.metrics.set_phase(&key, Some(Phase::Failed));
    let same_message = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == status::READY))
        .is_some_and(|c| c.reason == status::APPLY_FAILED && c.message == message);
    if !same_message {
        ctx.event(app, EventType::Warning, status::APPLY_FAILED, message)
            .await;
    }
}

/// The API server's limit on a Kubernetes Event's `note` (events.k8s.io/v1).
pub const EVENT_NOTE_MAX_BYTES: usize = 1024;
/// The API server's limit on a condition's `message`.
pub const CONDITION_MESSAGE_MAX_BYTES: usize = 32 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, ending with `…` when cut.
pub fn truncate_utf8(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..end])
}

/// A listed child that carries a controller reference to some other owner is not ours to prune.
fn owned_by_other(obj: &Value, app: &Appstrate) -> bool {
    let uid = app.uid().unwrap_or_default();
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["controller"] == true && r["uid"] != json!(uid))
        })
}

struct Observed {
    conditions: Vec<Cond>,
    ready: Cond,
    endpoints: Endpoints,
    sidecar_pool: Option<crate::v1alpha1::SidecarPoolStatus>,
    waiting_for_user_secret: bool,
}

fn ready_replicas(obj: Option<&Value>) -> i32 {
    obj.and_then(|o| o["status"]["readyReplicas"].as_i64())
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

/// Checks a user-supplied Secret holds the keys the API needs; `Some(message)` when not.
async fn check_user_secret(
    api: &Api<Secret>,
    name: &str,
    keys: &[&str],
) -> Result<Option<String>, Error> {
    match api.get_opt(name).await? {
        None => Ok(Some(format!("Secret {name} not found"))),
        Some(s) => {
            let missing: Vec<&str> = keys
                .iter()
                .copied()
                .filter(|k| !secrets::has_key(&s, k))
                .collect();
            if missing.is_empty() {
                Ok(None)
            } else {
                Ok(Some(format!(
                    "Secret {name} lacks key(s) {}",
                    missing.join(", ")
                )))
            }
        }
    }
}

async fn observe(
    app: &Appstrate,
    ctx: &Context,
    ns: &str,
    applied: &BTreeMap<(ChildKind, String), Value>,
    existing: &Existing,
) -> Result<Observed, Error> {
    let name = app.name_any();
    let spec = &app.spec;
    let plan = Plan::of(spec);
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut waiting_for_user_secret = false;
    let svc_host =
        |suffix: &str, port: u16| format!("{}.{ns}.svc:{port}", child_name(&name, suffix));

    let generated_missing = |component: Component| -> Option<String> {
        let secret = child_name(&name, component.as_str());
        (!existing.contains_key(&(ChildKind::Secret, secret.clone())))
            .then(|| format!("Secret {secret} not found"))
    };
    let managed = |component: Component| Backing::Managed {
        statefulset: child_name(&name, component.as_str()),
        ready: ready_replicas(applied.get(&(
            ChildKind::StatefulSet,
            child_name(&name, component.as_str()),
        ))),
        missing: generated_missing(component),
    };

    let mut endpoints = Endpoints {
        api: Some(format!(
            "http://{}.{ns}.svc:{API_PORT}",
            child_name(&name, "api")
        )),
        ..Endpoints::default()
    };

    let database = if plan.postgres_managed {
        endpoints.database = Some(svc_host("postgres", 5432));
        managed(Component::Postgres)
    } else if plan.postgres_external {
        endpoints.database = Some("external".into());
        let r = &spec
            .postgres
            .as_ref()
            .and_then(|p| p.external.as_ref())
            .map(|e| e.secret_ref.clone());
        let (secret, key) = r
            .as_ref()
            .map(|r| (r.name.clone(), r.key.clone()))
            .unwrap_or_default();
        let missing = check_user_secret(&secret_api, &secret, &[key.as_str()]).await?;
        waiting_for_user_secret |= missing.is_some();
        Backing::External { secret, missing }
    } else {
        Backing::NotRequired {
            why: format!(
                "no PostgreSQL at tier {} (SQLite on the data volume)",
                spec.tier
            ),
        }
    };

    let redis = if plan.redis_managed {
        endpoints.redis = Some(svc_host("redis", 6379));
        managed(Component::Redis)
    } else if plan.redis_external {
        endpoints.redis = Some("external".into());
        let r = spec
            .redis
            .as_ref()
            .and_then(|p| p.external.as_ref())
            .map(|e| e.secret_ref.clone());
        let (secret, key) = r.map(|r| (r.name, r.key)).unwrap_or_default();
        let missing = check_user_secret(&secret_api, &secret, &[key.as_str()]).await?;
        waiting_for_user_secret |= missing.is_some();
        Backing::External { secret, missing }
    } else {
        Backing::NotRequired {
            why: format!(
                "no Redis at tier {} (in-process queue and pub/sub)",
                spec.tier
            ),
        }
    };

    let storage = if plan.storage_managed {
        endpoints.storage = Some(svc_host("minio", 9000));
        managed(Component::Minio)
    } else if plan.storage_external {
        endpoints.storage = Some("external".into());
        let secret = spec
            .storage
            .as_ref()
            .and_then(|s| s.external.as_ref())
            .map(|e| e.secret_ref.name.clone())
            .unwrap_or_default();
        let missing = check_user_secret(
            &secret_api,
            &secret,
            &["bucket", "region", "accessKeyId", "secretAccessKey"],
        )
        .await?;
        waiting_for_user_secret |= missing.is_some();
        Backing::External { secret, missing }
    } else {
        Backing::NotRequired {
            why: "filesystem storage on the data volume".into(),
        }
    };

    // Boot secrets: a user-supplied Secret must exist with all three keys.
    let boot_missing = match &spec.secrets_ref {
        Some(r) => {
            let m = check_user_secret(
                &secret_api,
                &r.name,
                secrets::required_keys(Component::BootSecrets),
            )
            .await?;
            waiting_for_user_secret |= m.is_some();
            m
        }
        None => generated_missing(Component::BootSecrets),
    };

    let deployment_name = child_name(&name, "api");
    let deployment = applied.get(&(ChildKind::Deployment, deployment_name.clone()));
    let api_ready = ready_replicas(deployment);
    let health = if api_ready >= 1 {
        // Probe through the Service's cluster IP when known: no DNS lookup needed.
        let service = applied.get(&(ChildKind::Service, deployment_name.clone()));
        let host = service
            .and_then(|s| s["spec"]["clusterIP"].as_str())
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                }
            })
            .unwrap_or_else(|| format!("{deployment_name}.{ns}.svc"));
        Some(ctx.health.check(&format!("http://{host}:{API_PORT}")).await)
    } else {
        None
    };
    let api = ApiObservation {
        deployment: deployment_name,
        desired: plan.replicas,
        ready: api_ready,
        health: health.clone(),
        forced_replicas: plan
            .replicas_forced(spec)
            .then_some((spec.replicas, spec.tier)),
        missing_secret: boot_missing,
    };

    let pool_required =
        plan.docker && spec.run_adapter == RunAdapter::Docker && spec.sidecar_pool.size > 0;
    let (pool_cond, sidecar_pool) = status::sidecar_condition(pool_required, health.as_ref());

    let conditions = vec![
        status::backing_condition(status::DATABASE_READY, &database),
        status::backing_condition(status::REDIS_READY, &redis),
        status::backing_condition(status::STORAGE_READY, &storage),
        status::api_condition(&api),
        pool_cond,
    ];
    let ready = status::ready_condition(&conditions);
    Ok(Observed {
        conditions,
        ready,
        endpoints,
        sidecar_pool,
        waiting_for_user_secret,
    })
}

async fn write_status(app: &Appstrate, ctx: &Context, st: &AppstrateStatus) -> Result<(), Error> {
    let ns = app.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Appstrate> = Api::namespaced(ctx.client.clone(), &ns);
    let body = json!({
        "apiVersion": Appstrate::api_version(&()),
        "kind": Appstrate::kind(&()),
        "status": st,
    });
    api.patch_status(&app.name_any(), &apply_params(), &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// Cleanup before the finalizer is removed: data goes only with `deletionPolicy: Delete`.
async fn cleanup(app: &Appstrate, ctx: &Context) -> Result<Action, Error> {
    let name = app.name_any();
    let ns = app.namespace().ok_or(Error::MissingNamespace)?;
    let key = format!("{ns}/{name}");

    if app.status.as_ref().and_then(|s| s.phase) != Some(Phase::Deleting) {
        let mut st = app.status.clone().unwrap_or_default();
        st.phase = Some(Phase::Deleting);
        // Best effort: the resource is going away either way.
        if let Err(e) = write_status(app, ctx, &st).await {
            debug!(object = %key, error = %e, "could not mark Deleting");
        }
    }

    // Children are deleted here, not left to the garbage collector through their owner
    // references: an API server without a controller-manager has none. Workloads go first, so
    // nothing still mounts a volume or reads a Secret when those are deleted.
    let mut kinds = vec![
        ChildKind::Deployment,
        ChildKind::StatefulSet,
        ChildKind::Service,
    ];
    if app.spec.deletion_policy == DeletionPolicy::Delete {
        kinds.extend([ChildKind::PersistentVolumeClaim, ChildKind::Secret]);
    }
    let mut deleted = Vec::new();
    for kind in kinds {
        let api = dyn_api(&ctx.client, &ns, kind);
        for obj in list_kind(&ctx.client, &ns, &name, kind).await? {
            let value = serde_json::to_value(&obj)?;
            // Already going away, or controlled by another owner: not ours to delete.
            if is_terminating(&value) || (!kind.holds_data() && owned_by_other(&value, app)) {
                continue;
            }
            let child = obj.name_any();
            match api.delete(&child, &DeleteParams::background()).await {
                Ok(_) => deleted.push(format!("{}/{child}", kind.kind())),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if app.spec.deletion_policy == DeletionPolicy::Delete {
        info!(object = %key, deleted = ?deleted, "deletionPolicy Delete: children and data removed");
        if !deleted.is_empty() {
            ctx.event(
                app,
                EventType::Normal,
                "DataDeleted",
                format!("deleted {}", deleted.join(", ")),
            )
            .await;
        }
    } else {
        info!(object = %key, deleted = ?deleted, "deletionPolicy Retain: children removed, PVCs and generated Secrets kept");
    }
    ctx.metrics.set_phase(&key, None);
    Ok(Action::await_change())
}

/// A resource that does not deserialize: report it on its status instead of stopping the watch.
async fn report_invalid_object(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let ns = meta.namespace.clone().ok_or(Error::MissingNamespace)?;
    let name = meta.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &kube::core::ApiResource::erase::<Appstrate>(&()),
    );
    warn!(object = %format!("{ns}/{name}"), error = %invalid.error, "resource does not deserialize");

    // Being deleted with our finalizer: nothing can be read, so keep the data (Retain) and let go.
    if meta.deletion_timestamp.is_some() {
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        if finalizers.iter().any(|f| f == FINALIZER) {
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            // resourceVersion makes the merge patch fail instead of dropping a finalizer added meanwhile.
            let patch =
                json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        return Ok(Action::await_change());
    }

    let message = format!("spec does not match the schema: {}", invalid.error);
    let cond = status::to_conditions(
        &[status::invalid_spec_condition(&message)],
        None,
        meta.generation,
        &now(),
    );
    let body = json!({
        "apiVersion": Appstrate::api_version(&()),
        "kind": Appstrate::kind(&()),
        "status": {"phase": "Failed", "observedGeneration": meta.generation, "conditions": cond},
    });
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await?;
    ctx.metrics
        .set_phase(&format!("{ns}/{name}"), Some(Phase::Failed));
    Ok(Action::await_change())
}

/// Whether every field of `desired` is present with the same value in `current`.
///
/// Arrays must have the same length (so a removed env var or container counts as a change);
/// fields the server added (defaults, status, metadata) are ignored. An empty string matches an
/// absent field, because the API server drops empty strings on write.
pub fn is_subset(desired: &Value, current: &Value) -> bool {
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => d.iter().all(|(k, dv)| match c.get(k) {
            Some(cv) => is_subset(dv, cv),
            None => dv == &Value::String(String::new()),
        }),
        (Value::Array(d), Value::Array(c)) => {
            d.len() == c.len() && d.iter().zip(c).all(|(a, b)| is_subset(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_ignores_server_fields_but_catches_removals() {
        let desired = json!({"spec": {"env": [{"name": "A", "value": "1"}], "x": ""}});
        let current =
            json!({"spec": {"env": [{"name": "A", "value": "1", "extra": true}]}, "status": {}});
        assert!(is_subset(&desired, &current));
        let fewer = json!({"spec": {"env": []}});
        assert!(!is_subset(&fewer, &current));
        let changed = json!({"spec": {"env": [{"name": "A", "value": "2"}]}});
        assert!(!is_subset(&changed, &current));
    }

    #[test]
    fn requeue_intervals_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Requeue::from_env(env(&[])), Ok(Requeue::default()));
        assert_eq!(
            Requeue::from_env(env(&[
                ("REQUEUE_NOT_READY_SECONDS", "3"),
                ("REQUEUE_READY_SECONDS", "3600")
            ])),
            Ok(Requeue {
                not_ready: Duration::from_secs(3),
                ready: Duration::from_secs(3600)
            })
        );
        for bad in ["0", "-1", "ten", "1.5", "86401"] {
            let err = Requeue::from_env(move |n: &str| {
                (n == "REQUEUE_READY_SECONDS").then(|| bad.to_string())
            })
            .expect_err(bad);
            assert!(
                err.starts_with("REQUEUE_READY_SECONDS=") && err.contains("1 to 86400"),
                "{err}"
            );
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("short", 1024), "short");
        let cut = truncate_utf8(&"é".repeat(600), 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(cut.chars().filter(|c| *c == 'é').count(), (1024 - 3) / 2);
    }

    #[test]
    fn backoff_doubles_from_5s_to_5min() {
        let d: Vec<u64> = (1..=9).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(d, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn metric_labels_are_low_cardinality() {
        let conflict = Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            ..Default::default()
        })));
        assert_eq!(conflict.metric_label(), "conflict");
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            Error::MissingNamespace,
        )));
        assert_eq!(wrapped.metric_label(), "missing_namespace");
    }
}
