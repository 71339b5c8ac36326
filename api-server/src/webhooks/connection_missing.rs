//! `run.connection_missing`: a run refused before it exists because a required connection is missing or
//! needs a reconnect (docs/connections.md). The event's object is the connection, not a run.

use std::time::Duration;

use serde_json::json;

use super::DeliveryJob;
use crate::infra::database::now;
use crate::state::AppState;

/// A run refused for a missing (or to-be-reconnected) connection.
pub struct ConnectionMissing<'a> {
    pub application_id: &'a str,
    /// The agent's `@scope/name` (`None` for an inline run).
    pub agent_id: Option<&'a str>,
    pub integration: &'a str,
    pub auth_key: &'a str,
    pub end_user_id: Option<&'a str>,
    /// `missing_integration_connection` or `connection_needs_reconnect`
    pub code: &'a str,
    pub message: &'a str,
}

/// Queues `run.connection_missing` for every enabled webhook of the application that subscribes to it
/// (and, when it is scoped to a package, for that agent). `data.object` is the refused connection.
pub async fn emit_connection_missing(state: &AppState, m: &ConnectionMissing<'_>) {
    const EVENT: &str = "run.connection_missing";
    let hooks = match state.infra.db.enabled_webhooks(m.application_id).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "could not list webhooks");
            return;
        }
    };
    let event_id = format!("evt_{}", uuid::Uuid::new_v4());
    let body = json!({
        "id": event_id,
        "object": "event",
        "type": EVENT,
        "created": now().timestamp(),
        "data": {"object": {
            "object": "connection",
            "packageId": m.integration,
            "authKey": m.auth_key,
            "agentId": m.agent_id,
            "endUserId": m.end_user_id,
            "code": m.code,
            "message": m.message,
        }},
    })
    .to_string();
    for hook in hooks.iter().filter(|h| {
        h.enabled
            && h.event_types().iter().any(|e| e == EVENT)
            && h.package_id
                .as_deref()
                .is_none_or(|p| Some(p) == m.agent_id)
    }) {
        let job = DeliveryJob {
            webhook_id: hook.id.clone(),
            event_id: event_id.clone(),
            event_type: EVENT.to_string(),
            body: body.clone(),
            attempt: 1,
        };
        if let Err(e) = state
            .infra
            .queue
            .enqueue_delayed(job.job(), Duration::ZERO)
            .await
        {
            tracing::warn!(webhook_id = %hook.id, error = %e, "could not queue a webhook delivery");
        }
    }
}
