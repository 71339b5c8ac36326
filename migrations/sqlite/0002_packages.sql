-- AFPS packages, their immutable versions, per-application installs, and integration connections.
-- Keep in step with migrations/postgres/0002_packages.sql (only storage types differ).

CREATE TABLE packages (
    id TEXT PRIMARY KEY,
    -- NULL for system packages (synced from SYSTEM_PACKAGES_DIR at boot).
    org_id TEXT REFERENCES organizations (id) ON DELETE CASCADE,
    -- `@scope/name`
    package_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    latest_version TEXT NOT NULL,
    display_name TEXT,
    description TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT packages_org_package_key UNIQUE (org_id, package_id)
);
-- NULLs are distinct in the unique constraint above, so system ids get their own index.
CREATE UNIQUE INDEX packages_system_package_key ON packages (package_id) WHERE org_id IS NULL;
CREATE INDEX packages_created ON packages (created_at, id);

CREATE TABLE package_versions (
    id INTEGER PRIMARY KEY,
    package_pk TEXT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    integrity TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    CONSTRAINT package_versions_package_version_key UNIQUE (package_pk, version)
);

CREATE TABLE package_installs (
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    package_pk TEXT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (application_id, package_pk)
);
CREATE INDEX package_installs_package ON package_installs (package_pk);

CREATE TABLE connections (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    -- NULL for the application's own connection.
    end_user_id TEXT REFERENCES end_users (id) ON DELETE CASCADE,
    -- The integration's `@scope/name`.
    package_id TEXT NOT NULL,
    auth_key TEXT NOT NULL,
    -- `v1:<kid>:<base64>` (§17); never returned.
    credentials_encrypted TEXT NOT NULL,
    -- The credential field names (never values).
    fields TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT connections_end_user_key UNIQUE (application_id, end_user_id, package_id, auth_key)
);
CREATE UNIQUE INDEX connections_application_key ON connections (application_id, package_id, auth_key)
    WHERE end_user_id IS NULL;
