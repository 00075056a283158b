-- The dashboard, for acting (`/dashboard/functions`, `/dashboard/signals`, `/dashboard/workers`
-- and the new filters of `GET /jobs` and `POST /operations`).

-- Runs by finish time: the per-function stats and the workers' finished runs read only the
-- window asked for (15 minutes to 24 hours), never the whole history.
CREATE INDEX job_runs_finished ON job_runs (finished_at) WHERE finished_at IS NOT NULL;

-- The two signals (and filters) that no index served: jobs Pub/Sub refused to take that are still
-- queued, and jobs whose messages were dead-lettered. Both are rare, so the partial indexes are
-- small, and listing them newest first is a walk of the index.
CREATE INDEX jobs_publish_failing ON jobs (id DESC) WHERE status = 'queued' AND publish_failures > 0;
CREATE INDEX jobs_dead_lettered ON jobs (id DESC) WHERE dead_letters > 0;

-- A bulk operation's filter beyond the columns it had (id, error text, an args field, held,
-- publish failures, dead letters, queue, due, lost leases), as the store's `Narrowing` in JSON.
-- NULL: none of them.
ALTER TABLE operations ADD COLUMN narrowing jsonb;
