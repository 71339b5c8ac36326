//! Configuration from the environment (§3). Every problem is collected before the process gives up, so an
//! operator sees all of them at once, each naming the variable and the fix.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use serde_json::Value;

/// A value that must never be printed. `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAdapterKind {
    Process,
    Docker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmApi {
    OpenAiCompletions,
    AnthropicMessages,
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
}

#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub api: LlmApi,
    pub base_url: String,
    pub api_key: Secret<String>,
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmPricing {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformRunLimits {
    pub timeout_ceiling_seconds: u64,
    pub per_org_global_rate_per_min: u64,
    pub max_concurrent_per_org: u64,
    pub agent_memory_ceiling_mb: u64,
    pub agent_cpu_ceiling: u64,
}

impl Default for PlatformRunLimits {
    fn default() -> Self {
        Self {
            timeout_ceiling_seconds: 1800,
            per_org_global_rate_per_min: 200,
            max_concurrent_per_org: 50,
            agent_memory_ceiling_mb: 1536,
            agent_cpu_ceiling: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineRunLimits {
    pub rate_per_min: u64,
    pub manifest_bytes: u64,
    pub prompt_bytes: u64,
}

impl Default for InlineRunLimits {
    fn default() -> Self {
        Self {
            rate_per_min: 60,
            manifest_bytes: 65536,
            prompt_bytes: 200_000,
        }
    }
}

/// The encryption keyring material: the active key plus retired decrypt-only keys.
#[derive(Clone)]
pub struct KeyMaterial {
    pub active_id: String,
    pub active: Secret<[u8; 32]>,
    pub retired: BTreeMap<String, Secret<[u8; 32]>>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("active_id", &self.active_id)
            .field("retired", &self.retired.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    /// Whether `PORT` was given explicitly (the `dev` command picks a free port otherwise).
    pub port_explicit: bool,
    /// Origin without a trailing slash, e.g. `http://localhost:3000`.
    pub app_url: String,
    pub app_env: AppEnv,
    pub log_level: String,
    pub log_format: LogFormat,
    pub better_auth_secret: Secret<String>,
    pub upload_signing_secret: Secret<String>,
    pub keys: KeyMaterial,
    pub data_dir: PathBuf,
    pub sqlite_path: PathBuf,
    pub database_url: Option<Secret<String>>,
    pub redis_url: Option<Secret<String>>,
    /// `REDIS_CA_CERT`: a PEM file of the CA certificate(s) that sign the `rediss://` server's
    /// certificate, instead of the system store.
    pub redis_ca_cert: Option<PathBuf>,
    pub s3: Option<S3Config>,
    pub fs_storage_path: PathBuf,
    pub run_adapter: RunAdapterKind,
    pub docker_socket: String,
    pub agent_image: String,
    pub sidecar_image: String,
    /// `SIDECAR_MCP_IMAGE`: the sidecar image of Docker runs with stdio MCP servers, which needs a
    /// userland and `/appstrate-sidecar` (default `appstrate-agent:latest`, which `images/build.sh agent`
    /// builds with both).
    pub sidecar_mcp_image: String,
    /// Run slots kept ready in Docker mode (`RUN_SLOT_POOL_SIZE`, else `SIDECAR_POOL_SIZE`, default 2).
    pub run_slot_pool_size: u32,
    /// `RUN_SLOT_MAX_IDLE_SECONDS` (default 600): an unused run slot is replaced after this long.
    pub run_slot_max_idle_seconds: u64,
    pub sidecar_control_host: String,
    pub platform_api_url: Option<String>,
    pub runner_bin: Option<PathBuf>,
    pub sidecar_bin: Option<PathBuf>,
    pub llm: Option<LlmConfig>,
    pub llm_pricing: Option<LlmPricing>,
    pub platform_run_limits: PlatformRunLimits,
    pub inline_run_limits: InlineRunLimits,
    pub run_heartbeat_interval_seconds: u64,
    pub run_stall_threshold_seconds: u64,
    pub run_watchdog_interval_seconds: u64,
    pub run_boot_deadline_seconds: u64,
    pub run_timeout_grace_seconds: u64,
    pub scheduler_poll_interval_seconds: u64,
    pub webhook_retry_delays_seconds: Vec<u64>,
    pub webhook_timeout_seconds: u64,
    pub webhook_timestamp_tolerance_seconds: u64,
    pub run_event_replay_window_seconds: u64,
    pub egress_allow_internal_hosts: Vec<String>,
    pub api_body_limit_bytes: usize,
    /// Number of trusted proxy hops in front of the server (0 = use the socket address).
    pub trust_proxy_hops: u32,
    pub workspace_tmpfs_size_mb: u32,
    /// `ALLOW_UNISOLATED_BASH`: offer agents the `bash` tool in process mode, where nothing isolates
    /// their commands from the host (Docker mode always offers it).
    pub allow_unisolated_bash: bool,
    pub shutdown_grace_seconds: u64,
    /// Connections served at once; one more is answered 503 (`HTTP_MAX_CONNECTIONS`).
    pub http_max_connections: u64,
    /// Time for a request head to arrive completely, else 408 (`HTTP_HEADER_READ_TIMEOUT_SECONDS`).
    pub http_header_read_timeout_seconds: u64,
    /// Time an idle keep-alive connection stays open (`HTTP_KEEPALIVE_TIMEOUT_SECONDS`).
    pub http_keepalive_timeout_seconds: u64,
    pub retention: RetentionConfig,
    pub system_packages_dir: PathBuf,
    pub app_version: String,
    pub git_sha: Option<String>,
    /// Accounts, sessions, sign-in providers and email (`AUTH_*`, `SMTP_*`).
    pub people: crate::people::config::PeopleConfig,
    /// Per-agent memory limits and the prompt budget (`MEMORY_*`, `PINNED_*`, `CHECKPOINT_MAX_BYTES`).
    pub memory: crate::documents::config::MemoryLimits,
    /// Documents, uploads and signed URLs (`DOCUMENT_*`, `UPLOAD_*`, `SIGNED_URL_TTL_SECONDS`).
    pub files: crate::documents::config::FilesConfig,
}

/// One problem with one variable. Printed as `config error: <VAR>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.var, self.reason)
    }
}

const SECRET_HINT: &str = "generate one with `openssl rand -base64 32`";

struct Reader<'a> {
    env: &'a HashMap<String, String>,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    /// A variable's value; an empty string counts as unset.
    fn get(&self, var: &str) -> Option<&'a str> {
        self.env
            .get(var)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }

    fn fail(&mut self, var: &str, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            var: var.to_string(),
            reason: reason.into(),
        });
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    fn positive(&mut self, var: &str, default: u64) -> u64 {
        match self.get(var) {
            None => default,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(v) if v > 0 => v,
                _ => {
                    self.fail(var, format!("must be a positive integer, got {raw:?}"));
                    default
                }
            },
        }
    }

    fn one_of<T: Copy>(&mut self, var: &str, default: T, choices: &[(&str, T)]) -> T {
        match self.get(var) {
            None => default,
            Some(raw) => match choices.iter().find(|(name, _)| *name == raw) {
                Some((_, v)) => *v,
                None => {
                    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                    self.fail(
                        var,
                        format!("must be one of {}, got {raw:?}", names.join(", ")),
                    );
                    default
                }
            },
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_process_env() -> Result<Config, Vec<ConfigError>> {
        Self::from_map(&std::env::vars().collect())
    }

    /// Reads the configuration from a map of variables (the process environment, or a test's own map).
    pub fn from_map(env: &HashMap<String, String>) -> Result<Config, Vec<ConfigError>> {
        let mut r = Reader {
            env,
            errors: Vec::new(),
        };

        let port_explicit = r.get("PORT").is_some();
        let port = match r.get("PORT") {
            None => 3000,
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => p as u16,
                _ => {
                    r.fail(
                        "PORT",
                        format!("must be an integer between 1 and 65535, got {raw:?}"),
                    );
                    3000
                }
            },
        };

        // APP_ENV wins over NODE_ENV.
        let envs = [
            ("development", AppEnv::Development),
            ("production", AppEnv::Production),
            ("test", AppEnv::Test),
        ];
        let app_env = if r.get("APP_ENV").is_some() {
            r.one_of("APP_ENV", AppEnv::Development, &envs)
        } else {
            r.one_of("NODE_ENV", AppEnv::Development, &envs)
        };

        let app_url_raw = r.string("APP_URL", &format!("http://localhost:{port}"));
        let app_url = match validate_app_url(&app_url_raw, app_env == AppEnv::Production) {
            Ok(u) => u,
            Err(reason) => {
                r.fail("APP_URL", reason);
                String::new()
            }
        };

        let log_level = r.one_of(
            "LOG_LEVEL",
            "info",
            &[
                ("error", "error"),
                ("warn", "warn"),
                ("info", "info"),
                ("debug", "debug"),
                ("trace", "trace"),
            ],
        );
        let log_format = r.one_of(
            "LOG_FORMAT",
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );

        let better_auth_secret = match r.get("BETTER_AUTH_SECRET") {
            Some(v) => v.to_string(),
            None => {
                r.fail(
                    "BETTER_AUTH_SECRET",
                    format!("is required (any non-empty string); {SECRET_HINT}"),
                );
                String::new()
            }
        };
        let upload_signing_secret = match r.get("UPLOAD_SIGNING_SECRET") {
            Some(v) if v.chars().count() >= 16 => v.to_string(),
            Some(v) => {
                r.fail(
                    "UPLOAD_SIGNING_SECRET",
                    format!(
                        "must be at least 16 characters (got {}); {SECRET_HINT}",
                        v.chars().count()
                    ),
                );
                String::new()
            }
            None => {
                r.fail(
                    "UPLOAD_SIGNING_SECRET",
                    format!("is required (at least 16 characters); {SECRET_HINT}"),
                );
                String::new()
            }
        };
        let active_key = match r.get("CONNECTION_ENCRYPTION_KEY") {
            None => {
                r.fail(
                    "CONNECTION_ENCRYPTION_KEY",
                    format!("is required (base64 of exactly 32 bytes); {SECRET_HINT}"),
                );
                [0u8; 32]
            }
            Some(raw) => match decode_key(raw) {
                Ok(k) => k,
                Err(reason) => {
                    r.fail("CONNECTION_ENCRYPTION_KEY", reason);
                    [0u8; 32]
                }
            },
        };
        let active_id = r.string("CONNECTION_ENCRYPTION_KEY_ID", "k1");
        if !valid_kid(&active_id) {
            r.fail(
                "CONNECTION_ENCRYPTION_KEY_ID",
                "must match ^[A-Za-z0-9_-]{1,32}$",
            );
        }
        let mut retired = BTreeMap::new();
        if let Some(raw) = r.get("CONNECTION_ENCRYPTION_KEYS") {
            match serde_json::from_str::<Value>(raw) {
                Ok(Value::Object(map)) => {
                    for (kid, v) in map {
                        let problem = if !valid_kid(&kid) {
                            Some("key id must match ^[A-Za-z0-9_-]{1,32}$".to_string())
                        } else if kid == active_id {
                            Some(
                                "must differ from CONNECTION_ENCRYPTION_KEY_ID (the active key)"
                                    .to_string(),
                            )
                        } else {
                            match v.as_str().map(decode_key) {
                                Some(Ok(k)) => {
                                    retired.insert(kid.clone(), Secret::new(k));
                                    None
                                }
                                Some(Err(reason)) => Some(reason),
                                None => Some("value must be a base64 string".to_string()),
                            }
                        };
                        if let Some(reason) = problem {
                            r.fail("CONNECTION_ENCRYPTION_KEYS", format!("{kid}: {reason}"));
                        }
                    }
                }
                _ => r.fail(
                    "CONNECTION_ENCRYPTION_KEYS",
                    "must be a JSON object {\"<kid>\": \"<base64 key>\"}",
                ),
            }
        }

        let data_dir = PathBuf::from(r.string("DATA_DIR", "./data"));
        let sqlite_path = r
            .get("SQLITE_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("appstrate.db"));

        let database_url = r.get("DATABASE_URL").map(|s| s.to_string());
        if let Some(u) = &database_url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                r.fail(
                    "DATABASE_URL",
                    "must start with postgres:// or postgresql:// (unset it to use the embedded SQLite database)",
                );
            }
        }
        let redis_url = r.get("REDIS_URL").map(|s| s.to_string());
        if let Some(u) = &redis_url {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                r.fail("REDIS_URL", "must start with redis:// or rediss://");
            }
        }
        let redis_ca_cert = r.get("REDIS_CA_CERT").map(PathBuf::from);
        if let Some(path) = &redis_ca_cert {
            if !redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                r.fail(
                    "REDIS_CA_CERT",
                    "is only used with a rediss:// REDIS_URL (TLS); unset it or switch REDIS_URL to rediss://",
                );
            } else {
                match std::fs::read_to_string(path) {
                    Err(e) => r.fail(
                        "REDIS_CA_CERT",
                        format!("cannot read {}: {e}", path.display()),
                    ),
                    Ok(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => r.fail(
                        "REDIS_CA_CERT",
                        format!(
                            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            path.display()
                        ),
                    ),
                    Ok(_) => {}
                }
            }
        }

        let s3 = match r.get("S3_BUCKET") {
            None => None,
            Some(bucket) => {
                let region = match r.get("S3_REGION") {
                    Some(region) => region.to_string(),
                    None => {
                        r.fail(
                            "S3_REGION",
                            "is required when S3_BUCKET is set (e.g. us-east-1)",
                        );
                        String::new()
                    }
                };
                let endpoint = r
                    .get("S3_ENDPOINT")
                    .map(|s| s.trim_end_matches('/').to_string());
                if let Some(e) = &endpoint {
                    if url::Url::parse(e)
                        .map(|u| u.scheme() != "http" && u.scheme() != "https")
                        .unwrap_or(true)
                    {
                        r.fail(
                            "S3_ENDPOINT",
                            "must be an http(s) URL, e.g. http://127.0.0.1:9000",
                        );
                    }
                }
                let force_path_style = match r.get("S3_FORCE_PATH_STYLE") {
                    None => endpoint.is_some(),
                    Some(v) => parse_bool(v).unwrap_or_else(|| {
                        r.fail("S3_FORCE_PATH_STYLE", "must be true or false");
                        endpoint.is_some()
                    }),
                };
                Some(S3Config {
                    bucket: bucket.to_string(),
                    region,
                    endpoint,
                    force_path_style,
                })
            }
        };
        let fs_storage_path = PathBuf::from(r.string("FS_STORAGE_PATH", "./data/storage"));

        let run_adapter = r.one_of(
            "RUN_ADAPTER",
            RunAdapterKind::Process,
            &[
                ("process", RunAdapterKind::Process),
                ("docker", RunAdapterKind::Docker),
            ],
        );
        let docker_socket = r.string("DOCKER_SOCKET", "/var/run/docker.sock");
        let agent_image = r.string("AGENT_IMAGE", "appstrate-runner:latest");
        let sidecar_image = r.string("SIDECAR_IMAGE", "appstrate-sidecar:latest");
        let sidecar_mcp_image = r.string("SIDECAR_MCP_IMAGE", "appstrate-agent:latest");
        // `RUN_SLOT_POOL_SIZE` wins; `SIDECAR_POOL_SIZE` (the seed's name) is read when it is unset,
        // so `SIDECAR_POOL_SIZE=0` still means "no pool, everything on the hot path".
        let mut pool_size = |var: &'static str| {
            r.get(var).map(|raw| {
                raw.trim().parse::<u32>().unwrap_or_else(|_| {
                    r.fail(
                        var,
                        format!("must be an integer >= 0 (0 disables the pool), got {raw:?}"),
                    );
                    2
                })
            })
        };
        let sidecar_pool_size = pool_size("SIDECAR_POOL_SIZE");
        let run_slot_pool_size = pool_size("RUN_SLOT_POOL_SIZE")
            .or(sidecar_pool_size)
            .unwrap_or(2);
        let run_slot_max_idle_seconds = match r.get("RUN_SLOT_MAX_IDLE_SECONDS") {
            None => 600,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(n) if (1..=86_400).contains(&n) => n,
                _ => {
                    r.fail(
                        "RUN_SLOT_MAX_IDLE_SECONDS",
                        format!("must be an integer from 1 to 86400, got {raw:?}"),
                    );
                    600
                }
            },
        };
        let sidecar_control_host = r.string("SIDECAR_CONTROL_HOST", "127.0.0.1");
        let platform_api_url = r
            .get("PLATFORM_API_URL")
            .map(|s| s.trim_end_matches('/').to_string());
        let runner_bin = r.get("RUNNER_BIN").map(PathBuf::from);
        let sidecar_bin = r.get("SIDECAR_BIN").map(PathBuf::from);

        let llm_api = r.one_of(
            "LLM_API",
            LlmApi::OpenAiCompletions,
            &[
                ("openai-completions", LlmApi::OpenAiCompletions),
                ("anthropic-messages", LlmApi::AnthropicMessages),
            ],
        );
        let llm = match (
            r.get("LLM_BASE_URL"),
            r.get("LLM_API_KEY"),
            r.get("LLM_MODEL"),
        ) {
            (Some(base), Some(key), Some(model)) => {
                if url::Url::parse(base)
                    .map(|u| u.scheme() != "http" && u.scheme() != "https")
                    .unwrap_or(true)
                {
                    r.fail("LLM_BASE_URL", "must be an absolute http(s) URL");
                }
                Some(LlmConfig {
                    api: llm_api,
                    base_url: base.trim_end_matches('/').to_string(),
                    api_key: Secret::new(key.to_string()),
                    model: model.to_string(),
                })
            }
            _ => None,
        };
        let llm_pricing = match r.get("LLM_PRICING") {
            None => None,
            Some(raw) => match parse_pricing(raw) {
                Ok(p) => Some(p),
                Err(reason) => {
                    r.fail("LLM_PRICING", reason);
                    None
                }
            },
        };

        let platform_run_limits = match r.get("PLATFORM_RUN_LIMITS") {
            None => PlatformRunLimits::default(),
            Some(raw) => {
                let mut l = PlatformRunLimits::default();
                let res = parse_limits(
                    raw,
                    &mut [
                        ("timeout_ceiling_seconds", &mut l.timeout_ceiling_seconds),
                        (
                            "per_org_global_rate_per_min",
                            &mut l.per_org_global_rate_per_min,
                        ),
                        ("max_concurrent_per_org", &mut l.max_concurrent_per_org),
                        ("agent_memory_ceiling_mb", &mut l.agent_memory_ceiling_mb),
                        ("agent_cpu_ceiling", &mut l.agent_cpu_ceiling),
                    ],
                );
                for e in res {
                    r.fail("PLATFORM_RUN_LIMITS", e);
                }
                l
            }
        };
        let inline_run_limits = match r.get("INLINE_RUN_LIMITS") {
            None => InlineRunLimits::default(),
            Some(raw) => {
                let mut l = InlineRunLimits::default();
                let res = parse_limits(
                    raw,
                    &mut [
                        ("rate_per_min", &mut l.rate_per_min),
                        ("manifest_bytes", &mut l.manifest_bytes),
                        ("prompt_bytes", &mut l.prompt_bytes),
                    ],
                );
                for e in res {
                    r.fail("INLINE_RUN_LIMITS", e);
                }
                l
            }
        };

        let run_heartbeat_interval_seconds = r.positive("RUN_HEARTBEAT_INTERVAL_SECONDS", 15);
        let run_stall_threshold_seconds = r.positive("RUN_STALL_THRESHOLD_SECONDS", 60);
        if run_stall_threshold_seconds <= run_heartbeat_interval_seconds {
            r.fail(
                "RUN_STALL_THRESHOLD_SECONDS",
                format!(
                    "must be greater than RUN_HEARTBEAT_INTERVAL_SECONDS ({run_heartbeat_interval_seconds})"
                ),
            );
        }
        let run_watchdog_interval_seconds = r.positive("RUN_WATCHDOG_INTERVAL_SECONDS", 15);
        let run_boot_deadline_seconds = r.positive("RUN_BOOT_DEADLINE_SECONDS", 300);
        let run_timeout_grace_seconds = r.positive("RUN_TIMEOUT_GRACE_SECONDS", 30);
        let scheduler_poll_interval_seconds = r.positive("SCHEDULER_POLL_INTERVAL_SECONDS", 30);
        let webhook_retry_delays_seconds = match r.get("WEBHOOK_RETRY_DELAYS_SECONDS") {
            None => vec![30, 300, 1800, 3600, 7200, 10800, 14400],
            Some(raw) => {
                let parsed: Result<Vec<u64>, _> =
                    raw.split(',').map(|p| p.trim().parse::<u64>()).collect();
                match parsed {
                    Ok(v) if !v.is_empty() && v.len() <= 7 => v,
                    _ => {
                        r.fail(
                            "WEBHOOK_RETRY_DELAYS_SECONDS",
                            "must be 1 to 7 comma-separated non-negative integers (delays before attempts 2-8)",
                        );
                        Vec::new()
                    }
                }
            }
        };
        let webhook_timeout_seconds = r.positive("WEBHOOK_TIMEOUT_SECONDS", 15);
        let webhook_timestamp_tolerance_seconds =
            r.positive("WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS", 300);
        let run_event_replay_window_seconds = r.positive("RUN_EVENT_REPLAY_WINDOW_SECONDS", 600);
        let egress_allow_internal_hosts = r
            .get("EGRESS_ALLOW_INTERNAL_HOSTS")
            .map(|raw| {
                raw.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let api_body_limit_bytes = r.positive("API_BODY_LIMIT_BYTES", 10_485_760) as usize;
        let trust_proxy_hops = match r.get("TRUST_PROXY") {
            None => 0,
            Some(raw) => match raw {
                "false" => 0,
                "true" => 1,
                n => n.parse::<u32>().unwrap_or_else(|_| {
                    r.fail(
                        "TRUST_PROXY",
                        "must be false, true (one hop) or a number of hops",
                    );
                    0
                }),
            },
        };
        let allow_unisolated_bash = match r.get("ALLOW_UNISOLATED_BASH") {
            None => false,
            Some(raw) => parse_bool(raw).unwrap_or_else(|| {
                r.fail(
                    "ALLOW_UNISOLATED_BASH",
                    format!("must be true or false, got {raw:?}"),
                );
                false
            }),
        };
        let workspace_tmpfs_size_mb = match r.get("WORKSPACE_TMPFS_SIZE_MB") {
            None => 512,
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(v) if (16..=8192).contains(&v) => v,
                _ => {
                    r.fail(
                        "WORKSPACE_TMPFS_SIZE_MB",
                        format!("must be an integer between 16 and 8192, got {raw:?}"),
                    );
                    512
                }
            },
        };
        let shutdown_grace_seconds = r.positive("SHUTDOWN_GRACE_SECONDS", 30);
        let http_max_connections = r.positive("HTTP_MAX_CONNECTIONS", 4096);
        let http_header_read_timeout_seconds = r.positive("HTTP_HEADER_READ_TIMEOUT_SECONDS", 15);
        let http_keepalive_timeout_seconds = r.positive("HTTP_KEEPALIVE_TIMEOUT_SECONDS", 75);
        let retention = RetentionConfig::read(&mut r);
        let system_packages_dir =
            PathBuf::from(r.string("SYSTEM_PACKAGES_DIR", "./system-packages"));
        let app_version = r.string("APP_VERSION", env!("CARGO_PKG_VERSION"));
        let git_sha = r.get("GIT_SHA").map(|s| s.to_string());
        let people = crate::people::config::PeopleConfig::from_map(env, &mut r.errors);
        let memory = crate::documents::config::MemoryLimits::from_map(env, &mut r.errors);
        let files = crate::documents::config::FilesConfig::from_map(env, &mut r.errors);

        if !r.errors.is_empty() {
            return Err(r.errors);
        }
        Ok(Config {
            port,
            port_explicit,
            app_url,
            app_env,
            log_level: log_level.to_string(),
            log_format,
            better_auth_secret: Secret::new(better_auth_secret),
            upload_signing_secret: Secret::new(upload_signing_secret),
            keys: KeyMaterial {
                active_id,
                active: Secret::new(active_key),
                retired,
            },
            data_dir,
            sqlite_path,
            database_url: database_url.map(Secret::new),
            redis_url: redis_url.map(Secret::new),
            redis_ca_cert,
            s3,
            fs_storage_path,
            run_adapter,
            docker_socket,
            agent_image,
            sidecar_image,
            sidecar_mcp_image,
            run_slot_pool_size,
            run_slot_max_idle_seconds,
            sidecar_control_host,
            platform_api_url,
            runner_bin,
            sidecar_bin,
            llm,
            llm_pricing,
            platform_run_limits,
            inline_run_limits,
            run_heartbeat_interval_seconds,
            run_stall_threshold_seconds,
            run_watchdog_interval_seconds,
            run_boot_deadline_seconds,
            run_timeout_grace_seconds,
            scheduler_poll_interval_seconds,
            webhook_retry_delays_seconds,
            webhook_timeout_seconds,
            webhook_timestamp_tolerance_seconds,
            run_event_replay_window_seconds,
            egress_allow_internal_hosts,
            api_body_limit_bytes,
            trust_proxy_hops,
            workspace_tmpfs_size_mb,
            allow_unisolated_bash,
            shutdown_grace_seconds,
            http_max_connections,
            http_header_read_timeout_seconds,
            http_keepalive_timeout_seconds,
            retention,
            system_packages_dir,
            app_version,
            git_sha,
            people,
            memory,
            files,
        })
    }

    /// The infrastructure tier reported by `/health` (§4.2).
    pub fn tier(&self) -> u8 {
        match (self.database_url.is_some(), self.redis_url.is_some()) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => {
                if self.s3.is_some() || self.run_adapter == RunAdapterKind::Docker {
                    3
                } else {
                    2
                }
            }
        }
    }

    pub fn is_production(&self) -> bool {
        self.app_env == AppEnv::Production
    }
}

/// Loads `<dir>/.env` (the current directory only; parent directories are not searched) into the process
/// environment without overriding variables already set. Returns whether the file exists. A line that is
/// not `KEY=VALUE` is an error naming the file and the line number; the line itself is not repeated,
/// since it may hold a secret.
pub fn load_dotenv(dir: &std::path::Path) -> Result<bool, String> {
    let path = dir.join(".env");
    if !path.exists() {
        return Ok(false);
    }
    let unreadable = |e: &dyn fmt::Display| {
        format!(
            "config error: {}: cannot be read: {e}",
            path.to_string_lossy()
        )
    };
    let content = std::fs::read_to_string(&path).map_err(|e| unreadable(&e))?;
    match dotenvy::from_path(&path) {
        Ok(()) => Ok(true),
        Err(dotenvy::Error::LineParse(text, _)) => Err(format!(
            "config error: {}: line {}: not a KEY=VALUE line (check for a missing `=`, spaces in a key or an \
             unclosed quote); fix or remove the line",
            path.to_string_lossy(),
            dotenv_line_number(&content, &text)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        )),
        Err(e) => Err(unreadable(&e)),
    }
}

/// The 1-based line of `content` on which the logical line `text` (as reported by the `.env` parser)
/// starts: its first occurrence at the start of a line.
fn dotenv_line_number(content: &str, text: &str) -> Option<usize> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let text = text.trim_end_matches(['\r', '\n']);
    let mut start = 0;
    for (i, line) in content.split_inclusive('\n').enumerate() {
        if content[start..].starts_with(text) {
            return Some(i + 1);
        }
        start += line.len();
    }
    None
}

fn valid_kid(kid: &str) -> bool {
    (1..=32).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Standard base64 that must decode to exactly 32 bytes.
pub fn decode_key(raw: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|_| format!("must be standard base64 of exactly 32 bytes; {SECRET_HINT}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "must decode to exactly 32 bytes, got {}; {SECRET_HINT}",
            bytes.len()
        )
    })
}

/// `APP_URL`: an absolute http(s) origin without credentials, query or fragment; https in production
/// except for localhost and 127.0.0.1.
pub fn validate_app_url(raw: &str, production: bool) -> Result<String, String> {
    let fix = "include the scheme, e.g. APP_URL=https://appstrate.example.com";
    if !raw.contains("://") {
        return Err(format!("{raw:?} has no scheme; {fix}"));
    }
    let url =
        url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a valid URL ({e}); {fix}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme must be http or https; {fix}"));
    }
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{raw:?} has no host; {fix}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query or fragment".into());
    }
    let local = host == "localhost" || host == "127.0.0.1";
    if production && url.scheme() != "https" && !local {
        return Err(format!(
            "must use https:// in production (APP_ENV/NODE_ENV=production); only localhost and 127.0.0.1 may use http, got {raw:?}"
        ));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

fn parse_pricing(raw: &str) -> Result<LlmPricing, String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(raw) else {
        return Err(
            "must be a JSON object {\"input\":x,\"output\":y,\"cache_read\"?:z,\"cache_write\"?:w} (USD per million tokens)".into(),
        );
    };
    let get = |k: &str, required: bool| -> Result<Option<f64>, String> {
        match map.get(k) {
            None if required => Err(format!("{k}: is required")),
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(f) if f >= 0.0 => Ok(Some(f)),
                _ => Err(format!("{k}: must be a non-negative number")),
            },
        }
    };
    let p = LlmPricing {
        input: get("input", true)?.unwrap_or(0.0),
        output: get("output", true)?.unwrap_or(0.0),
        cache_read: get("cache_read", false)?,
        cache_write: get("cache_write", false)?,
    };
    for k in map.keys() {
        if !["input", "output", "cache_read", "cache_write"].contains(&k.as_str()) {
            return Err(format!("{k}: unknown key"));
        }
    }
    Ok(p)
}

/// Strict limit objects (§10.3): a JSON object of known keys, each a positive integer.
fn parse_limits(raw: &str, fields: &mut [(&str, &mut u64)]) -> Vec<String> {
    let known: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    let map = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return vec!["must be a JSON object".into()],
        Err(e) => return vec![format!("invalid JSON: {e}")],
    };
    let mut errors = Vec::new();
    for (key, value) in &map {
        match fields.iter_mut().find(|(k, _)| k == key) {
            None => errors.push(format!(
                "{key}: unknown key (known keys: {})",
                known.join(", ")
            )),
            Some((_, slot)) => match value.as_u64() {
                Some(v) if v > 0 => **slot = v,
                _ => errors.push(format!("{key}: must be a positive integer, got {value}")),
            },
        }
    }
    errors
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn base_env() -> HashMap<String, String> {
        [
            ("BETTER_AUTH_SECRET", "better-auth-secret"),
            ("UPLOAD_SIGNING_SECRET", "0123456789abcdef"),
            (
                "CONNECTION_ENCRYPTION_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = base_env();
        for (k, v) in pairs {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    fn errors_for(env: &HashMap<String, String>) -> Vec<String> {
        Config::from_map(env)
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn the_slot_pool_size_maps_from_the_seeds_sidecar_pool_size() {
        let size =
            |pairs: &[(&str, &str)]| Config::from_map(&with(pairs)).unwrap().run_slot_pool_size;
        assert_eq!(size(&[]), 2);
        assert_eq!(size(&[("SIDECAR_POOL_SIZE", "0")]), 0);
        assert_eq!(size(&[("SIDECAR_POOL_SIZE", "5")]), 5);
        assert_eq!(size(&[("RUN_SLOT_POOL_SIZE", "3")]), 3);
        assert_eq!(
            size(&[("RUN_SLOT_POOL_SIZE", "4"), ("SIDECAR_POOL_SIZE", "0")]),
            4
        );
    }

    #[test]
    fn defaults_are_tier_zero() {
        let c = Config::from_map(&base_env()).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.app_url, "http://localhost:3000");
        assert_eq!(c.tier(), 0);
        assert_eq!(c.sqlite_path, PathBuf::from("./data/appstrate.db"));
        assert_eq!(c.keys.active_id, "k1");
        assert_eq!(c.webhook_retry_delays_seconds.len(), 7);
    }

    #[test]
    fn all_missing_secrets_are_reported_together() {
        let errs = errors_for(&HashMap::new());
        assert!(errs
            .iter()
            .any(|e| e.starts_with("config error: BETTER_AUTH_SECRET:")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("config error: UPLOAD_SIGNING_SECRET:")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("config error: CONNECTION_ENCRYPTION_KEY:")));
        assert!(errs.iter().all(|e| e.contains("openssl rand -base64 32")));
    }

    #[test]
    fn empty_string_counts_as_unset() {
        let errs = errors_for(&with(&[("BETTER_AUTH_SECRET", "")]));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("BETTER_AUTH_SECRET"));
    }

    #[test]
    fn upload_secret_needs_sixteen_characters() {
        assert!(
            errors_for(&with(&[("UPLOAD_SIGNING_SECRET", "0123456789abcde")]))[0]
                .contains("UPLOAD_SIGNING_SECRET: must be at least 16 characters")
        );
        assert!(Config::from_map(&with(&[("UPLOAD_SIGNING_SECRET", "0123456789abcdef")])).is_ok());
    }

    #[test]
    fn encryption_key_must_be_32_bytes() {
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        for n in [31, 33] {
            let errs = errors_for(&with(&[("CONNECTION_ENCRYPTION_KEY", &b64(n))]));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains("CONNECTION_ENCRYPTION_KEY"));
            assert!(errs[0].contains(&format!("got {n}")));
        }
        assert!(
            errors_for(&with(&[("CONNECTION_ENCRYPTION_KEY", "not base64!")]))[0]
                .contains("CONNECTION_ENCRYPTION_KEY")
        );
        assert!(Config::from_map(&with(&[("CONNECTION_ENCRYPTION_KEY", &b64(32))])).is_ok());
    }

    #[test]
    fn app_url_rules() {
        assert!(errors_for(&with(&[("APP_URL", "appstrate.example.com")]))[0].contains("APP_URL"));
        let prod = |url: &str, env_var: &str| {
            errors_for(&with(&[("APP_URL", url), (env_var, "production")]))
        };
        assert!(prod("http://x.example", "APP_ENV")[0].contains("https"));
        assert!(prod("http://x.example", "NODE_ENV")[0].contains("https"));
        assert!(prod("http://localhost:3000", "APP_ENV").is_empty());
        assert!(prod("http://127.0.0.1:3000", "APP_ENV").is_empty());
        assert!(prod("https://x.example", "APP_ENV").is_empty());
        // APP_ENV wins over NODE_ENV.
        assert!(errors_for(&with(&[
            ("APP_URL", "http://x.example"),
            ("APP_ENV", "development"),
            ("NODE_ENV", "production")
        ]))
        .is_empty());
        assert!(!errors_for(&with(&[("APP_URL", "https://u:p@x.example")])).is_empty());
        assert!(!errors_for(&with(&[("APP_URL", "https://x.example/?a=1")])).is_empty());
    }

    #[test]
    fn limit_objects_are_strict() {
        let e = errors_for(&with(&[("PLATFORM_RUN_LIMITS", r#"{"foo":1}"#)]));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("config error: PLATFORM_RUN_LIMITS: foo: unknown key"));
        let e = errors_for(&with(&[("INLINE_RUN_LIMITS", r#"{"rate_per_min":0}"#)]));
        assert!(e[0].starts_with(
            "config error: INLINE_RUN_LIMITS: rate_per_min: must be a positive integer"
        ));
        assert!(!errors_for(&with(&[("INLINE_RUN_LIMITS", "[]")])).is_empty());
        assert!(!errors_for(&with(&[("INLINE_RUN_LIMITS", "{")])).is_empty());
        let c = Config::from_map(&with(&[(
            "PLATFORM_RUN_LIMITS",
            r#"{"max_concurrent_per_org":3}"#,
        )]))
        .unwrap();
        assert_eq!(c.platform_run_limits.max_concurrent_per_org, 3);
        assert_eq!(c.platform_run_limits.timeout_ceiling_seconds, 1800);
    }

    #[test]
    fn numeric_and_enum_validation_names_the_variable() {
        for (var, val) in [
            ("PORT", "0"),
            ("PORT", "70000"),
            ("PORT", "abc"),
            ("LOG_LEVEL", "verbose"),
            ("LOG_FORMAT", "xml"),
            ("RUN_ADAPTER", "podman"),
            ("SIDECAR_POOL_SIZE", "-1"),
            ("RUN_SLOT_POOL_SIZE", "two"),
            ("RUN_SLOT_MAX_IDLE_SECONDS", "0"),
            ("WORKSPACE_TMPFS_SIZE_MB", "8"),
            ("TRUST_PROXY", "maybe"),
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "http://x"),
            ("CONNECTION_ENCRYPTION_KEY_ID", "bad id!"),
        ] {
            let e = errors_for(&with(&[(var, val)]));
            assert_eq!(e.len(), 1, "{var}={val}: {e:?}");
            assert!(e[0].starts_with(&format!("config error: {var}:")), "{e:?}");
        }
        let e = errors_for(&with(&[
            ("RUN_HEARTBEAT_INTERVAL_SECONDS", "60"),
            ("RUN_STALL_THRESHOLD_SECONDS", "60"),
        ]));
        assert!(e[0].contains("RUN_STALL_THRESHOLD_SECONDS"));
    }

    #[test]
    fn s3_bucket_requires_region_and_defaults_path_style_with_endpoint() {
        let e = errors_for(&with(&[("S3_BUCKET", "b")]));
        assert!(e[0].starts_with("config error: S3_REGION:"));
        let c = Config::from_map(&with(&[
            ("S3_BUCKET", "b"),
            ("S3_REGION", "us-east-1"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
        ]))
        .unwrap();
        assert!(c.s3.unwrap().force_path_style);
    }

    #[test]
    fn redis_ca_cert_needs_rediss_and_a_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let (pem, not_pem) = (pem.to_string_lossy(), not_pem.to_string_lossy());
        let c = Config::from_map(&with(&[
            ("REDIS_URL", "rediss://redis.example:6380"),
            ("REDIS_CA_CERT", &pem),
        ]))
        .unwrap();
        assert_eq!(c.redis_ca_cert.unwrap().to_string_lossy(), pem);
        let e = errors_for(&with(&[
            ("REDIS_URL", "redis://x"),
            ("REDIS_CA_CERT", &pem),
        ]));
        assert!(
            e[0].starts_with("config error: REDIS_CA_CERT: is only used with a rediss://"),
            "{e:?}"
        );
        let e = errors_for(&with(&[
            ("REDIS_URL", "rediss://x"),
            ("REDIS_CA_CERT", &not_pem),
        ]));
        assert!(e[0].contains("holds no PEM certificate"), "{e:?}");
        let e = errors_for(&with(&[
            ("REDIS_URL", "rediss://x"),
            ("REDIS_CA_CERT", "/nonexistent/ca.pem"),
        ]));
        assert!(
            e[0].contains("REDIS_CA_CERT: cannot read /nonexistent/ca.pem"),
            "{e:?}"
        );
    }

    #[test]
    fn retired_keys_are_validated() {
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let c = Config::from_map(&with(&[(
            "CONNECTION_ENCRYPTION_KEYS",
            &format!(r#"{{"old":"{key}"}}"#),
        )]))
        .unwrap();
        assert!(c.keys.retired.contains_key("old"));
        let e = errors_for(&with(&[(
            "CONNECTION_ENCRYPTION_KEYS",
            &format!(r#"{{"k1":"{key}"}}"#),
        )]));
        assert!(e[0].contains("CONNECTION_ENCRYPTION_KEYS: k1: must differ"));
        let e = errors_for(&with(&[(
            "CONNECTION_ENCRYPTION_KEYS",
            r#"{"old":"AAAA"}"#,
        )]));
        assert!(e[0].contains("CONNECTION_ENCRYPTION_KEYS: old:"));
    }

    #[test]
    fn tiers_follow_the_set_variables() {
        let t = |pairs: &[(&str, &str)]| Config::from_map(&with(pairs)).unwrap().tier();
        assert_eq!(t(&[("REDIS_URL", "redis://x")]), 0);
        assert_eq!(t(&[("DATABASE_URL", "postgres://x")]), 1);
        assert_eq!(
            t(&[("DATABASE_URL", "postgres://x"), ("REDIS_URL", "redis://x")]),
            2
        );
        assert_eq!(
            t(&[
                ("DATABASE_URL", "postgres://x"),
                ("REDIS_URL", "redis://x"),
                ("RUN_ADAPTER", "docker")
            ]),
            3
        );
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c = Config::from_map(&with(&[
            ("LLM_BASE_URL", "http://x"),
            ("LLM_API_KEY", "sk-canary-123"),
            ("LLM_MODEL", "m"),
        ]))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-canary-123"));
        assert!(!dbg.contains("better-auth-secret"));
        assert!(!dbg.contains("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="));
        assert!(dbg.contains("[redacted]"));
    }

    #[test]
    fn dotenv_lines_are_counted_from_the_file_start() {
        let content = "# comment\nA=1\n\nB=\"two\nlines\"\nBAD LINE\nC=3\n";
        assert_eq!(dotenv_line_number(content, "A=1"), Some(2));
        assert_eq!(dotenv_line_number(content, "BAD LINE"), Some(6));
        assert_eq!(dotenv_line_number(content, "BAD LINE\n"), Some(6));
        assert_eq!(dotenv_line_number("\u{feff}X Y\n", "X Y"), Some(1));
        // The text must start a line: `1` inside `A=1` is not line 2.
        assert_eq!(dotenv_line_number(content, "lines\""), Some(5));
        assert_eq!(dotenv_line_number(content, "nowhere"), None);
    }

    #[test]
    fn dotenv_is_read_from_the_given_directory_only() {
        let parent = tempfile::tempdir().unwrap();
        let child = parent.path().join("child");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(
            parent.path().join(".env"),
            "APPSTRATE_DOTENV_TEST_PARENT=1\n",
        )
        .unwrap();
        assert_eq!(load_dotenv(&child), Ok(false));
        assert!(std::env::var("APPSTRATE_DOTENV_TEST_PARENT").is_err());

        std::fs::write(
            child.join(".env"),
            "# secrets\nAPPSTRATE_DOTENV_TEST_OK=yes\nAPPSTRATE_DOTENV_TEST_SECRET s3cr3t-canary\n",
        )
        .unwrap();
        let err = load_dotenv(&child).unwrap_err();
        assert!(
            err.contains(&format!("{}: line 3:", child.join(".env").display())),
            "{err}"
        );
        assert!(!err.contains("s3cr3t-canary"), "{err}");

        std::fs::write(child.join(".env"), "APPSTRATE_DOTENV_TEST_OK=yes\n").unwrap();
        assert_eq!(load_dotenv(&child), Ok(true));
        assert_eq!(std::env::var("APPSTRATE_DOTENV_TEST_OK").unwrap(), "yes");
    }
}

/// How long history is kept (retention job and `appstrate db prune`). A retention of 0 days keeps that
/// kind forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `RUN_RETENTION_DAYS` (90): finished runs, with their logs.
    pub run_days: u32,
    /// `RUN_LOG_RETENTION_DAYS` (30): log rows, also of runs that are kept.
    pub run_log_days: u32,
    /// `WEBHOOK_DELIVERY_RETENTION_DAYS` (30): webhook delivery attempts.
    pub webhook_delivery_days: u32,
    /// `RETENTION_INTERVAL_SECONDS` (3600): the pause between two retention sweeps.
    pub interval_seconds: u64,
    /// `RETENTION_BATCH_SIZE` (500): rows of each kind deleted per transaction.
    pub batch_size: u32,
}

impl RetentionConfig {
    fn read(r: &mut Reader) -> Self {
        let mut days = |var: &str, default: u32| match r.get(var) {
            None => default,
            Some(raw) => {
                match raw.trim().parse::<u32>() {
                    Ok(v) if v <= 36_500 => v,
                    _ => {
                        r.fail(
                        var,
                        format!("must be a number of days from 0 (keep forever) to 36500, got {raw:?}"),
                    );
                        default
                    }
                }
            }
        };
        let run_days = days("RUN_RETENTION_DAYS", 90);
        let run_log_days = days("RUN_LOG_RETENTION_DAYS", 30);
        let webhook_delivery_days = days("WEBHOOK_DELIVERY_RETENTION_DAYS", 30);
        let interval_seconds = r.positive("RETENTION_INTERVAL_SECONDS", 3600);
        let batch_size = r.positive("RETENTION_BATCH_SIZE", 500);
        let batch_size = if batch_size > 10_000 {
            r.fail(
                "RETENTION_BATCH_SIZE",
                format!("must be at most 10000 (rows per transaction), got {batch_size}"),
            );
            500
        } else {
            batch_size as u32
        };
        Self {
            run_days,
            run_log_days,
            webhook_delivery_days,
            interval_seconds,
            batch_size,
        }
    }
}
