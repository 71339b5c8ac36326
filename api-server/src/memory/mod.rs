//! Agent memory between runs (docs/documents.md): memories (short facts an agent chose to keep), pinned
//! slots (named values it overwrites) and one checkpoint, per agent, scoped to the application and the
//! run's end-user. The domain speaks no HTTP: it takes runs and plain values and returns [`MemoryError`].

use serde_json::{json, Value};
use sqlx::types::Json;

use crate::documents::config::MemoryLimits;
use crate::infra::database::memory::{Caps, MemoryRow, MemoryScope, PinnedRow};
use crate::infra::database::runs::RunRow;
use crate::infra::database::{now, DbError};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    /// A limit would be exceeded; the message names it and the fix.
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    NotFound(String),
    /// The run has no persistent memory (inline runs).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

pub type MemoryResult<T> = Result<T, MemoryError>;

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> MemoryError {
    MemoryError::Invalid {
        field,
        code,
        message: message.into(),
    }
}

/// The memory scope of a run: its package agent in its application, for its end-user. Inline runs have
/// none (their manifest could name any agent).
pub fn run_scope(run: &RunRow) -> Option<MemoryScope> {
    Some(MemoryScope {
        org_id: run.org_id.clone(),
        application_id: run.application_id.clone(),
        agent_id: run.package_id.clone()?,
        end_user_id: run.end_user_id.clone(),
    })
}

fn scope_or_unavailable(run: &RunRow) -> MemoryResult<MemoryScope> {
    run_scope(run).ok_or_else(|| {
        MemoryError::Unavailable(
            "Inline runs have no persistent memory; run a package agent".into(),
        )
    })
}

/// Estimated tokens of a text: one per 4 bytes of UTF-8, rounded up.
pub fn estimate_tokens(text: &str) -> i64 {
    text.len().div_ceil(4) as i64
}

/// What fits in a run's prompt: pinned slots first (most recently updated first), then memories newest
/// first, each taken while the running total of estimated tokens stays within `budget`. Returns the
/// pinned slots and memories kept and how many were left out.
pub fn within_budget<'a>(
    pinned: &'a [PinnedRow],
    memories: &'a [MemoryRow],
    budget: i64,
) -> (Vec<&'a PinnedRow>, Vec<&'a MemoryRow>, usize) {
    let mut used = 0;
    let mut left_out = 0;
    let mut kept_pinned = Vec::new();
    for p in pinned {
        let cost = estimate_tokens(&p.name) + estimate_tokens(&p.value.0.to_string());
        if used + cost <= budget {
            used += cost;
            kept_pinned.push(p);
        } else {
            left_out += 1;
        }
    }
    let mut kept = Vec::new();
    for m in memories {
        let cost = estimate_tokens(&m.content);
        if used + cost <= budget {
            used += cost;
            kept.push(m);
        } else {
            left_out += 1;
        }
    }
    (kept_pinned, kept, left_out)
}

/// Memories matching `query`, best first: a memory scores one point per distinct query word it contains
/// (case-insensitive); ties go to the newest. An empty query gives the newest memories.
pub fn rank<'a>(memories: &'a [MemoryRow], query: &str, limit: usize) -> Vec<&'a MemoryRow> {
    let words: Vec<String> = {
        let mut w: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        w.sort();
        w.dedup();
        w
    };
    if words.is_empty() {
        return memories.iter().take(limit).collect();
    }
    // `memories` is newest first; a stable sort keeps that order among equal scores.
    let mut scored: Vec<(usize, &MemoryRow)> = memories
        .iter()
        .map(|m| {
            let text = m.content.to_lowercase();
            (
                words.iter().filter(|w| text.contains(w.as_str())).count(),
                m,
            )
        })
        .filter(|(s, _)| *s > 0)
        .collect();
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    scored.into_iter().take(limit).map(|(_, m)| m).collect()
}

pub fn memory_dto(m: &MemoryRow) -> Value {
    json!({"id": m.id, "object": "memory", "content": m.content, "runId": m.run_id, "createdAt": m.created_at})
}

pub fn pinned_dto(p: &PinnedRow) -> Value {
    json!({"id": p.id, "object": "pinned", "name": p.name, "value": p.value.0, "runId": p.run_id,
        "createdAt": p.created_at, "updatedAt": p.updated_at})
}

fn limits_dto(l: &MemoryLimits) -> Value {
    json!({
        "maxMemories": l.max_memories, "maxMemoryBytes": l.max_memory_bytes,
        "maxEntryBytes": l.max_entry_bytes, "maxPinned": l.max_pinned,
        "maxPinnedBytes": l.max_pinned_bytes, "maxCheckpointBytes": l.max_checkpoint_bytes,
        "contextTokens": l.context_tokens,
    })
}

/// The memory part of a run's context (`GET /api/runs/{id}/context`): what its prompt starts from.
pub async fn run_context(state: &AppState, run: &RunRow) -> MemoryResult<Value> {
    let limits = &state.config.memory;
    let Some(scope) = run_scope(run) else {
        return Ok(json!({"persistence": false, "memories": [], "pinned": [], "checkpoint": null}));
    };
    let db = &state.infra.db;
    let memories = db.list_memories(&scope).await?;
    let pinned = db.list_pinned(&scope).await?;
    let checkpoint = db.get_checkpoint(&scope).await?;
    let (pinned, memories_kept, left_out) =
        within_budget(&pinned, &memories, limits.context_tokens);
    Ok(json!({
        "persistence": true,
        "limits": limits_dto(limits),
        "memories": memories_kept.iter().map(|m| json!({"id": m.id, "content": m.content, "createdAt": m.created_at})).collect::<Vec<_>>(),
        "pinned": pinned.iter().map(|p| json!({"name": p.name, "value": p.value.0})).collect::<Vec<_>>(),
        "checkpoint": checkpoint.map(|c| c.value.0),
        "memoriesTotal": memories.len(),
        "leftOut": left_out,
    }))
}

/// `remember`: keeps one fact for the next runs of the agent.
pub async fn remember(state: &AppState, run: &RunRow, content: &str) -> MemoryResult<MemoryRow> {
    let limits = &state.config.memory;
    let scope = scope_or_unavailable(run)?;
    let content = content.trim();
    if content.is_empty() {
        return Err(invalid("content", "required", "must not be empty"));
    }
    let bytes = content.len() as i64;
    if bytes > limits.max_entry_bytes {
        return Err(invalid(
            "content",
            "out_of_range",
            format!(
                "is {bytes} bytes; a memory holds at most {} bytes (MEMORY_ENTRY_MAX_BYTES): keep it short",
                limits.max_entry_bytes
            ),
        ));
    }
    let row = MemoryRow {
        id: format!("mem_{}", uuid::Uuid::new_v4()),
        content: content.to_string(),
        bytes,
        run_id: Some(run.id.clone()),
        created_at: now(),
    };
    let caps = Caps {
        max_count: limits.max_memories,
        max_bytes: limits.max_memory_bytes,
    };
    match state.infra.db.insert_memory_capped(&scope, &row, caps).await? {
        Ok(r) => Ok(r),
        Err(full) => Err(MemoryError::Full(format!(
            "Memory is full for this agent: {} memories, {} bytes (limits: MEMORY_MAX_ENTRIES={}, \
             MEMORY_MAX_BYTES={}). Delete memories with DELETE /api/agents/{}/persistence/memories/{{id}} \
             or raise the limits",
            full.count, full.bytes, limits.max_memories, limits.max_memory_bytes, scope.agent_id
        ))),
    }
}

/// `recall_memory`: at most `limit` (1–20) memories matching `query`.
pub async fn recall(
    state: &AppState,
    run: &RunRow,
    query: &str,
    limit: usize,
) -> MemoryResult<Vec<MemoryRow>> {
    let scope = scope_or_unavailable(run)?;
    let memories = state.infra.db.list_memories(&scope).await?;
    Ok(rank(&memories, query, limit.clamp(1, 20))
        .into_iter()
        .cloned()
        .collect())
}

/// A pinned slot's name: 1–64 characters of `a-z A-Z 0-9 _ . -`.
pub fn valid_slot_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `pin`: sets the slot `name` to `value`; a null value removes the slot. Returns the stored slot.
pub async fn pin(
    state: &AppState,
    run: &RunRow,
    name: &str,
    value: &Value,
) -> MemoryResult<Option<PinnedRow>> {
    let limits = &state.config.memory;
    let scope = scope_or_unavailable(run)?;
    if !valid_slot_name(name) {
        return Err(invalid(
            "name",
            "invalid_format",
            "must be 1-64 characters of letters, digits, _, . or -",
        ));
    }
    if value.is_null() {
        state.infra.db.delete_pinned(&scope, name).await?;
        return Ok(None);
    }
    let bytes = (name.len() + value.to_string().len()) as i64;
    let at = now();
    let row = PinnedRow {
        id: format!("pin_{}", uuid::Uuid::new_v4()),
        name: name.to_string(),
        value: Json(value.clone()),
        bytes,
        run_id: Some(run.id.clone()),
        created_at: at,
        updated_at: at,
    };
    let caps = Caps {
        max_count: limits.max_pinned,
        max_bytes: limits.max_pinned_bytes,
    };
    match state.infra.db.upsert_pinned_capped(&scope, &row, caps).await? {
        Ok(r) => Ok(Some(r)),
        Err(full) => Err(MemoryError::Full(format!(
            "Pinned slots are full for this agent: {} other slots, {} bytes (limits: PINNED_MAX_SLOTS={}, \
             PINNED_MAX_BYTES={}). Overwrite an existing slot, remove one (pin it to null), or raise the limits",
            full.count, full.bytes, limits.max_pinned, limits.max_pinned_bytes
        ))),
    }
}

/// The checkpoint a run reported at finalize. Kept unless a run created later already wrote one (the
/// last-writer rule: the newest run wins, whatever the order in which runs finish). Returns whether it
/// was written.
pub async fn save_checkpoint(state: &AppState, run: &RunRow, value: &Value) -> MemoryResult<bool> {
    let limits = &state.config.memory;
    let scope = scope_or_unavailable(run)?;
    let size = value.to_string().len() as i64;
    if size > limits.max_checkpoint_bytes {
        return Err(MemoryError::Full(format!(
            "The checkpoint is {size} bytes; at most {} are kept (CHECKPOINT_MAX_BYTES)",
            limits.max_checkpoint_bytes
        )));
    }
    Ok(state
        .infra
        .db
        .write_checkpoint(&scope, value, &run.id, run.created_at, now())
        .await?)
}

/// `GET /api/agents/{scope}/{name}/persistence`: everything the scope holds.
pub async fn persistence(state: &AppState, scope: &MemoryScope) -> MemoryResult<Value> {
    let db = &state.infra.db;
    let memories = db.list_memories(scope).await?;
    let pinned = db.list_pinned(scope).await?;
    let checkpoint = db.get_checkpoint(scope).await?;
    Ok(json!({
        "object": "persistence",
        "agentId": scope.agent_id,
        "endUserId": scope.end_user_id,
        "memories": memories.iter().map(memory_dto).collect::<Vec<_>>(),
        "pinned": pinned.iter().map(pinned_dto).collect::<Vec<_>>(),
        "checkpoint": checkpoint.map(|c| json!({"value": c.value.0, "runId": c.run_id, "updatedAt": c.updated_at})),
        "usage": {
            "memories": memories.len(),
            "memoryBytes": memories.iter().map(|m| m.bytes).sum::<i64>(),
            "pinned": pinned.len(),
            "pinnedBytes": pinned.iter().map(|p| p.bytes).sum::<i64>(),
        },
        "limits": limits_dto(&state.config.memory),
    }))
}

pub async fn delete_memory(state: &AppState, scope: &MemoryScope, id: &str) -> MemoryResult<()> {
    if state.infra.db.delete_memory(scope, id).await? {
        Ok(())
    } else {
        Err(MemoryError::NotFound(format!("Memory {id} not found")))
    }
}

pub async fn delete_pinned(state: &AppState, scope: &MemoryScope, id: &str) -> MemoryResult<()> {
    if state.infra.db.delete_pinned(scope, id).await? {
        Ok(())
    } else {
        Err(MemoryError::NotFound(format!("Pinned slot {id} not found")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::database::Timestamp;

    fn mem(content: &str, secs: i64) -> MemoryRow {
        MemoryRow {
            id: format!("mem_{secs}"),
            content: content.into(),
            bytes: content.len() as i64,
            run_id: None,
            created_at: Timestamp::from_timestamp(secs, 0).unwrap(),
        }
    }

    fn pinned(name: &str, value: Value) -> PinnedRow {
        PinnedRow {
            id: format!("pin_{name}"),
            name: name.into(),
            value: Json(value),
            bytes: 0,
            run_id: None,
            created_at: Timestamp::from_timestamp(0, 0).unwrap(),
            updated_at: Timestamp::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn the_budget_takes_pinned_slots_then_the_newest_memories() {
        // Newest first, as the repository returns them.
        let memories = vec![
            mem(&"n".repeat(40), 3),
            mem(&"m".repeat(40), 2),
            mem("old", 1),
        ];
        let pins = vec![pinned("city", json!("Paris"))];
        // pinned: 1 + 2 tokens; memories: 10, 10, 1.
        let (p, m, left) = within_budget(&pins, &memories, 14);
        assert_eq!(p.len(), 1);
        assert_eq!(
            m.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["mem_3", "mem_1"]
        );
        assert_eq!(left, 1);
        let (p, m, left) = within_budget(&pins, &memories, 0);
        assert!(p.is_empty() && m.is_empty());
        assert_eq!(left, 4);
        assert_eq!(estimate_tokens("abcde"), 2);
    }

    #[test]
    fn recall_ranks_by_matching_words_then_recency() {
        let memories = vec![
            mem("The customer prefers email", 4),
            mem("Invoice 42 was paid by the customer", 3),
            mem("Unrelated", 2),
            mem("customer invoice overdue", 1),
        ];
        let ids = |v: Vec<&MemoryRow>| v.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(rank(&memories, "Customer INVOICE", 10)),
            vec!["mem_3", "mem_1", "mem_4"]
        );
        assert_eq!(ids(rank(&memories, "customer", 2)), vec!["mem_4", "mem_3"]);
        assert_eq!(ids(rank(&memories, "  ", 2)), vec!["mem_4", "mem_3"]);
        assert!(rank(&memories, "zebra", 5).is_empty());
    }

    #[test]
    fn slot_names() {
        assert!(valid_slot_name("last_city.v2-a"));
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_slot_name(bad), "{bad}");
        }
    }
}
