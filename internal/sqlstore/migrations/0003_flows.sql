-- Flows (uploaded graphs, owned by projects), runs with their per-node
-- trace, and chat messages for Memory components.

CREATE TABLE flows (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    project_id    TEXT NOT NULL REFERENCES projects (id),
    name          TEXT NOT NULL,
    endpoint_name TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    format        TEXT NOT NULL DEFAULT '',
    data          TEXT NOT NULL,
    created_by    TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX flows_endpoint ON flows (tenant_id, endpoint_name);
CREATE INDEX flows_project ON flows (project_id);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    flow_id         TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    project_id      TEXT NOT NULL DEFAULT '',
    user_id         TEXT NOT NULL DEFAULT '',
    session_id      TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,
    error_code      TEXT NOT NULL DEFAULT '',
    error_message   TEXT NOT NULL DEFAULT '',
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    input_tokens    BIGINT NOT NULL DEFAULT 0,
    output_tokens   BIGINT NOT NULL DEFAULT 0,
    gpu_ms          BIGINT NOT NULL DEFAULT 0,
    cost_micros     BIGINT NOT NULL DEFAULT 0,
    steps           BIGINT NOT NULL DEFAULT 0,
    memory_enforced BIGINT NOT NULL DEFAULT 0,
    peak_memory     BIGINT NOT NULL DEFAULT 0,
    cpu_ms          BIGINT NOT NULL DEFAULT 0,
    output_preview  TEXT NOT NULL DEFAULT '',
    trace_json      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX runs_tenant ON runs (tenant_id, id);
CREATE INDEX runs_flow ON runs (flow_id, id);
CREATE INDEX runs_user ON runs (user_id, id);

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    flow_id     TEXT NOT NULL DEFAULT '',
    session_id  TEXT NOT NULL,
    sender      TEXT NOT NULL,
    sender_name TEXT NOT NULL DEFAULT '',
    text        TEXT NOT NULL,
    run_id      TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);
CREATE INDEX messages_session ON messages (tenant_id, session_id, id);
