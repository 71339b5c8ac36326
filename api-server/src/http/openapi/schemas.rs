//! Documentation-only types: the problem+json error body and the shapes of the JSON bodies that handlers
//! build by hand. Nothing constructs them; `openapi_answers_match_their_documented_schemas` checks real
//! answers against them.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::http::routes::end_users::EndUserDto;
use crate::http::routes::packages::{PackageDto, VersionDto};

// ---- Error body ----

/// An RFC 9457 problem: every error answer of the API.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `https://docs.appstrate.dev/errors/<code>`
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// `urn:appstrate:request:<requestId>`
    instance: String,
    /// Stable machine-readable code, e.g. `validation_failed`, `not_found`, `rate_limited`.
    code: String,
    request_id: String,
    /// The parameter or header at fault.
    param: Option<String>,
    /// Seconds to wait (429).
    retry_after: Option<u64>,
    /// Field errors of `validation_failed` and `invalid_package`.
    errors: Option<Vec<ProblemFieldError>>,
}

/// One invalid field.
#[derive(Serialize, ToSchema)]
pub struct ProblemFieldError {
    field: String,
    code: String,
    message: String,
}

// ---- Request bodies ----

/// `POST /api/applications`
#[derive(Serialize, ToSchema)]
pub struct CreateApplicationRequest {
    /// 1-100 characters
    name: String,
}

/// `PATCH /api/applications/{id}`
#[derive(Serialize, ToSchema)]
pub struct UpdateApplicationRequest {
    name: Option<String>,
}

/// `POST /api/api-keys`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKeyRequest {
    /// 1-100 characters
    name: String,
    /// Scopes from `GET /api/api-keys/available-scopes` (default: all)
    scopes: Option<Vec<String>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/end-users` (absent fields are unset) and `PATCH /api/end-users/{id}` (null clears).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndUserRequest {
    /// At most 200 characters
    name: Option<String>,
    email: Option<String>,
    /// Your own id for this person, unique in the application (at most 255 characters)
    external_id: Option<String>,
    /// At most 50 keys of 1-40 characters; values are strings (≤ 500 characters), numbers, booleans or null
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// `POST /api/agents/{scope}/{name}/run`
#[derive(Serialize, ToSchema)]
pub struct StartRunRequest {
    /// The agent's input, validated against its input schema
    #[schema(value_type = Object)]
    input: Option<Value>,
    /// A model label overriding the default
    model: Option<String>,
}

/// `POST /api/runs/inline`
#[derive(Serialize, ToSchema)]
pub struct InlineRunRequest {
    /// An agent manifest (as in manifest.json)
    #[schema(value_type = Object)]
    manifest: Value,
    /// The agent's prompt
    prompt: String,
    #[schema(value_type = Object)]
    input: Option<Value>,
    model: Option<String>,
}

/// `POST /api/packages` and the JSON form of `POST /api/packages/{scope}/{name}/versions`
#[derive(Serialize, ToSchema)]
pub struct CreatePackageRequest {
    /// manifest.json of the archive
    #[schema(value_type = Object)]
    manifest: Value,
    /// Other files: path → UTF-8 content
    files: Option<BTreeMap<String, String>>,
}

/// The multipart form of an archive upload.
#[derive(Serialize, ToSchema)]
pub struct ArchiveUpload {
    /// The .afps archive
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// An .afps archive: a ZIP file.
#[derive(Serialize, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Archive(Vec<u8>);

/// `PUT /api/packages/{scope}/{name}/connections/{authKey}`
#[derive(Serialize, ToSchema)]
pub struct PutConnectionRequest {
    /// Validated against `auths.<authKey>.credentials.schema`; stored encrypted, never returned
    #[schema(value_type = Object)]
    credentials: Value,
}

/// `POST /api/agents/{scope}/{name}/schedules` (`cron_expression` required) and
/// `PUT /api/schedules/{id}` (every field optional).
#[derive(Serialize, ToSchema)]
pub struct ScheduleRequest {
    name: Option<String>,
    /// 5 or 6 cron fields, or `@daily`, `@hourly`, …
    cron_expression: Option<String>,
    /// IANA time zone (default UTC)
    timezone: Option<String>,
    #[schema(value_type = Object)]
    input: Option<Value>,
    /// A version or dist-tag to run instead of the latest
    version_override: Option<String>,
    enabled: Option<bool>,
}

/// `POST /api/webhooks` (`url` and `events` required) and `PUT /api/webhooks/{id}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRequest {
    /// `https://` (plain `http://` for localhost outside production)
    url: Option<String>,
    /// e.g. `run.success`, `run.failed`
    events: Option<Vec<String>>,
    /// Only runs of this package (`@scope/name`)
    package_id: Option<String>,
    /// `full` or `summary`
    payload_mode: Option<String>,
    enabled: Option<bool>,
}

/// `POST /api/webhooks/{id}/rotate-secret`
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotateSecretRequest {
    /// How long the previous secret keeps signing deliveries
    previous_secret_expires_in_seconds: Option<u64>,
}

/// A runner event (`POST /api/runs/{id}/events`, §12.3): a CloudEvents 1.0 envelope with a per-run
/// `sequence`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
pub struct RunEvent {
    /// `1.0`
    specversion: String,
    /// e.g. `appstrate.log`, `appstrate.progress`, `appstrate.output`
    #[serde(rename = "type")]
    kind: String,
    /// `/afps/runs/{id}`
    source: String,
    /// Unique event id
    id: String,
    /// RFC 3339
    time: String,
    /// `application/json`
    datacontenttype: String,
    #[schema(value_type = Object)]
    data: Value,
    /// 1, 2, 3, … per run
    sequence: u64,
    subject: Option<String>,
}

/// The runner's final report (`POST /api/runs/{id}/events/finalize`, §12.4).
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct FinalizeRequest {
    /// `success`, `failed`, `timeout` or `cancelled` (absent: decided from the events)
    status: Option<String>,
    #[schema(value_type = Option<Object>)]
    output: Option<Value>,
    /// Final text (at most 64 KiB)
    text: Option<String>,
    /// `{message, code?}`
    #[schema(value_type = Option<Object>)]
    error: Option<Value>,
    /// Token usage
    #[schema(value_type = Option<Object>)]
    usage: Option<Value>,
    durationMs: Option<i64>,
}

// ---- Response bodies ----

/// A run (`object: "run"`).
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct Run {
    id: String,
    object: String,
    packageId: Option<String>,
    orgId: String,
    applicationId: String,
    endUserId: Option<String>,
    apiKeyId: Option<String>,
    scheduleId: Option<String>,
    /// `package` or `inline`
    kind: String,
    agent_scope: Option<String>,
    agent_name: Option<String>,
    version_ref: Option<String>,
    runNumber: Option<i64>,
    /// `pending`, `running`, `success`, `failed`, `timeout` or `cancelled`
    status: String,
    #[schema(value_type = Object)]
    input: Value,
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    error: Option<String>,
    model_label: Option<String>,
    timeout_seconds: Option<i64>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Milliseconds
    duration: Option<i64>,
    createdAt: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = Option<Object>)]
    token_usage: Option<Value>,
    cost: Option<f64>,
    cost_pricing_status: Option<String>,
    /// The documents the run published, `{id, name, mediaType, size}` (`GET /api/runs/{id}` only)
    #[schema(value_type = Option<Vec<Object>>)]
    documents: Option<Vec<Value>>,
}

/// One log row of a run.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct RunLog {
    id: i64,
    runId: String,
    #[serde(rename = "type")]
    kind: String,
    level: String,
    event: Option<String>,
    message: Option<String>,
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    createdAt: chrono::DateTime<chrono::Utc>,
}

/// The answer of an import or publication.
#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    package: PackageDto,
    version: VersionDto,
    /// false when identical bytes were already stored
    created: bool,
}

/// A schedule.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct Schedule {
    id: String,
    packageId: String,
    applicationId: String,
    endUserId: Option<String>,
    name: Option<String>,
    enabled: bool,
    cron_expression: String,
    timezone: String,
    #[schema(value_type = Object)]
    input: Value,
    version_override: Option<String>,
    last_run_at: Option<chrono::DateTime<chrono::Utc>>,
    next_run_at: Option<chrono::DateTime<chrono::Utc>>,
    createdAt: chrono::DateTime<chrono::Utc>,
    updatedAt: chrono::DateTime<chrono::Utc>,
}

/// A webhook (`object: "webhook"`). `secret` (`whsec_…`) appears only when created or rotated.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct Webhook {
    id: String,
    object: String,
    applicationId: String,
    url: String,
    events: Vec<String>,
    packageId: Option<String>,
    payloadMode: String,
    enabled: bool,
    previousSecretExpiresAt: Option<chrono::DateTime<chrono::Utc>>,
    createdAt: chrono::DateTime<chrono::Utc>,
    updatedAt: chrono::DateTime<chrono::Utc>,
    secret: Option<String>,
}

/// One delivery attempt of a webhook.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct WebhookDelivery {
    id: String,
    eventId: String,
    eventType: String,
    attempt: i64,
    status: String,
    statusCode: Option<i64>,
    latencyMs: Option<i64>,
    error: Option<String>,
    createdAt: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/api-keys/available-scopes`
#[derive(Serialize, ToSchema)]
pub struct ScopeList {
    scopes: Vec<String>,
}

/// `GET /health` (§22.3): the same document with 200 and 503.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct Health {
    /// `healthy`, `degraded` or `unhealthy`
    status: String,
    #[schema(value_type = Object)]
    version: Value,
    uptime_ms: u64,
    tier: u8,
    /// `none` (processes) or `container`
    isolation: String,
    /// Where agents' `bash` commands run: `container`, `unisolated` (process mode with
    /// `ALLOW_UNISOLATED_BASH`) or `off`
    bash: String,
    #[schema(value_type = Object)]
    adapters: Value,
    #[schema(value_type = Object)]
    checks: Value,
    /// `{enabled, desired, ready}` of the run slot pool (the seed's name).
    #[schema(value_type = Object)]
    sidecar_pool: Value,
    /// `{enabled, desired, ready, creating, failed}`: the run slot pool (Docker mode).
    #[schema(value_type = Object)]
    run_slots: Value,
}

/// The event sink's answer.
#[derive(Serialize, ToSchema)]
pub struct SinkReply {
    ok: bool,
    /// `accepted`, `buffered`, `replay`, …
    outcome: Option<String>,
    sequence: Option<u64>,
    /// The run's status (finalize)
    status: Option<String>,
}

macro_rules! list_schema {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Serialize, ToSchema)]
        #[allow(non_snake_case)]
        pub struct $name {
            /// Always `list`
            object: String,
            data: Vec<$item>,
            /// More items follow `startingAfter` = the last id (a `Link: rel="next"` header gives the URL)
            hasMore: bool,
        }
    };
}

list_schema!(
    ApplicationList,
    crate::http::routes::applications::ApplicationDto,
    "A page of applications"
);
list_schema!(
    ApiKeyList,
    crate::http::routes::api_keys::ApiKeyDto,
    "A page of API keys"
);
list_schema!(EndUserList, EndUserDto, "A page of end-users");
list_schema!(PackageList, PackageDto, "A page of packages");
list_schema!(VersionList, VersionDto, "A page of versions");
list_schema!(AgentList, crate::packages::AgentSummary, "A page of agents");
list_schema!(RunList, Run, "A page of runs");
list_schema!(RunLogList, RunLog, "Log rows, oldest first");
list_schema!(ScheduleList, Schedule, "A page of schedules");
list_schema!(WebhookList, Webhook, "A page of webhooks");
list_schema!(
    WebhookDeliveryList,
    WebhookDelivery,
    "A page of delivery attempts"
);
