-- Tenancy tree, API keys and the audit log. Portable SQL: the same file runs
-- on SQLite and PostgreSQL. Times are Unix microseconds (BIGINT).

CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    timezone     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX tenants_name ON tenants (name);

CREATE TABLE departments (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    parent_id    TEXT REFERENCES departments (id),
    name         TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX departments_name ON departments (tenant_id, COALESCE(parent_id, ''), name);
CREATE INDEX departments_parent ON departments (parent_id);

CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    department_id TEXT REFERENCES departments (id),
    name          TEXT NOT NULL,
    display_name  TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX projects_name ON projects (tenant_id, name);
CREATE INDEX projects_department ON projects (department_id);

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT REFERENCES tenants (id),
    name         TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    email        TEXT NOT NULL DEFAULT '',
    role         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_name ON users (COALESCE(tenant_id, ''), name);

CREATE TABLE memberships (
    user_id    TEXT NOT NULL REFERENCES users (id),
    project_id TEXT NOT NULL REFERENCES projects (id),
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, project_id)
);
CREATE INDEX memberships_project ON memberships (project_id);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    prefix     TEXT NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    user_id    TEXT NOT NULL REFERENCES users (id),
    tenant_id  TEXT REFERENCES tenants (id),
    project_id TEXT REFERENCES projects (id),
    hash       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (hash);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_project ON api_keys (project_id);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor_user  TEXT NOT NULL DEFAULT '',
    actor_key   TEXT NOT NULL DEFAULT '',
    tenant_id   TEXT NOT NULL DEFAULT '',
    action      TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    before_json TEXT,
    after_json  TEXT
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
