//! The usage ledger (docs/models.md): one row per model call, priced at the time of the call, and its
//! totals per run, agent, application, model or organization over a date range.
//!
//! The runner reports cumulative usage after every model response (`appstrate.metric`), so the
//! difference with what the run had stored is exactly one call. A finalize that reports more than the
//! last metric adds one row for the rest.

use serde::Serialize;
use serde_json::{json, Value};

use super::{row_pricing, ModelsError};
use crate::config::LlmPricing;
use crate::infra::database::models::{NewUsage, UsageFilter, UsageGroup, UsageTotalRow};
use crate::infra::database::now;
use crate::infra::database::runs::RunRow;
use crate::runs::verdict;
use crate::state::AppState;

/// Tokens by kind: input, output, cache read, cache write.
fn counters(usage: &Value) -> [i64; 4] {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0) as i64;
    [
        n("input_tokens"),
        n("output_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    ]
}

/// The tokens of the call between two cumulative usages; `None` when nothing was added.
pub fn call_tokens(stored: &Value, cumulative: &Value) -> Option<[i64; 4]> {
    let (a, b) = (counters(stored), counters(cumulative));
    let d = [
        (b[0] - a[0]).max(0),
        (b[1] - a[1]).max(0),
        (b[2] - a[2]).max(0),
        (b[3] - a[3]).max(0),
    ];
    (d.iter().sum::<i64>() > 0).then_some(d)
}

/// The price of one call's tokens, or `None` without prices.
pub fn call_cost(tokens: [i64; 4], pricing: Option<&LlmPricing>) -> Option<f64> {
    let usage = json!({
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cache_read_input_tokens": tokens[2],
        "cache_creation_input_tokens": tokens[3],
    });
    verdict::cost(&usage, pricing).0
}

fn pricing_from_json(v: &Value) -> Option<LlmPricing> {
    Some(LlmPricing {
        input: v.get("input")?.as_f64()?,
        output: v.get("output")?.as_f64()?,
        cache_read: v.get("cache_read").and_then(Value::as_f64),
        cache_write: v.get("cache_write").and_then(Value::as_f64),
    })
}

pub fn pricing_json(p: &LlmPricing) -> Value {
    json!({"input": p.input, "output": p.output, "cache_read": p.cache_read, "cache_write": p.cache_write})
}

/// The model and the prices of `run` now: the organization model's current prices, or the ones it had
/// when the run was created if it was deleted since; the instance default is priced by `LLM_PRICING`.
async fn current_pricing(
    state: &AppState,
    run: &RunRow,
) -> (Option<String>, String, Option<LlmPricing>) {
    let fallback_id = run.model_label.clone().unwrap_or_default();
    let rm = match state.infra.db.get_run_model(&run.id).await {
        Ok(rm) => rm,
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "the run's model could not be read; priced as the instance default");
            None
        }
    };
    let Some(rm) = rm else {
        return (None, fallback_id, state.config.llm_pricing);
    };
    let snapshot = rm.pricing.as_ref().and_then(|p| pricing_from_json(&p.0));
    let pricing = match &rm.model_ref {
        None => snapshot,
        Some(r) => match state.infra.db.get_model(&run.org_id, r).await {
            Ok(Some(m)) => row_pricing(&m),
            Ok(None) => snapshot,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "the model's prices could not be read; priced as at run creation");
                snapshot
            }
        },
    };
    (rm.model_ref, rm.model_id, pricing)
}

/// The ledger row of the call that brought `run` from its stored usage to `cumulative`, if any.
pub async fn call_entry(state: &AppState, run: &RunRow, cumulative: &Value) -> Option<NewUsage> {
    let tokens = call_tokens(&run.token_usage.0, cumulative)?;
    let (model_ref, model_id, pricing) = current_pricing(state, run).await;
    Some(NewUsage {
        org_id: run.org_id.clone(),
        application_id: run.application_id.clone(),
        run_id: run.id.clone(),
        agent_id: format!("{}/{}", run.agent_scope, run.agent_name),
        model_ref,
        model_id,
        input_tokens: tokens[0],
        output_tokens: tokens[1],
        cache_read_tokens: tokens[2],
        cache_write_tokens: tokens[3],
        cost: call_cost(tokens, pricing.as_ref()),
        created_at: now(),
    })
}

/// The run's cost after `entry`: the sum of its priced calls. A run created with prices reports a cost
/// (0 before any call); one without reports none until a priced call is made.
pub fn run_cost(run: &RunRow, entry: Option<&NewUsage>) -> (Option<f64>, &'static str) {
    let added = entry.and_then(|e| e.cost);
    let cost = match (run.cost, added) {
        (Some(a), Some(b)) => Some(a + b),
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b),
        (None, None) if run.cost_pricing_status == "priced" => Some(0.0),
        (None, None) => None,
    };
    (cost, if cost.is_some() { "priced" } else { "unpriced" })
}

/// Totals of one group.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// The run, agent, application, model or organization id (absent on the overall totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub calls: i64,
    /// Calls made without a price (their cost is unknown and not in `cost`).
    pub unpriced_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// USD; null when no call was priced.
    pub cost: Option<f64>,
}

impl UsageTotals {
    fn from_row(r: UsageTotalRow, keyed: bool) -> Self {
        UsageTotals {
            key: keyed.then_some(r.key),
            calls: r.calls,
            unpriced_calls: r.calls - r.priced_calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            cost: r.cost,
        }
    }

    fn zero() -> Self {
        UsageTotals {
            key: None,
            calls: 0,
            unpriced_calls: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost: None,
        }
    }
}

/// `GET /api/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub object: &'static str,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    /// `organization`, `application`, `agent`, `run` or `model`.
    pub group_by: &'static str,
    pub totals: UsageTotals,
    pub data: Vec<UsageTotals>,
}

pub const GROUPS: [(&str, UsageGroup); 5] = [
    ("organization", UsageGroup::Organization),
    ("application", UsageGroup::Application),
    ("agent", UsageGroup::Agent),
    ("run", UsageGroup::Run),
    ("model", UsageGroup::Model),
];

/// The organization's usage over `[from, to)`, grouped.
pub async fn report(
    state: &AppState,
    org_id: &str,
    filter: UsageFilter,
    group: UsageGroup,
) -> Result<UsageReport, ModelsError> {
    let db = &state.infra.db;
    let data = db
        .usage_totals(org_id, &filter, group)
        .await?
        .into_iter()
        .map(|r| UsageTotals::from_row(r, true))
        .collect();
    let totals = db
        .usage_totals(org_id, &filter, UsageGroup::Organization)
        .await?
        .into_iter()
        .next()
        .map(|r| UsageTotals::from_row(r, false))
        .unwrap_or_else(UsageTotals::zero);
    Ok(UsageReport {
        object: "usage",
        from: filter.from,
        to: filter.to,
        group_by: GROUPS
            .iter()
            .find(|(_, g)| *g == group)
            .map(|(n, _)| *n)
            .unwrap_or("organization"),
        totals,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_is_the_difference_of_cumulative_usages() {
        let before = json!({"input_tokens": 10, "output_tokens": 5});
        let after = json!({"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 4});
        assert_eq!(call_tokens(&before, &after), Some([20, 7, 4, 0]));
        assert_eq!(call_tokens(&after, &after), None);
        assert_eq!(call_tokens(&after, &before), None);
    }

    #[test]
    fn calls_are_priced_per_million_tokens() {
        let p = LlmPricing {
            input: 3.0,
            output: 15.0,
            cache_read: Some(0.3),
            cache_write: None,
        };
        let cost = call_cost([1_000_000, 100_000, 1_000_000, 0], Some(&p)).unwrap();
        assert!((cost - (3.0 + 1.5 + 0.3)).abs() < 1e-9, "{cost}");
        assert_eq!(call_cost([1, 1, 0, 0], None), None);
        assert_eq!(pricing_from_json(&pricing_json(&p)), Some(p));
    }
}
