-- Runs and their logs. Keep in step with migrations/sqlite/0003_runs.sql.

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    package_id TEXT,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE SET NULL,
    api_key_id TEXT,
    schedule_id TEXT,
    kind TEXT NOT NULL,
    agent_scope TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    version_ref TEXT,
    run_number BIGINT NOT NULL,
    status TEXT NOT NULL,
    input JSONB NOT NULL,
    result JSONB,
    error TEXT,
    model_label TEXT,
    timeout_seconds BIGINT NOT NULL,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    duration BIGINT,
    created_at TIMESTAMPTZ NOT NULL,
    token_usage JSONB NOT NULL,
    cost DOUBLE PRECISION,
    cost_pricing_status TEXT NOT NULL,
    sink_secret_encrypted TEXT NOT NULL,
    sink_closed_at TIMESTAMPTZ,
    last_event_sequence BIGINT NOT NULL,
    last_heartbeat_at TIMESTAMPTZ,
    first_event_at TIMESTAMPTZ,
    boot_deadline_at TIMESTAMPTZ,
    scheduled_for TIMESTAMPTZ,
    inline_manifest JSONB,
    inline_prompt TEXT,
    output_schema JSONB,
    last_output JSONB,
    CONSTRAINT runs_schedule_occurrence_key UNIQUE (schedule_id, scheduled_for)
);
CREATE INDEX runs_application_created ON runs (application_id, created_at);
CREATE INDEX runs_org_status ON runs (org_id, status);

CREATE TABLE run_logs (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    level TEXT NOT NULL,
    event TEXT NOT NULL,
    message TEXT NOT NULL,
    data JSONB,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX run_logs_run ON run_logs (run_id, id);
