-- A model call's usage event names the deployment of its model that served
-- it (routing across providers, base URLs and keys); empty for others.
ALTER TABLE usage_events ADD COLUMN deployment TEXT NOT NULL DEFAULT '';
