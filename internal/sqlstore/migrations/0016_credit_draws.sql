-- Credit draws (policy.Credits.Draw): a slice of a scope's prepaid balance
-- turned into a grant (grant_id) on one of its budgets until the window
-- ends. settled_at is set once the window's use is in the ledger and what
-- it did not use beyond base_limit went back to the balance. No foreign
-- keys: a draw stays for the record.
CREATE TABLE credit_draws (
    id         TEXT PRIMARY KEY,
    scope      TEXT NOT NULL,
    tenant_id  TEXT NOT NULL DEFAULT '',
    dimension  TEXT NOT NULL,
    period     TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    base_limit BIGINT NOT NULL,
    grant_id   TEXT NOT NULL,
    window_end BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    settled_at BIGINT
);
CREATE INDEX credit_draws_due ON credit_draws (window_end) WHERE settled_at IS NULL;
CREATE INDEX credit_draws_window ON credit_draws (scope, dimension, period);
