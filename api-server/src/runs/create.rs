//! The creation pipeline (§11.1 steps 5–12), shared by package runs, inline runs and schedules.

use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use sqlx::types::Json;

use super::runtime::{launch, LaunchContext};
use crate::domain::{DomainError, ErrorKind, FieldError, Principal};
use crate::infra::database::models::RunModelRow;
use crate::infra::database::now;
use crate::infra::database::runs::{InsertRunError, NewLog, RunRow};
use crate::packages;
use crate::state::AppState;

/// Which agent a run executes.
pub enum AgentSource {
    /// An installed or system agent package, at an exact version or semver range (`None` = latest).
    Package {
        scope_name: String,
        version: Option<String>,
    },
    /// An agent given inline: a manifest object and its prompt.
    Inline { manifest: Value, prompt: String },
}

pub struct CreateRun {
    pub agent: AgentSource,
    pub input: Value,
    pub model: Option<String>,
    pub schedule_id: Option<String>,
    pub scheduled_for: Option<crate::infra::database::Timestamp>,
}

pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// The effective timeout: the manifest's (or 300 s), clamped to the ceiling.
pub fn effective_timeout(manifest: &Value, ceiling: u64) -> u64 {
    manifest
        .get("timeout")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
        .min(ceiling)
}

/// A fresh per-run sink secret: base64url of 32 random bytes.
fn new_sink_secret() -> String {
    let mut buf = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn too_large(what: &str, limit: u64) -> DomainError {
    DomainError::new(
        ErrorKind::TooLarge,
        "payload_too_large",
        format!("{what} exceeds {limit} bytes (INLINE_RUN_LIMITS)"),
    )
}

/// Validates an inline agent: a strict manifest of type `agent` and a non-empty prompt within the limits.
fn inline_manifest(state: &AppState, manifest: &Value, prompt: &str) -> Result<(), DomainError> {
    let limits = &state.config.inline_run_limits;
    if manifest.to_string().len() as u64 > limits.manifest_bytes {
        return Err(too_large("manifest", limits.manifest_bytes));
    }
    if prompt.len() as u64 > limits.prompt_bytes {
        return Err(too_large("prompt", limits.prompt_bytes));
    }
    let parsed = packages::manifest::validate_manifest(manifest).map_err(|errors| {
        packages::invalid_package(
            errors
                .into_iter()
                .map(|mut e| {
                    if !e.field.starts_with("manifest") {
                        e.field = format!("manifest.{}", e.field);
                    }
                    e
                })
                .collect(),
        )
    })?;
    if parsed.raw.get("type").and_then(Value::as_str) != Some("agent") {
        return Err(packages::invalid_package(vec![FieldError::new(
            "manifest.type",
            "invalid_value",
            "inline runs need an agent manifest",
        )]));
    }
    if prompt.trim().is_empty() {
        return Err(DomainError::validation(vec![FieldError::new(
            "prompt",
            "required",
            "must not be empty",
        )]));
    }
    Ok(())
}

/// Steps 5–12: resolve, validate, gate, insert `pending`, start in the background.
pub async fn create_run(
    state: &AppState,
    auth: &Principal,
    req: CreateRun,
) -> Result<RunRow, DomainError> {
    let app = auth.app()?.clone();
    let config = &state.config;

    // 5. The agent and its version.
    let (manifest, package_id, version_ref, inline) = match &req.agent {
        AgentSource::Package {
            scope_name,
            version,
        } => {
            let resolved =
                packages::resolve_agent(state, auth, scope_name, version.as_deref()).await?;
            (
                resolved.manifest.clone(),
                Some(resolved.package_id.clone()),
                Some(resolved.version.clone()),
                None,
            )
        }
        AgentSource::Inline { manifest, prompt } => {
            inline_manifest(state, manifest, prompt)?;
            (
                manifest.clone(),
                None,
                None,
                Some((manifest.clone(), prompt.clone())),
            )
        }
    };
    let full_name = manifest
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("@inline/agent");
    let (agent_scope, agent_name) = full_name.split_once('/').unwrap_or(("@inline", full_name));

    // 6. Input defaults and validation.
    let input = packages::validate_input(&manifest, &req.input)?;
    let uploads = crate::documents::uploads::check_inputs(
        state,
        &manifest,
        &input,
        &app.id,
        auth.end_user.as_ref().map(|e| e.id.as_str()),
    )
    .await?;

    // 7. The model: run → agent → application → organization → instance default (docs/models.md).
    let model = crate::models::resolve::resolve(
        state,
        &crate::models::resolve::Request {
            org_id: &auth.org_id,
            application_id: &app.id,
            agent_id: package_id.as_deref(),
            run_model: req.model.as_deref(),
        },
    )
    .await?;

    // 8. Integrations and their connections.
    let integrations = packages::run_integrations(state, auth, &manifest).await?;
    let mcp_servers = packages::mcp::run_mcp_servers(state, auth, &manifest).await?;

    // 9. Org gates.
    let limits = &config.platform_run_limits;
    let rate = state
        .infra
        .rate_limiter
        .hit(
            &format!("org-runs:{}", auth.org_id),
            limits.per_org_global_rate_per_min as u32,
            Duration::from_secs(60),
        )
        .await;
    match rate {
        Ok(d) if !d.allowed => {
            return Err(DomainError::new(
                ErrorKind::RateLimited,
                "org_run_rate_limited",
                "The organization started too many runs in the last minute",
            )
            .with_retry_after(d.reset_secs));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "org run-rate gate unavailable; run let through");
            state.metrics.rate_limiter_errors.inc();
        }
    }
    let concurrency = || {
        DomainError::new(
            ErrorKind::RateLimited,
            "org_run_concurrency_exceeded",
            format!(
                "The organization already has {} runs pending or running",
                limits.max_concurrent_per_org
            ),
        )
    };
    if state.infra.db.count_open_runs(&auth.org_id).await? >= limits.max_concurrent_per_org as i64 {
        return Err(concurrency());
    }

    // 10. Runtime availability.
    state.runs.adapter.available().map_err(|reason| {
        DomainError::unavailable(
            "runtime_unavailable",
            format!("Runs cannot start: {reason}"),
        )
    })?;

    // 11. Insert `pending`.
    let at = now();
    let timeout = effective_timeout(&manifest, limits.timeout_ceiling_seconds);
    let output_schema = manifest.pointer("/output/schema").cloned();
    let row = RunRow {
        id: format!("run_{}", uuid::Uuid::new_v4()),
        org_id: auth.org_id.clone(),
        application_id: app.id.clone(),
        package_id: package_id.clone(),
        end_user_id: auth.end_user.as_ref().map(|e| e.id.clone()),
        api_key_id: auth.api_key_id().map(str::to_string),
        schedule_id: req.schedule_id.clone(),
        kind: if inline.is_some() {
            "inline"
        } else {
            "package"
        }
        .into(),
        agent_scope: agent_scope.to_string(),
        agent_name: agent_name.to_string(),
        version_ref,
        run_number: 0,
        status: "pending".into(),
        input: Json(input),
        result: None,
        error: None,
        model_label: Some(model.label.clone()),
        timeout_seconds: timeout as i64,
        started_at: None,
        completed_at: None,
        duration: None,
        created_at: at,
        token_usage: Json(super::verdict::normalize_usage(None)),
        cost: None,
        cost_pricing_status: if model.pricing.is_some() {
            "priced"
        } else {
            "unpriced"
        }
        .into(),
        sink_secret_encrypted: state.keyring.encrypt(new_sink_secret().as_bytes()),
        sink_closed_at: None,
        last_event_sequence: 0,
        last_heartbeat_at: Some(at),
        first_event_at: None,
        boot_deadline_at: Some(
            at + chrono::Duration::seconds(config.run_boot_deadline_seconds as i64),
        ),
        scheduled_for: req.scheduled_for,
        inline_manifest: inline.as_ref().map(|(m, _)| Json(m.clone())),
        inline_prompt: inline.as_ref().map(|(_, p)| p.clone()),
        output_schema: output_schema.map(Json),
        last_output: None,
    };
    let run = match state
        .infra
        .db
        .insert_run(&row, limits.max_concurrent_per_org as i64)
        .await
    {
        Ok(r) => r,
        Err(InsertRunError::ConcurrencyExceeded) => return Err(concurrency()),
        Err(InsertRunError::Db(e)) => return Err(e.into()),
    };
    let run_model = RunModelRow {
        run_id: run.id.clone(),
        source: model.source.as_str().to_string(),
        model_ref: model.model_ref.clone(),
        model_id: model.model_id.clone(),
        pricing: model
            .pricing
            .as_ref()
            .map(|p| Json(crate::models::usage::pricing_json(p))),
    };
    if let Err(e) = state.infra.db.insert_run_model(&run_model).await {
        // Without it, the run's calls are priced as the instance default's.
        tracing::warn!(run_id = %run.id, error = %e, "could not record the run's model");
    }
    state.metrics.runs_created(
        &run.kind,
        if run.schedule_id.is_some() {
            "schedule"
        } else {
            "api"
        },
    );
    breadcrumb(state, &run, "run created").await;
    super::publish_update(state, &run).await;
    if !crate::documents::uploads::attach(state, &uploads, &run.id).await? {
        // Checked above; another run took the upload in between.
        let _ = super::finalize_run(
            state,
            &run.id,
            super::verdict::Outcome::synthetic(
                "failed",
                "An input upload was taken by another run meanwhile; upload the file again",
            ),
        )
        .await;
        return Ok(state.infra.db.get_run(&run.id).await?.unwrap_or(run));
    }

    // 12. Start in the background.
    launch(state.clone(), run.clone(), {
        let (memory_mb, cpus) = super::runtime::agent_resources(
            &manifest,
            limits.agent_memory_ceiling_mb,
            limits.agent_cpu_ceiling,
        );
        LaunchContext {
            integrations,
            model,
            memory_mb,
            cpus,
            mcp_servers,
        }
    });
    Ok(run)
}

/// A platform breadcrumb row (`data.platform = true`), published to subscribers.
pub async fn breadcrumb(state: &AppState, run: &RunRow, message: &str) {
    let log = NewLog {
        log_type: "system".into(),
        level: "info".into(),
        event: "platform".into(),
        message: message.into(),
        data: Some(json!({"platform": true})),
    };
    match state.infra.db.insert_log(&run.id, &log, now()).await {
        Ok(row) => super::publish(state, "run_log", run, super::run_log(&row)).await,
        Err(e) => tracing::warn!(run_id = %run.id, error = %e, "could not write a breadcrumb"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_clamped_not_rejected() {
        assert_eq!(effective_timeout(&json!({}), 1800), 300);
        assert_eq!(effective_timeout(&json!({"timeout": 5000}), 1800), 1800);
        assert_eq!(effective_timeout(&json!({"timeout": 10}), 1800), 10);
    }

    #[test]
    fn sink_secrets_are_43_url_safe_characters() {
        let s = new_sink_secret();
        assert_eq!(s.len(), 43);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
