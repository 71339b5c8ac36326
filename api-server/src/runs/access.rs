//! Reading and cancelling one run as a principal sees it, shared by every face.

use super::verdict::Outcome;
use crate::domain::{DomainError, Principal};
use crate::infra::database::runs::RunRow;
use crate::state::AppState;

/// The run `id` as the caller may see it: same application, and the caller's own when impersonating.
/// Anything else is `NotFound`, so ids of other tenants are not confirmed.
pub async fn visible_run(
    state: &AppState,
    auth: &Principal,
    id: &str,
) -> Result<RunRow, DomainError> {
    let app = auth.app()?;
    let run = state
        .infra
        .db
        .get_run(id)
        .await?
        .filter(|r| r.application_id == app.id)
        .filter(|r| match &auth.end_user {
            Some(eu) => r.end_user_id.as_deref() == Some(eu.id.as_str()),
            None => true,
        })
        .ok_or_else(|| DomainError::not_found(format!("Run {id} not found")))?;
    Ok(run)
}

/// Cancels a pending or running run (`runs:cancel`); 409 `not_cancellable` once it has ended, also when
/// it ended on its own while being cancelled.
pub async fn cancel_run(
    state: &AppState,
    auth: &Principal,
    id: &str,
) -> Result<RunRow, DomainError> {
    auth.require_scope("runs:cancel")?;
    let run = visible_run(state, auth, id).await?;
    let not_cancellable = |status: &str| {
        DomainError::conflict("not_cancellable", format!("Run {id} is already {status}"))
    };
    if run.is_terminal() {
        return Err(not_cancellable(&run.status));
    }
    super::stop_run(
        state,
        id,
        Outcome::synthetic("cancelled", "Cancelled by user"),
    )
    .await
    .map_err(DomainError::internal)?;
    let fresh = state
        .infra
        .db
        .get_run(id)
        .await?
        .ok_or_else(|| DomainError::not_found("Run not found"))?;
    if fresh.status != "cancelled" {
        // It finished on its own first.
        return Err(not_cancellable(&fresh.status));
    }
    Ok(fresh)
}
