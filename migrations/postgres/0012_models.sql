-- Models and providers per organization, and the usage ledger (docs/models.md). Keep in step with
-- migrations/sqlite/0011_models.sql (only storage types differ).

-- A provider key of an organization: an API shape, an endpoint and the key, encrypted (§17).
CREATE TABLE model_provider_credentials (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    -- `openai`, `anthropic` or `openai-compatible`
    provider_id TEXT NOT NULL,
    base_url TEXT NOT NULL,
    -- `v1:<kid>:<base64>`; never returned.
    api_key_encrypted TEXT NOT NULL,
    -- The model ids the provider listed at the last refresh (JSON array); NULL before any.
    available_models JSONB,
    models_refreshed_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT model_provider_credentials_org_label_key UNIQUE (org_id, label)
);

-- A model an organization offers: a provider model id on one of its credentials, with its prices in
-- USD per million tokens (NULL input and output prices: unpriced).
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL REFERENCES model_provider_credentials (id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    label TEXT NOT NULL,
    context_window BIGINT,
    input_price DOUBLE PRECISION,
    output_price DOUBLE PRECISION,
    cache_read_price DOUBLE PRECISION,
    cache_write_price DOUBLE PRECISION,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT models_org_label_key UNIQUE (org_id, label)
);
CREATE INDEX models_credential ON models (credential_id);

-- Model choices. `model_id` has no foreign key on purpose: a deleted model stays named here, and a run
-- that would use it fails with an error saying which choice to change.
CREATE TABLE org_default_models (
    org_id TEXT PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE application_default_models (
    application_id TEXT PRIMARY KEY REFERENCES applications (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE agent_models (
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- The agent's `@scope/name`.
    package_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (application_id, package_id)
);

-- The model a run resolved at creation: where the choice came from, the organization's model (NULL for
-- the instance default), and its prices then (used if the model is deleted while the run is going).
CREATE TABLE run_models (
    run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    model_ref TEXT,
    model_id TEXT NOT NULL,
    pricing JSONB
);

-- The usage ledger: one row per model call, priced at the time of the call. `run_id` has no foreign key:
-- the ledger outlives run retention.
CREATE TABLE model_usage (
    id BIGSERIAL PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    model_ref TEXT,
    model_id TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    cost DOUBLE PRECISION,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX model_usage_org_created ON model_usage (org_id, created_at);
CREATE INDEX model_usage_run ON model_usage (run_id);
