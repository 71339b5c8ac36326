-- Agent memory (memories, pinned slots, checkpoint), run documents and uploads (docs/documents.md).
-- Keep in step with migrations/sqlite/0011_memory_documents.sql.
--
-- `scope_key` is `<application>|<agent>|<end-user or "-">`: one agent's state in one application for one
-- end-user (or for none). It is NOT NULL so that it can be unique, which a nullable end-user column
-- cannot be.

CREATE TABLE agent_memories (
    id TEXT PRIMARY KEY,
    scope_key TEXT NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    -- UTF-8 bytes of `content`, summed against the per-agent byte limit.
    bytes BIGINT NOT NULL,
    run_id TEXT,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX agent_memories_scope ON agent_memories (scope_key, created_at);

CREATE TABLE agent_pinned (
    id TEXT PRIMARY KEY,
    scope_key TEXT NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value JSONB NOT NULL,
    -- UTF-8 bytes of the name and the value's JSON text, summed against the per-agent byte limit.
    bytes BIGINT NOT NULL,
    run_id TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX agent_pinned_name ON agent_pinned (scope_key, name);

CREATE TABLE agent_checkpoints (
    scope_key TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE CASCADE,
    value JSONB NOT NULL,
    run_id TEXT NOT NULL,
    run_created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE run_documents (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    end_user_id TEXT,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    storage_key TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);
CREATE INDEX run_documents_run ON run_documents (run_id, created_at);
CREATE INDEX run_documents_application_created ON run_documents (application_id, created_at, id);
CREATE INDEX run_documents_created ON run_documents (created_at);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    storage_key TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);
CREATE INDEX uploads_expires ON uploads (expires_at);
