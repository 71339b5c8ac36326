-- Counting open runs per application (GET /api/agents, package deletion) without scanning its history.
CREATE INDEX runs_application_status ON runs (application_id, status);
