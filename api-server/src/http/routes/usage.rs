//! `GET /api/usage`: the usage ledger's totals over a date range (docs/models.md).

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::infra::database::models::UsageFilter;
use crate::models;
use crate::state::AppState;

fn parse_time(v: &str, param: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(ApiError::invalid_request(format!(
        "{param} must be an RFC 3339 time (2026-01-31T00:00:00Z) or a date (2026-01-31)"
    ))
    .with_param(param))
}

#[utoipa::path(get, path = "/api/usage", tag = "models",
    operation_id = "getUsage", summary = "Model usage and cost over a date range, per run, agent, application, model or organization",
    params(("from" = Option<String>, Query, description = "Start (inclusive); RFC 3339 or YYYY-MM-DD; default 30 days ago"),
        ("to" = Option<String>, Query, description = "End (exclusive); default now"),
        ("groupBy" = Option<String>, Query, description = "organization (default), application, agent, run or model"),
        ("applicationId" = Option<String>, Query), ("agentId" = Option<String>, Query), ("runId" = Option<String>, Query)),
    responses((status = 200, body = crate::models::usage::UsageReport), (status = 400), (status = 403)))]
pub async fn usage(
    State(state): State<AppState>,
    Extension(auth): Extension<Auth>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    auth.require_permission("usage:read")?;
    let mut from = None;
    let mut to = None;
    let mut group = crate::infra::database::models::UsageGroup::Organization;
    let mut filter = UsageFilter {
        from: chrono::Utc::now(),
        to: chrono::Utc::now(),
        application_id: None,
        agent_id: None,
        run_id: None,
    };
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "from" => from = Some(parse_time(&v, "from")?),
            "to" => to = Some(parse_time(&v, "to")?),
            "groupBy" => {
                group = models::usage::GROUPS
                    .iter()
                    .find(|(n, _)| *n == v)
                    .map(|(_, g)| *g)
                    .ok_or_else(|| {
                        ApiError::invalid_request(
                            "groupBy must be organization, application, agent, run or model",
                        )
                        .with_param("groupBy")
                    })?
            }
            "applicationId" => filter.application_id = Some(v),
            "agentId" => filter.agent_id = Some(v),
            "runId" => filter.run_id = Some(v),
            other => {
                return Err(
                    ApiError::invalid_request(format!("Unknown query parameter {other}"))
                        .with_param(other),
                )
            }
        }
    }
    filter.to = to.unwrap_or_else(chrono::Utc::now);
    filter.from = from.unwrap_or(filter.to - chrono::Duration::days(30));
    if filter.from >= filter.to {
        return Err(ApiError::invalid_request("from must be before to").with_param("from"));
    }
    Ok(Json(models::usage::report(&state, &auth.org_id, filter, group).await?).into_response())
}
