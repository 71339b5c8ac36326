-- Webhooks and their delivery attempts (§19). Keep in step with migrations/postgres/0006_webhooks.sql.
-- Secrets are stored encrypted (keyring envelopes). During a rotation the previous secret stays valid until
-- `previous_secret_expires_at`: deliveries are signed with both.

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    package_id TEXT,
    payload_mode TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    secret_enc TEXT NOT NULL,
    previous_secret_enc TEXT,
    previous_secret_expires_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX webhooks_application_created ON webhooks (application_id, created_at);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_code INTEGER,
    latency_ms INTEGER,
    error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_webhook_created ON webhook_deliveries (webhook_id, created_at);
CREATE UNIQUE INDEX webhook_deliveries_attempt ON webhook_deliveries (webhook_id, event_id, attempt);
