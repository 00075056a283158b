-- Cleanup: finished jobs by status and finish time, so retention per status stays on an index.
CREATE INDEX jobs_finished ON jobs (status, finished_at) WHERE finished_at IS NOT NULL;
