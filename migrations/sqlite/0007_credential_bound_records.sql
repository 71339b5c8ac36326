-- Records bound to the credential that made them. Keep in step with
-- migrations/postgres/0007_credential_bound_records.sql.
--
-- Idempotency records now belong to the caller's full identity (credential and impersonated end-user) and
-- keep the stored answer encrypted (`response_enc`, a keyring envelope). Earlier records held answers in
-- plaintext, one-time webhook secrets included, and were keyed by application only: they are dropped, not
-- converted (they live 24 hours; a client retrying across the upgrade creates once more).
DROP TABLE idempotency_keys;
CREATE TABLE idempotency_keys (
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    credential TEXT NOT NULL,
    end_user_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    status_code INTEGER,
    response_enc TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (org_id, application_id, credential, end_user_id, idem_key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

-- A schedule made by an admin token records the token, so that each fire can check it still exists and is
-- not revoked; `disabled_reason` says why the platform disabled a schedule (NULL when a caller did).
ALTER TABLE schedules ADD COLUMN admin_token_id TEXT;
ALTER TABLE schedules ADD COLUMN disabled_reason TEXT;
