-- Plans, per-scope limits, temporary grants, and durable usage: events
-- (idempotent by id) and per-scope day/month roll-ups.

CREATE TABLE plans (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    priority    TEXT NOT NULL,
    limits_json TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE scope_limits (
    scope       TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL DEFAULT '',
    plan        TEXT NOT NULL DEFAULT '',
    limits_json TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX scope_limits_tenant ON scope_limits (tenant_id);
CREATE INDEX scope_limits_plan ON scope_limits (plan);

CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,
    tenant_id   TEXT NOT NULL DEFAULT '',
    limits_json TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX grants_scope ON grants (scope);
CREATE INDEX grants_tenant ON grants (tenant_id, expires_at);

CREATE TABLE usage_events (
    id            TEXT PRIMARY KEY,
    at            BIGINT NOT NULL,
    tenant_id     TEXT NOT NULL DEFAULT '',
    user_id       TEXT NOT NULL DEFAULT '',
    project_id    TEXT NOT NULL DEFAULT '',
    kind          TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL DEFAULT '',
    requests      BIGINT NOT NULL DEFAULT 0,
    input_tokens  BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    gpu_ms        BIGINT NOT NULL DEFAULT 0,
    cost_micros   BIGINT NOT NULL DEFAULT 0,
    scopes        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX usage_events_tenant_at ON usage_events (tenant_id, at);
CREATE INDEX usage_events_user_at ON usage_events (user_id, at);

-- period is the window in the scope's time zone: '2026-11-27' (day) or
-- '2026-11' (month).
CREATE TABLE usage_rollups (
    scope       TEXT NOT NULL,
    period      TEXT NOT NULL,
    tenant_id   TEXT NOT NULL DEFAULT '',
    requests    BIGINT NOT NULL DEFAULT 0,
    tokens      BIGINT NOT NULL DEFAULT 0,
    gpu_ms      BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period)
);
CREATE INDEX usage_rollups_period ON usage_rollups (period);
