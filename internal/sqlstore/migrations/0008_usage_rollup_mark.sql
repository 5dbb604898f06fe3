-- On SQLite the roll-ups trail the events: a write commits only its events,
-- and their use is folded into usage_rollups later, in a transaction that
-- also moves usage_rollup_mark to the highest events rowid folded. Events
-- above the mark were committed but not yet folded; opening the store folds
-- them (after a crash they are exactly the use the roll-ups lack). The one
-- mark row is written by the store at its first open after this migration,
-- at the events' highest rowid then: every earlier event was rolled up in
-- its own transaction. PostgreSQL keeps rolling up in the events'
-- transaction and leaves the table empty.
--
-- local_day is the event's day in its tenant's time zone (the day period of
-- its scopes other than global; its month is the first seven characters),
-- so that events can be rolled up again without the zone: '' in events
-- stored before this migration.
ALTER TABLE usage_events ADD COLUMN local_day TEXT NOT NULL DEFAULT '';
CREATE TABLE usage_rollup_mark (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    last_rowid BIGINT NOT NULL
);
