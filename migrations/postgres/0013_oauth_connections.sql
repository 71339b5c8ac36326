-- OAuth2 connections (docs/connections.md): the provider clients an application registers, the pending
-- authorization requests, and the OAuth state of a connection. Keep in step with
-- migrations/sqlite/0013_oauth_connections.sql (only storage types differ).

-- A provider's OAuth client registered by an application for one integration auth.
CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    -- The integration's `@scope/name` and the key in its `auths`.
    package_id TEXT NOT NULL,
    auth_key TEXT NOT NULL,
    label TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- `v1:<kid>:<base64>` (§17); NULL for a public client. Never returned.
    client_secret_encrypted TEXT,
    is_default BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX oauth_clients_auth ON oauth_clients (application_id, package_id, auth_key);

-- An authorization request in flight: the state (hashed) binds the callback to the caller, the
-- application and the client; good for one callback, for ten minutes.
CREATE TABLE oauth_connect_states (
    state_hash TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    end_user_id TEXT REFERENCES end_users (id) ON DELETE CASCADE,
    -- Who started it (`apikey:<id>`, `user:<id>`, `admin:<id>`).
    actor TEXT NOT NULL,
    package_id TEXT NOT NULL,
    auth_key TEXT NOT NULL,
    oauth_client_id TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    -- The PKCE verifier, encrypted; NULL when the provider does not support PKCE.
    pkce_verifier_encrypted TEXT,
    redirect_uri TEXT NOT NULL,
    -- JSON array of the scopes asked for.
    scopes JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The OAuth side of a connection obtained by the connect flow (pasted connections have none). The tokens
-- themselves are in `connections.credentials_encrypted`.
CREATE TABLE connection_oauth (
    connection_id TEXT PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    oauth_client_id TEXT REFERENCES oauth_clients (id) ON DELETE SET NULL,
    -- `connected`, `needs_reconnect` or `revoked`
    status TEXT NOT NULL,
    -- The provider's words when it refused a refresh.
    status_message TEXT,
    expires_at TIMESTAMPTZ,
    -- JSON array of the granted scopes.
    scopes JSONB NOT NULL,
    -- JSON object of the identity mapped by `identity_claims`.
    account JSONB NOT NULL,
    -- The single-flight refresh lease: set by the instance refreshing, until this time.
    refreshing_until TIMESTAMPTZ,
    refreshed_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL
);
