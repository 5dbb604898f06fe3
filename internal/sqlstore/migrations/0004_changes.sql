-- A counter bumped by every change to the tenancy tree or the policy, which
-- every instance polls to reload within a second; and platform settings
-- (read-only mode).

CREATE TABLE change_counter (
    id      INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO change_counter (id, version) VALUES (1, 1);

CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
