-- A run's usage event carries what it held: the peak memory of its sandbox
-- (bytes; 0 when it ran in process) and its CPU time.
ALTER TABLE usage_events ADD COLUMN peak_memory BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN cpu_ms BIGINT NOT NULL DEFAULT 0;
