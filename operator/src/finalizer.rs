//! The finalizer `appstrates.appstrate.dev/cleanup`: adding and removing it, the cleanup that
//! runs before it goes, and resources too malformed to reconcile.

use kube::api::{Api, DeleteParams, Patch};
use kube::core::error_boundary::InvalidObject;
use kube::core::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::desired::ChildKind;
use crate::reconcile::{
    apply_params, dyn_api, is_terminating, list_kind, now, object_key, owned_by_other,
    write_params, write_status, Context, Error,
};
use crate::status;
use crate::v1alpha1::{Appstrate, DeletionPolicy, Phase, FINALIZER};

/// Adds the finalizer with a JSON patch whose `test` fails when someone changed the finalizers
/// meanwhile (the API server does not deduplicate them).
pub(crate) async fn add_finalizer(api: &Api<Appstrate>, app: &Appstrate) -> Result<(), Error> {
    let ops = if app.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": app.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    api.patch(
        &app.name_any(),
        &write_params(),
        &Patch::<()>::Json(serde_json::from_value(ops)?),
    )
    .await
    .map_err(Error::AddFinalizer)?;
    Ok(())
}

/// Removes the finalizer at `index` (the `test` keeps another controller's finalizer safe). A
/// 404 means the resource is already gone, which is what removing the finalizer was for.
pub(crate) async fn remove_finalizer(
    api: &Api<Appstrate>,
    app: &Appstrate,
    index: usize,
) -> Result<(), Error> {
    let path = format!("/metadata/finalizers/{index}");
    let ops = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    match api
        .patch(
            &app.name_any(),
            &write_params(),
            &Patch::<()>::Json(serde_json::from_value(ops)?),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            debug!(object = %object_key(&app.metadata), "resource already gone when removing the finalizer");
            Ok(())
        }
        Err(e) => Err(Error::RemoveFinalizer(e)),
    }
}

/// Cleanup before the finalizer is removed: data goes only with `deletionPolicy: Delete`.
pub(crate) async fn cleanup(app: &Appstrate, ctx: &Context) -> Result<Action, Error> {
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
        ChildKind::NetworkPolicy,
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
pub(crate) async fn report_invalid_object(
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
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
            api.patch(&name, &write_params(), &Patch::Merge(&patch))
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
