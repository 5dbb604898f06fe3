-- The API keys Sluice forwards with on a user's or a project's behalf to an
-- upstream service (the LangFlow server it fronts), sealed with the
-- server's secret (internal/sealed): never stored in the clear.
CREATE TABLE upstream_keys (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    service    TEXT NOT NULL,
    scope      TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    hint       TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, service, scope)
);
