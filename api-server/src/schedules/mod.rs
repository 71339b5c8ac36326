//! Schedules (§18): cron evaluation, the schedule DTO, and the cron clock's tick that fires due occurrences
//! as runs through the creation pipeline, as the actor fixed at creation. No axum types here.

pub mod cron;
pub mod manage;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::types::Json;

use crate::domain::{Credential, DomainError, Principal};
use crate::infra::database::runs::{InsertRunError, RunRow};
use crate::infra::database::schedules::{ScheduleRow, ACTOR_ADMIN, ACTOR_END_USER, ACTOR_USER};
use crate::infra::database::{now, Timestamp};
use crate::infra::queue::{CronTick, Job, JobHandler};
use crate::runs::create::{create_run, effective_timeout, AgentSource, CreateRun};
use crate::state::AppState;

pub use cron::{CronSpec, CronSpecError, MAX_FIRES_PER_POLL};

/// The schedule DTO (§18.1).
pub fn schedule_dto(s: &ScheduleRow) -> Value {
    json!({
        "id": s.id,
        "packageId": s.package_id,
        "applicationId": s.application_id,
        "endUserId": s.end_user_id,
        "name": s.name,
        "enabled": s.enabled,
        "cron_expression": s.cron_expression,
        "timezone": s.timezone,
        "input": s.input.0,
        "version_override": s.version_override,
        "last_run_at": s.last_run_at,
        "next_run_at": s.next_run_at,
        "disabled_reason": s.disabled_reason,
        "createdAt": s.created_at,
        "updatedAt": s.updated_at,
    })
}

/// Parses the expression and zone, mapping failures to 400 `invalid_cron` / `invalid_timezone`.
pub fn cron_spec(cron_expression: &str, timezone: &str) -> Result<CronSpec, DomainError> {
    CronSpec::new(cron_expression, timezone).map_err(|e| match e {
        CronSpecError::Cron(m) => {
            DomainError::bad_request("invalid_cron", format!("cron_expression: {m}"))
                .with_param("cron_expression")
        }
        CronSpecError::Timezone(m) => {
            DomainError::bad_request("invalid_timezone", format!("timezone: {m}"))
                .with_param("timezone")
        }
    })
}

/// `next_run_at` of a schedule: the first occurrence strictly after now, or none while disabled.
pub fn next_run_at(spec: &CronSpec, enabled: bool) -> Option<Timestamp> {
    if enabled {
        spec.next_after(now())
    } else {
        None
    }
}

/// Why a schedule cannot fire as its actor any more.
enum ActorGone {
    /// The actor (application or end-user) is gone: the occurrence records a failed run.
    Actor(String),
    /// The credential that made (or last took over) the schedule no longer exists, was revoked, expired
    /// or cannot start runs: the occurrence is skipped, without a run.
    Credential(String),
}

/// Rebuilds the actor fixed at creation: its application, its credential (re-checked at every fire: it
/// must exist, be unrevoked and unexpired, and an API key must still hold `agents:run`) and its end-user.
async fn actor(state: &AppState, s: &ScheduleRow) -> anyhow::Result<Result<Principal, ActorGone>> {
    let db = &state.infra.db;
    let Some(app) = db.get_application(&s.org_id, &s.application_id).await? else {
        return Ok(Err(ActorGone::Actor(
            "The schedule's application no longer exists".into(),
        )));
    };
    let mut end_user = None;
    if s.actor_type == ACTOR_END_USER {
        let found = match &s.end_user_id {
            Some(id) => db.get_end_user(&s.application_id, id).await?,
            None => None,
        };
        match found {
            Some(eu) => end_user = Some(eu),
            None => {
                return Ok(Err(ActorGone::Actor(
                    "The schedule's end-user was deleted; the schedule is disabled".into(),
                )))
            }
        }
    }
    let credential = match credential(state, s).await? {
        Ok(c) => c,
        Err(reason) => return Ok(Err(ActorGone::Credential(reason))),
    };
    Ok(Ok(Principal {
        org_id: s.org_id.clone(),
        credential,
        application: Some(app),
        end_user,
    }))
}

/// The schedule's credential, if it may still start runs; else why not.
async fn credential(
    state: &AppState,
    s: &ScheduleRow,
) -> anyhow::Result<Result<Credential, String>> {
    let db = &state.infra.db;
    if s.actor_type == ACTOR_ADMIN {
        let Some(id) = &s.admin_token_id else {
            return Ok(Err(
                "The schedule was created by an admin token before creating tokens were recorded; \
                 an edit by an admin token or an API key with agents:run makes it theirs"
                    .into(),
            ));
        };
        return Ok(match db.get_admin_token_by_id(id).await? {
            Some(t) if t.revoked_at.is_none() && t.org_id == s.org_id => {
                Ok(Credential::Admin { id: t.id })
            }
            Some(_) => Err("The schedule's admin token was revoked".into()),
            None => Err("The schedule's admin token no longer exists".into()),
        });
    }
    if s.actor_type == ACTOR_USER {
        return user_credential(state, s).await;
    }
    let key = match &s.api_key_id {
        Some(id) => db.get_api_key_by_id(id).await?,
        None => None,
    };
    let at = now();
    Ok(match key {
        None => Err("The schedule's API key no longer exists".into()),
        Some(k) if k.revoked_at.is_some() => Err("The schedule's API key was revoked".into()),
        Some(k) if k.expires_at.is_some_and(|e| e <= at) => {
            Err("The schedule's API key expired".into())
        }
        Some(k) if k.application_id != s.application_id => {
            Err("The schedule's API key belongs to another application".into())
        }
        Some(k) => match crate::people::orgs::effective_key_scopes(db.as_ref(), &k).await? {
            None => Err(
                "The schedule's API key was created by a user who has left the organization".into(),
            ),
            Some(scopes) if !scopes.iter().any(|sc| sc == "agents:run") => Err(if k
                .created_by
                .is_some()
            {
                "The schedule's API key lacks the agents:run scope (its creator's role no longer \
                     allows running agents)"
            } else {
                "The schedule's API key lacks the agents:run scope"
            }
            .into()),
            Some(scopes) => Ok(Credential::ApiKey {
                id: k.id,
                application_id: k.application_id,
                scopes,
            }),
        },
    })
}

/// The credential of a schedule made by a signed-in user: the user's current role in the organization,
/// if it may still run agents.
async fn user_credential(
    state: &AppState,
    s: &ScheduleRow,
) -> anyhow::Result<Result<Credential, String>> {
    let Some(user_id) = &s.user_id else {
        return Ok(Err("The schedule's user was deleted".into()));
    };
    let role = state
        .infra
        .db
        .member_role(&s.org_id, user_id)
        .await?
        .and_then(|r| r.parse::<crate::people::Role>().ok());
    Ok(match role {
        None => Err("The schedule's user has left the organization".into()),
        Some(role) if !role.allows("agents:run") => Err(format!(
            "The schedule's user can no longer run agents (their role is {role})"
        )),
        Some(role) => Ok(Credential::Session {
            user_id: user_id.clone(),
            session_id: format!("schedule:{}", s.id),
            role,
        }),
    })
}

/// What one fire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// A run was created (`pending`).
    Started(String),
    /// The preflight failed: a `failed` run records the error.
    Failed(String),
    /// This occurrence already has a run.
    Duplicate,
    /// The schedule's credential can no longer start runs: nothing ran, and the schedule was disabled
    /// with this reason.
    Skipped(String),
}

/// The creation-pipeline errors after which the schedule is disabled: its agent is gone.
fn disables(e: &DomainError) -> bool {
    e.code == "agent_not_found"
}

fn is_duplicate(e: &DomainError) -> bool {
    e.code == "conflict"
}

/// Why an occurrence did not start a run.
enum NotStarted {
    /// This occurrence already has a run.
    Duplicate,
    /// The preflight failed; `disable` when the schedule's actor or agent is gone.
    Failed { reason: String, disable: bool },
    /// The schedule's credential is gone: no run, and the schedule is disabled.
    CredentialGone(String),
}

/// Fires one occurrence of `s`.
pub async fn fire(state: &AppState, s: &ScheduleRow, scheduled_for: Timestamp) -> FireOutcome {
    match try_fire(state, s, scheduled_for).await {
        Ok(run_id) => FireOutcome::Started(run_id),
        Err(NotStarted::Duplicate) => FireOutcome::Duplicate,
        Err(NotStarted::CredentialGone(reason)) => {
            tracing::warn!(
                schedule_id = %s.id,
                scheduled_for = %scheduled_for,
                reason = %reason,
                "scheduled occurrence skipped: its credential can no longer start runs"
            );
            disable(state, s, &reason).await;
            FireOutcome::Skipped(reason)
        }
        Err(NotStarted::Failed {
            reason,
            disable: off,
        }) => {
            if off {
                disable(state, s, &reason).await;
            }
            record_failed(state, s, scheduled_for, &reason).await
        }
    }
}

async fn disable(state: &AppState, s: &ScheduleRow, reason: &str) {
    tracing::warn!(schedule_id = %s.id, reason = %reason, "schedule disabled");
    if let Err(e) = state.infra.db.disable_schedule(&s.id, now(), reason).await {
        tracing::warn!(schedule_id = %s.id, error = %e, "could not disable a schedule");
    }
}

async fn try_fire(
    state: &AppState,
    s: &ScheduleRow,
    scheduled_for: Timestamp,
) -> Result<String, NotStarted> {
    let auth = match actor(state, s).await {
        Ok(Ok(a)) => a,
        Ok(Err(ActorGone::Actor(reason))) => {
            return Err(NotStarted::Failed {
                reason,
                disable: true,
            })
        }
        Ok(Err(ActorGone::Credential(reason))) => return Err(NotStarted::CredentialGone(reason)),
        Err(e) => {
            return Err(NotStarted::Failed {
                reason: format!("Could not resolve the schedule's actor: {e}"),
                disable: false,
            })
        }
    };
    let req = CreateRun {
        agent: AgentSource::Package {
            scope_name: s.package_id.clone(),
            version: s.version_override.clone(),
        },
        input: s.input.0.clone(),
        model: None,
        schedule_id: Some(s.id.clone()),
        scheduled_for: Some(scheduled_for),
    };
    match create_run(state, &auth, req).await {
        Ok(run) => Ok(run.id),
        Err(e) if is_duplicate(&e) => Err(NotStarted::Duplicate),
        Err(e) => Err(NotStarted::Failed {
            reason: error_text(&e),
            disable: disables(&e),
        }),
    }
}

/// The run error of a failed preflight: the problem detail, with the field errors of a validation failure.
fn error_text(e: &DomainError) -> String {
    match &e.errors {
        Some(errors) if !errors.is_empty() => {
            let fields: Vec<String> = errors
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect();
            format!("{} ({})", e.detail, fields.join("; "))
        }
        _ => e.detail.clone(),
    }
}

/// Inserts a `failed` run carrying `reason` for an occurrence whose preflight failed (§11.2).
async fn record_failed(
    state: &AppState,
    s: &ScheduleRow,
    scheduled_for: Timestamp,
    reason: &str,
) -> FireOutcome {
    let at = now();
    let (scope, name) = s.package_id.split_once('/').unwrap_or(("", &s.package_id));
    let row = RunRow {
        id: format!("run_{}", uuid::Uuid::new_v4()),
        org_id: s.org_id.clone(),
        application_id: s.application_id.clone(),
        package_id: Some(s.package_id.clone()),
        end_user_id: s.end_user_id.clone(),
        api_key_id: s.api_key_id.clone(),
        schedule_id: Some(s.id.clone()),
        kind: "package".into(),
        agent_scope: scope.to_string(),
        agent_name: name.to_string(),
        version_ref: s.version_override.clone(),
        run_number: 0,
        status: "failed".into(),
        input: s.input.clone(),
        result: None,
        error: None,
        model_label: state.config.llm.as_ref().map(|l| l.model.clone()),
        timeout_seconds: effective_timeout(
            &json!({}),
            state.config.platform_run_limits.timeout_ceiling_seconds,
        ) as i64,
        started_at: None,
        completed_at: None,
        duration: None,
        created_at: at,
        token_usage: Json(crate::runs::verdict::normalize_usage(None)),
        cost: None,
        cost_pricing_status: "unpriced".into(),
        sink_secret_encrypted: state
            .keyring
            .encrypt(uuid::Uuid::new_v4().to_string().as_bytes()),
        sink_closed_at: None,
        last_event_sequence: 0,
        last_heartbeat_at: None,
        first_event_at: None,
        boot_deadline_at: None,
        scheduled_for: Some(scheduled_for),
        inline_manifest: None,
        inline_prompt: None,
        output_schema: None,
        last_output: None,
    };
    // A failed run is not open, so the concurrency bound does not apply to it.
    let run = match state.infra.db.insert_run(&row, i64::MAX).await {
        Ok(r) => r,
        Err(InsertRunError::Db(crate::infra::database::DbError::Conflict(_))) => {
            return FireOutcome::Duplicate
        }
        Err(e) => {
            tracing::error!(schedule_id = %s.id, error = ?e, "could not record a failed scheduled run");
            return FireOutcome::Failed(reason.to_string());
        }
    };
    let fin = crate::infra::database::runs::Finalization {
        status: "failed".into(),
        result: None,
        error: Some(reason.to_string()),
        completed_at: at,
        duration_ms: Some(0),
        token_usage: run.token_usage.0.clone(),
        cost: None,
        cost_pricing_status: run.cost_pricing_status.clone(),
    };
    if let Err(e) = state.infra.db.finalize_run(&run.id, &fin).await {
        tracing::error!(run_id = %run.id, error = %e, "could not record a scheduled run's error");
    }
    state.metrics.runs_created("package", "schedule");
    tracing::warn!(schedule_id = %s.id, run_id = %run.id, reason, "scheduled run failed before starting");
    if let Ok(Some(run)) = state.infra.db.get_run(&run.id).await {
        crate::runs::publish_update(state, &run).await;
        crate::webhooks::emit(state, &run, "run.failed").await;
    }
    FireOutcome::Failed(reason.to_string())
}

/// Fires every due occurrence of one schedule in `(after, until]` (never one before its `next_run_at`, so
/// nothing from before its creation, last update or enable) and records `last_run_at` / `next_run_at`.
pub async fn tick_schedule(
    state: &AppState,
    s: &ScheduleRow,
    after: Timestamp,
    until: Timestamp,
) -> Vec<FireOutcome> {
    let spec = match CronSpec::new(&s.cron_expression, &s.timezone) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(schedule_id = %s.id, error = ?e, "schedule has an invalid cron or timezone");
            return Vec::new();
        }
    };
    let Some(due_from) = s.next_run_at else {
        return Vec::new();
    };
    // Occurrences at or after `next_run_at`: start the window just before it when it is later than `after`.
    let lower = after.max(due_from - chrono::Duration::microseconds(1));
    let (times, coalesced) = spec.occurrences(lower, until, MAX_FIRES_PER_POLL);
    if coalesced > 0 {
        tracing::warn!(
            schedule_id = %s.id,
            coalesced,
            fired = times.len(),
            "more occurrences than allowed in one poll; the oldest were coalesced"
        );
    }
    let mut out = Vec::new();
    for at in &times {
        let outcome = fire(state, s, *at).await;
        let skipped = matches!(outcome, FireOutcome::Skipped(_));
        out.push(outcome);
        if skipped {
            // Disabled: no later occurrence fires, and a skipped one is not a run.
            return out;
        }
    }
    // The first occurrence after the window just covered: the next poll starts there.
    let next = spec.next_after(until);
    let db = &state.infra.db;
    let written = match times.last() {
        Some(last) => db.mark_schedule_fired(&s.id, *last, next).await,
        None if due_from <= until => db.set_schedule_next_run(&s.id, next).await,
        None => Ok(()),
    };
    if let Err(e) = written {
        tracing::warn!(schedule_id = %s.id, error = %e, "could not record a schedule fire");
    }
    out
}

/// The cron clock's handler: evaluates every enabled schedule over the window the queue hands it.
///
/// Exactly-once firing across instances rests on two layers:
/// - the queue decides who evaluates which window. LocalQueue has one instance. RedisQueue (Tier 2) lets
///   one instance at a time hold the shared clock and hands out contiguous, non-overlapping windows, so two
///   instances never evaluate the same occurrence concurrently (and never race on `next_run_at`);
/// - the database makes a repeated fire a no-op: runs are unique on `(schedule_id, scheduled_for)`, so when
///   a window is covered again (its holder died mid-tick and the lease expired), occurrences that already
///   have a run come back as [`FireOutcome::Duplicate`] instead of starting a second run.
pub struct Scheduler {
    pub state: AppState,
}

#[async_trait]
impl CronTick for Scheduler {
    async fn tick(&self, after: Timestamp, until: Timestamp) {
        let schedules = match self.state.infra.db.enabled_schedules().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not list schedules");
                return;
            }
        };
        for s in &schedules {
            if self.state.is_shutting_down() {
                return;
            }
            tick_schedule(&self.state, s, after, until).await;
        }
    }
}

/// The queue's job handler. Job kinds are registered here as features add them.
pub struct Jobs {
    pub state: AppState,
}

#[async_trait]
impl JobHandler for Jobs {
    async fn handle(&self, job: Job) -> anyhow::Result<()> {
        match job.kind.as_str() {
            crate::webhooks::JOB_KIND => {
                let delivery: crate::webhooks::DeliveryJob = serde_json::from_value(job.payload)
                    .map_err(|e| anyhow::anyhow!("malformed webhook job: {e}"))?;
                crate::webhooks::deliver(&self.state, delivery).await
            }
            other => {
                tracing::warn!(kind = %other, "unknown job kind; dropped");
                Ok(())
            }
        }
    }
}

/// Starts the queue: its delayed jobs and the cron clock that fires schedules.
pub async fn start(state: &AppState) {
    state
        .infra
        .queue
        .start(
            Arc::new(Jobs {
                state: state.clone(),
            }),
            Arc::new(Scheduler {
                state: state.clone(),
            }),
        )
        .await;
}
