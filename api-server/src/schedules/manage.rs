//! Managing schedules for a [`Principal`]: create under an agent, list, read, update, delete, and the
//! next occurrences of an expression. The JSON API and the dashboard both call these; bodies have the
//! JSON API's shape, so a field error names the same field on both faces.

use serde_json::{json, Value};

use super::{cron_spec, next_run_at};
use crate::domain::{Credential, DomainError, Fields, Principal};
use crate::infra::database::schedules::{
    ScheduleFilter, ScheduleRow, ACTOR_ADMIN, ACTOR_API_KEY, ACTOR_END_USER, ACTOR_USER,
};
use crate::infra::database::{now, DbError, Page, Paged, Timestamp};
use crate::state::AppState;

/// The editable fields of a create or update body; `None` = absent.
#[derive(Default)]
struct ScheduleBody {
    name: Option<Option<String>>,
    cron_expression: Option<String>,
    timezone: Option<String>,
    input: Option<Value>,
    version_override: Option<Option<String>>,
    enabled: Option<bool>,
}

fn parse_body(body: &Value, create: bool) -> Result<ScheduleBody, DomainError> {
    let mut f = Fields::new(body, "");
    let name = match f.raw("name") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => f.string("name", false, 1, 200).map(Some),
    };
    let cron_expression = f.string("cron_expression", create, 1, 200);
    let timezone = f.string("timezone", false, 1, 100);
    let input = match f.raw("input") {
        None => None,
        Some(Value::Null) if !create => Some(json!({})),
        Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            f.error("input", "invalid_type", "must be an object");
            None
        }
    };
    let version_override = match f.raw("version_override") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => f.string("version_override", false, 1, 100).map(Some),
    };
    let enabled = f.bool("enabled");
    f.finish()?;
    Ok(ScheduleBody {
        name,
        cron_expression,
        timezone,
        input,
        version_override,
        enabled,
    })
}

/// Checks the agent (at `version_override`) and validates `input` against its input schema.
async fn check_agent_and_input(
    state: &AppState,
    p: &Principal,
    package_id: &str,
    version_override: Option<&str>,
    input: &Value,
) -> Result<String, DomainError> {
    let agent = crate::packages::resolve_agent(state, p, package_id, version_override).await?;
    crate::packages::validate_input(&agent.manifest, input)?;
    Ok(agent.package_id)
}

/// Creating or editing a schedule starts runs later, so it needs `agents:run` as well as
/// `schedules:write`.
fn require_write(p: &Principal) -> Result<(), DomainError> {
    p.require_scope("schedules:write")?;
    p.require_scope("agents:run")
}

/// Who a new schedule runs as: the impersonated end-user, the admin token, the API key, or the signed-in
/// user (re-checked at every fire: still a member, with a role that may run agents).
fn actor_type(p: &Principal) -> &'static str {
    match (&p.end_user, &p.credential) {
        (Some(_), _) => ACTOR_END_USER,
        (None, Credential::Admin { .. }) => ACTOR_ADMIN,
        (None, Credential::ApiKey { .. }) => ACTOR_API_KEY,
        (None, Credential::Session { .. }) => ACTOR_USER,
    }
}

/// An edit by a credential other than the schedule's own makes the schedule that credential's: it then
/// fires only while that key or user may (one key or user does not vouch for another). An admin token's
/// edit keeps the creator, except that it claims an admin schedule made before creating tokens were
/// recorded. The end-user actor, if any, stays, and so does its impersonating key when a user edits it.
fn take_over(s: &mut ScheduleRow, p: &Principal) {
    match &p.credential {
        Credential::ApiKey { id, .. } => {
            if s.actor_type == ACTOR_ADMIN
                || s.actor_type == ACTOR_USER
                || s.api_key_id.as_deref() != Some(id.as_str())
            {
                if s.actor_type != ACTOR_END_USER {
                    s.actor_type = ACTOR_API_KEY.into();
                }
                s.api_key_id = Some(id.clone());
                s.admin_token_id = None;
                s.user_id = None;
            }
        }
        Credential::Admin { id } => {
            if s.actor_type == ACTOR_ADMIN && s.admin_token_id.is_none() {
                s.admin_token_id = Some(id.clone());
            }
        }
        Credential::Session { user_id, .. } => {
            if s.actor_type != ACTOR_END_USER && s.user_id.as_deref() != Some(user_id.as_str()) {
                s.actor_type = ACTOR_USER.into();
                s.user_id = Some(user_id.clone());
                s.api_key_id = None;
                s.admin_token_id = None;
            }
        }
    }
}

fn not_found(id: &str) -> DomainError {
    DomainError::not_found(format!("Schedule {id} not found"))
}

fn gone(id: &str) -> impl Fn(DbError) -> DomainError + '_ {
    move |e| match e {
        DbError::NotFound => not_found(id),
        other => other.into(),
    }
}

/// The schedule `id` as the caller may see it: same application, and its own when impersonating.
async fn visible(state: &AppState, p: &Principal, id: &str) -> Result<ScheduleRow, DomainError> {
    let app = p.app()?;
    state
        .infra
        .db
        .get_schedule(&app.id, id)
        .await?
        .filter(|s| match &p.end_user {
            Some(eu) => s.end_user_id.as_deref() == Some(eu.id.as_str()),
            None => true,
        })
        .ok_or_else(|| not_found(id))
}

/// Schedules `package_id` (`@scope/name`) with `body` (`cron_expression`, `timezone`, `input`, `name`,
/// `version_override`, `enabled`).
pub async fn create(
    state: &AppState,
    p: &Principal,
    package_id: &str,
    body: &Value,
) -> Result<ScheduleRow, DomainError> {
    require_write(p)?;
    let app = p.app()?.clone();
    let b = parse_body(body, true)?;
    let cron_expression = b.cron_expression.unwrap_or_default();
    let timezone = b.timezone.unwrap_or_else(|| "UTC".into());
    let spec = cron_spec(&cron_expression, &timezone)?;
    let input = b.input.unwrap_or_else(|| json!({}));
    let version_override = b.version_override.flatten();
    let package_id =
        check_agent_and_input(state, p, package_id, version_override.as_deref(), &input).await?;
    let enabled = b.enabled.unwrap_or(true);
    let at = now();
    let row = ScheduleRow {
        id: format!("sched_{}", uuid::Uuid::new_v4()),
        org_id: p.org_id.clone(),
        application_id: app.id.clone(),
        package_id,
        end_user_id: p.end_user.as_ref().map(|e| e.id.clone()),
        api_key_id: p.api_key_id().map(str::to_string),
        actor_type: actor_type(p).into(),
        admin_token_id: match &p.credential {
            Credential::Admin { id } => Some(id.clone()),
            _ => None,
        },
        name: b.name.flatten(),
        enabled,
        cron_expression,
        timezone,
        input: sqlx::types::Json(input),
        version_override,
        last_run_at: None,
        next_run_at: next_run_at(&spec, enabled),
        created_at: at,
        updated_at: at,
        disabled_reason: None,
        user_id: p.user_id().map(str::to_string),
    };
    Ok(state.infra.db.insert_schedule(&row).await?)
}

/// One page of the application's schedules (of one agent when `package_id` is given).
pub async fn list(
    state: &AppState,
    p: &Principal,
    package_id: Option<String>,
    page: &Page,
) -> Result<Paged<ScheduleRow>, DomainError> {
    p.require_scope("schedules:read")?;
    let app = p.app()?;
    let filter = ScheduleFilter {
        package_id,
        end_user_id: p.end_user.as_ref().map(|e| e.id.clone()),
    };
    Ok(state
        .infra
        .db
        .list_schedules(&app.id, &filter, page)
        .await?)
}

pub async fn get(state: &AppState, p: &Principal, id: &str) -> Result<ScheduleRow, DomainError> {
    p.require_scope("schedules:read")?;
    visible(state, p, id).await
}

/// Updates the fields present in `body`; `next_run_at` is recomputed.
pub async fn update(
    state: &AppState,
    p: &Principal,
    id: &str,
    body: &Value,
) -> Result<ScheduleRow, DomainError> {
    require_write(p)?;
    let mut s = visible(state, p, id).await?;
    let b = parse_body(body, false)?;
    take_over(&mut s, p);
    if let Some(name) = b.name {
        s.name = name;
    }
    if let Some(c) = b.cron_expression {
        s.cron_expression = c;
    }
    if let Some(tz) = b.timezone {
        s.timezone = tz;
    }
    let spec = cron_spec(&s.cron_expression, &s.timezone)?;
    // The agent and input are checked again when they change, so that a schedule whose agent is gone can
    // still be renamed, disabled or enabled (its next fire then records why it cannot run).
    let recheck = b.version_override.is_some() || b.input.is_some();
    if let Some(v) = b.version_override {
        s.version_override = v;
    }
    if let Some(input) = b.input {
        s.input = sqlx::types::Json(input);
    }
    if recheck {
        check_agent_and_input(
            state,
            p,
            &s.package_id,
            s.version_override.as_deref(),
            &s.input.0,
        )
        .await?;
    }
    if let Some(enabled) = b.enabled {
        s.enabled = enabled;
        // Enabled again, or disabled by the caller: the platform's reason no longer applies.
        s.disabled_reason = None;
    }
    s.next_run_at = next_run_at(&spec, s.enabled);
    s.updated_at = now();
    state.infra.db.update_schedule(&s).await.map_err(gone(id))
}

pub async fn delete(state: &AppState, p: &Principal, id: &str) -> Result<(), DomainError> {
    p.require_scope("schedules:write")?;
    let s = visible(state, p, id).await?;
    state
        .infra
        .db
        .delete_schedule(&s.application_id, &s.id)
        .await
        .map_err(gone(id))
}

/// The next `count` occurrences of `cron_expression` in `timezone` after now (at most 20), for a preview
/// before saving.
pub fn next_occurrences(
    cron_expression: &str,
    timezone: &str,
    count: usize,
) -> Result<Vec<Timestamp>, DomainError> {
    let spec = cron_spec(cron_expression, timezone)?;
    let mut out = Vec::new();
    let mut after = now();
    while out.len() < count.min(20) {
        match spec.next_after(after) {
            Some(t) => {
                out.push(t);
                after = t;
            }
            None => break,
        }
    }
    Ok(out)
}
