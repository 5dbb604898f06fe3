-- Usage events the store refused as malformed (a value it cannot hold, never
-- an outage), set aside so that they cannot block the events behind them and
-- listed to platform admins. event is the event as JSON with every text made
-- storable (NUL and invalid UTF-8 escaped); event_key, the SHA-256 of the
-- event id, makes a replayed event land here once.
CREATE TABLE usage_quarantine (
    id        TEXT PRIMARY KEY,
    event_key TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    tenant_id TEXT NOT NULL DEFAULT '',
    event     TEXT NOT NULL,
    error     TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX usage_quarantine_event ON usage_quarantine (event_key);
