//! The reconcile pipeline (§20.4): validate → secrets → build → apply → prune → observe →
//! status → requeue, wrapped by the finalizer `appstrates.appstrate.dev/cleanup`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{DeserializeGuard, DynamicObject, TypeMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::desired::{desired_objects, ChildKind};
use crate::health::HealthProbe;
use crate::labels::{self, MANAGER};
use crate::metrics::Metrics;
use crate::status;
use crate::v1alpha1::{Appstrate, AppstrateStatus, Phase, FINALIZER};
use crate::{credentials, finalizer, observe, quantity};

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
    #[error("could not add the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("could not remove the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
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
    /// Children the operator itself refused to apply (such as a data volume below its live size).
    #[error("not applied: {0}")]
    Refused(String),
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
        match self {
            Error::Kube(e) | Error::Apply { source: e, .. } => kube_label(e),
            Error::AddFinalizer(_) => "add_finalizer",
            Error::RemoveFinalizer(_) => "remove_finalizer",
            Error::Refused(_) => "invalid",
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

    pub(crate) async fn event(
        &self,
        app: &Appstrate,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_about(app, type_, reason, note, None).await;
    }

    /// An Event regarding `app`, related to `related`. The recorder folds Events with the same
    /// type, reason, regarding and related object into one series that keeps the first note, so
    /// an Event about one child names that child as its related object.
    pub(crate) async fn event_about(
        &self,
        app: &Appstrate,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(truncate_utf8(&note, EVENT_NOTE_MAX_BYTES)),
            action: "Reconcile".into(),
            secondary: related,
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

pub(crate) fn object_key(meta: &kube::api::ObjectMeta) -> String {
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
        Err(invalid) => finalizer::report_invalid_object(invalid, &ctx).await,
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

/// The finalizer-wrapped reconcile of one well-formed resource: add the finalizer first (the
/// patch triggers the next reconcile), clean up before removing it on deletion.
pub async fn reconcile_appstrate(app: Arc<Appstrate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = app.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Appstrate> = Api::namespaced(ctx.client.clone(), &ns);
    let index = app.finalizers().iter().position(|f| f == FINALIZER);
    let deleting = app.metadata.deletion_timestamp.is_some();
    match (index, deleting) {
        (Some(_), false) => apply(&app, &ctx).await,
        (Some(i), true) => {
            // Cleanup must succeed before the finalizer goes, so a failure keeps it.
            let action = finalizer::cleanup(&app, &ctx).await?;
            finalizer::remove_finalizer(&api, &app, i).await?;
            Ok(action)
        }
        (None, false) => {
            finalizer::add_finalizer(&api, &app).await?;
            Ok(Action::await_change())
        }
        (None, true) => Ok(Action::await_change()),
    }
}

/// Parameters of every write that is not a server-side apply: the operator's field manager.
pub fn write_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

pub(crate) fn dyn_api(client: &Client, ns: &str, kind: ChildKind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &kind.api_resource())
}

pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Existing children by kind and name, as listed by the instance labels.
pub(crate) type Existing = BTreeMap<(ChildKind, String), Value>;

/// Lists one kind of child by the instance labels, each item carrying its `apiVersion` and `kind`.
///
/// The API server omits `apiVersion`/`kind` on the items of a list of built-in resources, while
/// a desired object always carries them: without this, every listed child would differ from its
/// desired form.
pub(crate) async fn list_kind(
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
    let existing = list_children(client, &ns, &name).await?;

    // 2 Secrets: create the generated ones that are missing; never update one.
    let secrets = credentials::ensure_generated(app, client, &existing).await?;
    for created in &secrets.created {
        ctx.event_about(
            app,
            EventType::Normal,
            "SecretCreated",
            format!("generated Secret {created}"),
            Some(child_ref(ChildKind::Secret, &ns, created)),
        )
        .await;
        info!(object = %key, secret = %created, "generated secret created");
    }

    // 3 Build, 4 Apply (skipping objects that already match, so an unchanged resource writes
    // nothing). A refused child does not stop the others; it keeps its live form.
    let desired = desired_objects(app);
    let mut applied: BTreeMap<(ChildKind, String), Value> = BTreeMap::new();
    let mut refusals: Vec<(ChildKind, String, String)> = Vec::new();
    let mut refusal_error: Option<Error> = None;
    for obj in &desired {
        let k = (obj.kind, obj.name.clone());
        let current = existing.get(&k);
        if let Some(current) = current.filter(|c| is_subset(&obj.object, c)) {
            applied.insert(k, current.clone());
            continue;
        }
        let child = format!("{}/{}", obj.kind.kind(), obj.name);
        if let Some(message) = current.and_then(|c| shrink_refusal(obj, c)) {
            refusals.push((obj.kind, obj.name.clone(), message.clone()));
            refusal_error.get_or_insert(Error::Refused(format!("{child}: {message}")));
            applied.insert(k, current.cloned().unwrap_or_default());
            continue;
        }
        match dyn_api(client, &ns, obj.kind)
            .patch(&obj.name, &apply_params(), &Patch::Apply(&obj.object))
            .await
        {
            Ok(result) => {
                debug!(object = %key, kind = obj.kind.kind(), child = %obj.name, "applied");
                applied.insert(k, serde_json::to_value(&result)?);
            }
            // Refused (invalid, conflict, forbidden…): say so on the resource, go on with the
            // other children, then back off.
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => {
                warn!(object = %key, %child, message = %s.message, "server-side apply refused");
                refusals.push((obj.kind, obj.name.clone(), s.message.clone()));
                refusal_error.get_or_insert(Error::Apply {
                    child,
                    source: kube::Error::Api(s),
                });
                if let Some(current) = current {
                    applied.insert(k, current.clone());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }

    // 5 Prune: workloads, Services and NetworkPolicies no longer desired; data (PVCs,
    // Secrets) stays, and so does a refused child (it is in `applied` with its live form).
    let mut pruned = Vec::new();
    for ((kind, child), obj) in &existing {
        if kind.holds_data() || applied.contains_key(&(*kind, child.clone())) {
            continue;
        }
        if desired.iter().any(|d| d.kind == *kind && d.name == *child) {
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
    let observed = observe::observe(app, ctx, &ns, &applied, &secrets.problems).await?;

    // 7 Status: a refused child or pods that cannot be created need a person (Failed); lost
    // credentials break a running installation (Degraded).
    let refused_message = (!refusals.is_empty()).then(|| {
        truncate_utf8(
            &refusals
                .iter()
                .map(|(kind, name, m)| format!("{}/{name}: {m}", kind.kind()))
                .collect::<Vec<_>>()
                .join("; "),
            CONDITION_MESSAGE_MAX_BYTES,
        )
    });
    let ready_cond = match &refused_message {
        Some(m) => status::apply_failed_condition(m),
        None => observed.ready.clone(),
    };
    let ready = ready_cond.ok;
    let phase = if refused_message.is_some() || observed.pods_failed {
        Phase::Failed
    } else if observed.credentials_lost {
        Phase::Degraded
    } else {
        status::phase(ready, previous_phase, observed.waiting_for_user_secret)
    };
    let mut conds = observed.conditions.clone();
    conds.push(ready_cond.clone());
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
    if let Some(message) = &refused_message {
        let same_message = previous
            .as_ref()
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == status::READY))
            .is_some_and(|c| c.reason == status::APPLY_FAILED && c.message == *message);
        if !same_message {
            let related = refusals
                .first()
                .map(|(kind, name, _)| child_ref(*kind, &ns, name));
            ctx.event_about(
                app,
                EventType::Warning,
                status::APPLY_FAILED,
                message.clone(),
                related,
            )
            .await;
        }
    }
    if previous_phase != Some(phase) && refused_message.is_none() {
        let (type_, note) = match phase {
            Phase::Ready => (EventType::Normal, "all conditions are true".to_string()),
            Phase::Degraded | Phase::Failed => (EventType::Warning, ready_cond.message.clone()),
            _ => (EventType::Normal, ready_cond.message.clone()),
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

    // 8 Requeue (a refusal backs off through the error policy instead).
    if let Some(e) = refusal_error {
        return Err(e);
    }
    Ok(Action::requeue(if ready {
        ctx.requeue.ready
    } else {
        ctx.requeue.not_ready
    }))
}

/// A reference to a child, as the related object of an Event.
fn child_ref(kind: ChildKind, ns: &str, name: &str) -> ObjectReference {
    let ar = kind.api_resource();
    ObjectReference {
        api_version: Some(ar.api_version),
        kind: Some(ar.kind),
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        ..ObjectReference::default()
    }
}

/// Why the data PVC is not applied: its desired size is below what the live claim already has
/// (the API server refuses to shrink a PVC). Comparing with the live claim, not with the last
/// accepted spec, lets a size whose growth was refused return to the claim's actual size.
fn shrink_refusal(desired: &crate::desired::DesiredObject, current: &Value) -> Option<String> {
    if desired.kind != ChildKind::PersistentVolumeClaim {
        return None;
    }
    let want = desired.object["spec"]["resources"]["requests"]["storage"].as_str()?;
    let requested = current["spec"]["resources"]["requests"]["storage"].as_str();
    let capacity = current["status"]["capacity"]["storage"].as_str();
    // A claim whose expansion failed may go back down to its capacity.
    let floor = match (requested, capacity) {
        (Some(r), Some(c)) if quantity::compare(c, r) == Some(std::cmp::Ordering::Less) => c,
        (Some(r), _) => r,
        (None, Some(c)) => c,
        (None, None) => return None,
    };
    (quantity::compare(want, floor) == Some(std::cmp::Ordering::Less)).then(|| {
        format!(
            "spec.dataVolume.size {want} is smaller than the {floor} the PersistentVolumeClaim {} already has; a claim can only grow: set spec.dataVolume.size to at least {floor}",
            desired.name
        )
    })
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
pub(crate) fn owned_by_other(obj: &Value, app: &Appstrate) -> bool {
    let uid = app.uid().unwrap_or_default();
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["controller"] == true && r["uid"] != json!(uid))
        })
}

pub(crate) async fn write_status(
    app: &Appstrate,
    ctx: &Context,
    st: &AppstrateStatus,
) -> Result<(), Error> {
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

/// Whether every field of `desired` is present with the same value in `current`.
///
/// Arrays must have the same length (so a removed env var or container counts as a change);
/// fields the server added (defaults, status, metadata) are ignored. An empty string matches an
/// absent field, because the API server drops empty strings on write.
pub fn is_subset(desired: &Value, current: &Value) -> bool {
    subset(desired, current, false)
}

/// Maps whose values are quantities, compared by value (`1024Mi` matches the `1Gi` the API
/// server stores, `0.5` matches `500m`).
fn holds_quantities(key: &str) -> bool {
    matches!(key, "requests" | "limits" | "capacity")
}

/// `quantity_map`: `desired` is the value of a [`holds_quantities`] key, whose entries are
/// quantities.
fn subset(desired: &Value, current: &Value, quantity_map: bool) -> bool {
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => d.iter().all(|(k, dv)| match (c.get(k), dv) {
            (Some(Value::String(cv)), Value::String(q)) if quantity_map => quantity::same(q, cv),
            (Some(cv), _) => subset(dv, cv, holds_quantities(k)),
            (None, _) => dv == &Value::String(String::new()),
        }),
        (Value::Array(d), Value::Array(c)) => {
            d.len() == c.len() && d.iter().zip(c).all(|(a, b)| subset(a, b, false))
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
    fn quantities_compare_by_value_only_where_kubernetes_stores_quantities() {
        let desired = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"},
            "limits": {"memory": "1Gi"}}, "env": [{"name": "A", "value": "1024Mi"}]});
        let stored = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"memory": "1Gi"}}, "env": [{"name": "A", "value": "1Gi"}]});
        // The env value is a plain string: its spelling matters.
        assert!(!is_subset(&desired, &stored));
        let stored_env = json!({"resources": stored["resources"].clone(),
            "env": [{"name": "A", "value": "1024Mi"}]});
        assert!(is_subset(&desired, &stored_env));
        let grown = json!({"resources": {"requests": {"cpu": "0.5", "memory": "2Gi"},
            "limits": {"memory": "1Gi"}}, "env": [{"name": "A", "value": "1024Mi"}]});
        assert!(!is_subset(&grown, &stored_env));
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
        let not_found = kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            ..Default::default()
        }));
        assert_eq!(
            Error::RemoveFinalizer(not_found).metric_label(),
            "remove_finalizer"
        );
        assert_eq!(Error::Refused("x".into()).metric_label(), "invalid");
    }
}
