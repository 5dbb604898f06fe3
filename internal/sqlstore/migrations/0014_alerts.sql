-- Quota threshold alerts (internal/alerts).
--
-- alert_webhooks: each tenant's alert endpoint, its signing secret sealed
-- with the server's secret (internal/sealed). Dropped with its tenant.
CREATE TABLE alert_webhooks (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- alert_events: one row per threshold crossed per scope, budget and period.
-- Its unique key is what makes "once" hold across the instances sharing
-- this database: the instance whose insert wins announces the event.
-- tenant_id is '' for the global scope.
CREATE TABLE alert_events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    dimension   TEXT NOT NULL,
    time_window TEXT NOT NULL,
    period      TEXT NOT NULL,
    threshold   INTEGER NOT NULL,
    used        BIGINT NOT NULL,
    lim         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX alert_events_once ON alert_events (scope, dimension, time_window, period, threshold);
CREATE INDEX alert_events_created ON alert_events (created_at);
-- alert_deliveries: the outbox and its log, one row per event and endpoint
-- (the tenant's webhook, the platform's). A pending row is due at
-- next_attempt_at; an instance claims an attempt by moving it ahead (and
-- counting the attempt), so a row whose instance died is retried.
CREATE TABLE alert_deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    target          TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_status     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    url             TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_attempt_at);
CREATE INDEX alert_deliveries_tenant ON alert_deliveries (tenant_id, id);
