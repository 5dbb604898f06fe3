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

-- Prepaid credit: a balance of tokens and cost (micro-USD) per scope that
-- does not reset with the calendar, its history (one row per change, with
-- the balance after it), and single-use redeem codes, stored as the hex
-- SHA-256 of the code.
CREATE TABLE credit_balances (
    scope       TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL DEFAULT '',
    tokens      BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX credit_balances_tenant ON credit_balances (tenant_id);

CREATE TABLE credit_entries (
    id                  TEXT PRIMARY KEY,
    scope               TEXT NOT NULL,
    tenant_id           TEXT NOT NULL DEFAULT '',
    kind                TEXT NOT NULL,
    tokens              BIGINT NOT NULL DEFAULT 0,
    cost_micros         BIGINT NOT NULL DEFAULT 0,
    balance_tokens      BIGINT NOT NULL,
    balance_cost_micros BIGINT NOT NULL,
    note                TEXT NOT NULL DEFAULT '',
    actor               TEXT NOT NULL DEFAULT '',
    code_id             TEXT NOT NULL DEFAULT '',
    at                  BIGINT NOT NULL
);
CREATE INDEX credit_entries_scope ON credit_entries (scope, id);

CREATE TABLE credit_codes (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    scope          TEXT NOT NULL DEFAULT '',
    prefix         TEXT NOT NULL,
    hash           TEXT NOT NULL UNIQUE,
    tokens         BIGINT NOT NULL DEFAULT 0,
    cost_micros    BIGINT NOT NULL DEFAULT 0,
    note           TEXT NOT NULL DEFAULT '',
    created_by     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT,
    redeemed_by    TEXT NOT NULL DEFAULT '',
    redeemed_scope TEXT NOT NULL DEFAULT '',
    redeemed_at    BIGINT
);
CREATE INDEX credit_codes_tenant ON credit_codes (tenant_id, id);
