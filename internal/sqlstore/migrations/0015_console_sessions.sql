-- Web console sessions (internal/console/session).
--
-- console_sessions: one signed-in browser. The browser holds a random token;
-- only its SHA-256 (hex) is kept here. key_id is the API key signed in with:
-- revoking it ends the session (checked on every request). csrf is the
-- per-session secret every form carries. Times are Unix microseconds.
CREATE TABLE console_sessions (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    tenant_id  TEXT NOT NULL DEFAULT '',
    key_id     TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX console_sessions_token ON console_sessions (token_hash);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
