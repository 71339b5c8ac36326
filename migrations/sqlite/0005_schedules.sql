-- Schedules (§18). Keep in step with migrations/postgres/0005_schedules.sql.
-- `actor_type` (`end_user`, `api_key` or `admin`) records who the schedule runs as, fixed at creation, so that
-- a deleted end-user actor is noticed even after `end_user_id` was set to NULL.

CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    package_id TEXT NOT NULL,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE SET NULL,
    api_key_id TEXT,
    actor_type TEXT NOT NULL,
    name TEXT,
    enabled INTEGER NOT NULL,
    cron_expression TEXT NOT NULL,
    timezone TEXT NOT NULL,
    input TEXT NOT NULL,
    version_override TEXT,
    last_run_at TEXT,
    next_run_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX schedules_application_created ON schedules (application_id, created_at);
CREATE INDEX schedules_enabled ON schedules (enabled);
