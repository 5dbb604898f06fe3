-- Chat history belongs to the user who had the conversation: Memory reads
-- only the caller's own messages, whatever session id another user picks.
ALTER TABLE messages ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
CREATE INDEX messages_owner ON messages (tenant_id, user_id, session_id, id);
