//! Limits of agent memory, run documents and uploads, read from the environment with the rest of the
//! configuration (docs/documents.md lists every variable).

use std::collections::HashMap;

use crate::config::ConfigError;

/// Per-agent memory limits and the prompt budget (scope: one agent, application and end-user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimits {
    /// `MEMORY_MAX_ENTRIES` (200): memories kept per agent scope.
    pub max_memories: i64,
    /// `MEMORY_MAX_BYTES` (65536): UTF-8 bytes of all memories of a scope.
    pub max_memory_bytes: i64,
    /// `MEMORY_ENTRY_MAX_BYTES` (2000): one memory.
    pub max_entry_bytes: i64,
    /// `PINNED_MAX_SLOTS` (20): pinned slots per scope.
    pub max_pinned: i64,
    /// `PINNED_MAX_BYTES` (16384): names and JSON values of all pinned slots of a scope.
    pub max_pinned_bytes: i64,
    /// `CHECKPOINT_MAX_BYTES` (16384): the checkpoint's JSON text.
    pub max_checkpoint_bytes: i64,
    /// `MEMORY_CONTEXT_TOKENS` (2000): estimated tokens of pinned slots and memories in a run's prompt.
    pub context_tokens: i64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_memories: 200,
            max_memory_bytes: 65_536,
            max_entry_bytes: 2_000,
            max_pinned: 20,
            max_pinned_bytes: 16_384,
            max_checkpoint_bytes: 16_384,
            context_tokens: 2_000,
        }
    }
}

/// Documents, uploads and signed URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    /// `DOCUMENT_MAX_BYTES` (25 MiB): one published document.
    pub document_max_bytes: u64,
    /// `DOCUMENTS_MAX_PER_RUN` (20).
    pub documents_per_run: i64,
    /// `DOCUMENT_RETENTION_DAYS` (30; 0 keeps documents as long as their run).
    pub document_retention_days: u32,
    /// `UPLOAD_MAX_BYTES` (100 MiB): one upload.
    pub upload_max_bytes: u64,
    /// `UPLOAD_EXPIRY_SECONDS` (86400): an upload (and its PUT URL) lives this long.
    pub upload_expiry_seconds: u64,
    /// `SIGNED_URL_TTL_SECONDS` (900): download and publish URLs.
    pub signed_url_ttl_seconds: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            document_max_bytes: 25 * 1024 * 1024,
            documents_per_run: 20,
            document_retention_days: 30,
            upload_max_bytes: 100 * 1024 * 1024,
            upload_expiry_seconds: 86_400,
            signed_url_ttl_seconds: 900,
        }
    }
}

fn int(
    env: &HashMap<String, String>,
    errors: &mut Vec<ConfigError>,
    var: &str,
    default: u64,
    min: u64,
    max: u64,
) -> u64 {
    match env.get(var).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => default,
        Some(raw) => match raw.parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                errors.push(ConfigError {
                    var: var.into(),
                    reason: format!("must be an integer from {min} to {max}, got {raw:?}"),
                });
                default
            }
        },
    }
}

impl MemoryLimits {
    pub fn from_map(env: &HashMap<String, String>, errors: &mut Vec<ConfigError>) -> Self {
        let d = MemoryLimits::default();
        let mut n = |var: &str, default: i64, max: u64| {
            int(env, errors, var, default as u64, 1, max) as i64
        };
        MemoryLimits {
            max_memories: n("MEMORY_MAX_ENTRIES", d.max_memories, 100_000),
            max_memory_bytes: n("MEMORY_MAX_BYTES", d.max_memory_bytes, 64 << 20),
            max_entry_bytes: n("MEMORY_ENTRY_MAX_BYTES", d.max_entry_bytes, 1 << 20),
            max_pinned: n("PINNED_MAX_SLOTS", d.max_pinned, 10_000),
            max_pinned_bytes: n("PINNED_MAX_BYTES", d.max_pinned_bytes, 16 << 20),
            max_checkpoint_bytes: n("CHECKPOINT_MAX_BYTES", d.max_checkpoint_bytes, 16 << 20),
            context_tokens: n("MEMORY_CONTEXT_TOKENS", d.context_tokens, 1_000_000),
        }
    }
}

impl FilesConfig {
    pub fn from_map(env: &HashMap<String, String>, errors: &mut Vec<ConfigError>) -> Self {
        let d = FilesConfig::default();
        const TIB: u64 = 1 << 40;
        FilesConfig {
            document_max_bytes: int(
                env,
                errors,
                "DOCUMENT_MAX_BYTES",
                d.document_max_bytes,
                1,
                TIB,
            ),
            documents_per_run: int(
                env,
                errors,
                "DOCUMENTS_MAX_PER_RUN",
                d.documents_per_run as u64,
                1,
                10_000,
            ) as i64,
            document_retention_days: int(
                env,
                errors,
                "DOCUMENT_RETENTION_DAYS",
                d.document_retention_days as u64,
                0,
                36_500,
            ) as u32,
            upload_max_bytes: int(env, errors, "UPLOAD_MAX_BYTES", d.upload_max_bytes, 1, TIB),
            upload_expiry_seconds: int(
                env,
                errors,
                "UPLOAD_EXPIRY_SECONDS",
                d.upload_expiry_seconds,
                1,
                365 * 86_400,
            ),
            signed_url_ttl_seconds: int(
                env,
                errors,
                "SIGNED_URL_TTL_SECONDS",
                d.signed_url_ttl_seconds,
                1,
                7 * 86_400,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values_name_the_variable() {
        let mut errors = Vec::new();
        let empty = HashMap::new();
        assert_eq!(
            FilesConfig::from_map(&empty, &mut errors),
            FilesConfig::default()
        );
        assert_eq!(
            MemoryLimits::from_map(&empty, &mut errors),
            MemoryLimits::default()
        );
        assert!(errors.is_empty());
        let env: HashMap<String, String> = [
            ("MEMORY_MAX_ENTRIES", "0"),
            ("DOCUMENT_RETENTION_DAYS", "0"),
            ("UPLOAD_MAX_BYTES", "ten"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let f = FilesConfig::from_map(&env, &mut errors);
        assert_eq!(f.document_retention_days, 0);
        MemoryLimits::from_map(&env, &mut errors);
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(vars, vec!["UPLOAD_MAX_BYTES", "MEMORY_MAX_ENTRIES"]);
    }
}
