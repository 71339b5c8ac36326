-- Costs that follow live work, not history. Keep in step with migrations/sqlite/0009_history_indexes.sql.

-- The watchdog and the boot orphan sweep read only open runs: a partial index holds just those.
CREATE INDEX runs_open ON runs (created_at) WHERE status IN ('pending', 'running');
-- Retention walks runs oldest first.
CREATE INDEX runs_created ON runs (created_at);
-- The next run number of an agent, read by every run start.
CREATE INDEX runs_agent_number ON runs (application_id, agent_scope, agent_name, run_number);
-- Cursor pages of GET /api/runs seek to (created_at, id) within the application.
DROP INDEX runs_application_created;
CREATE INDEX runs_application_created ON runs (application_id, created_at, id);
-- Retention walks webhook delivery attempts oldest first.
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
