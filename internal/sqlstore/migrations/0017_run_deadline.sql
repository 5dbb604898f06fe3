-- A run's deadline (its start plus its run timeout): a run still open
-- well past it was left by an instance that stopped, and is ended as
-- interrupted (run.Service.ReconcileLost).
ALTER TABLE runs ADD COLUMN deadline_at BIGINT;
CREATE INDEX runs_open ON runs (deadline_at) WHERE ended_at IS NULL;
