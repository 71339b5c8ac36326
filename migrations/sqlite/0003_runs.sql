-- Runs and their logs. Keep in step with migrations/postgres/0003_runs.sql.

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
    run_number INTEGER NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    result TEXT,
    error TEXT,
    model_label TEXT,
    timeout_seconds INTEGER NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    duration INTEGER,
    created_at TEXT NOT NULL,
    token_usage TEXT NOT NULL,
    cost REAL,
    cost_pricing_status TEXT NOT NULL,
    sink_secret_encrypted TEXT NOT NULL,
    sink_closed_at TEXT,
    last_event_sequence INTEGER NOT NULL,
    last_heartbeat_at TEXT,
    first_event_at TEXT,
    boot_deadline_at TEXT,
    scheduled_for TEXT,
    inline_manifest TEXT,
    inline_prompt TEXT,
    output_schema TEXT,
    last_output TEXT,
    CONSTRAINT runs_schedule_occurrence_key UNIQUE (schedule_id, scheduled_for)
);
CREATE INDEX runs_application_created ON runs (application_id, created_at);
CREATE INDEX runs_org_status ON runs (org_id, status);

CREATE TABLE run_logs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    level TEXT NOT NULL,
    event TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX run_logs_run ON run_logs (run_id, id);
