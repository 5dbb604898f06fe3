-- Requests for more quota: a user asks for more of one dimension of one
-- scope for a while; an admin approves (which inserts a grant, in the same
-- transaction) or denies it. amount is in the dimension's unit (micro-USD
-- for cost); limits_json is the grant asked for; duration_ns how long it
-- was asked for. No foreign keys: a request outlives its requester and its
-- scope, for the record.
CREATE TABLE quota_requests (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL DEFAULT '',
    scope          TEXT NOT NULL,
    dimension      TEXT NOT NULL,
    amount         BIGINT NOT NULL,
    limits_json    TEXT NOT NULL,
    duration_ns    BIGINT NOT NULL,
    reason         TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    decided_by     TEXT NOT NULL DEFAULT '',
    decided_at     BIGINT,
    note           TEXT NOT NULL DEFAULT '',
    granted_amount BIGINT NOT NULL DEFAULT 0,
    grant_id       TEXT NOT NULL DEFAULT '',
    expires_at     BIGINT
);
CREATE INDEX quota_requests_tenant ON quota_requests (tenant_id, status);
CREATE INDEX quota_requests_requester ON quota_requests (requested_by, status);
