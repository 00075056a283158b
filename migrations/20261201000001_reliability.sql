-- Reliability: one index per maintenance query, so none of them walks the backlog, and the
-- per-job counters that keep one bad job from blocking the others.

-- The relay's two questions, each on its own partial index: due jobs never published (by due
-- time), and published jobs nobody claimed within the redispatch window (by publish time). A
-- large backlog of dispatched, unclaimed jobs is in neither range, so a pass doesn't scan it.
CREATE INDEX jobs_relay_undispatched ON jobs (run_after) WHERE status = 'queued' AND dispatched_at IS NULL;
CREATE INDEX jobs_relay_stale ON jobs (dispatched_at) WHERE status = 'queued' AND dispatched_at IS NOT NULL;
-- Retry promotion: retrying jobs by due time.
CREATE INDEX jobs_retry_due ON jobs (run_after) WHERE status = 'retrying';
DROP INDEX jobs_dispatch_due;
-- Cleanup extends the keys of the jobs it deletes, by job id.
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);

-- Publishes of this job Pub/Sub refused (an attribute it rejects, a missing topic): the job
-- backs off alone and fails as `unpublishable` after a bounded number.
ALTER TABLE jobs ADD COLUMN publish_failures integer NOT NULL DEFAULT 0 CHECK (publish_failures >= 0);
-- Claims by workers that had no such function (a rolling deploy): released with a backoff and
-- failed as `unknown_function` after a bounded number, instead of looping.
ALTER TABLE jobs ADD COLUMN unknown_function_rounds integer NOT NULL DEFAULT 0 CHECK (unknown_function_rounds >= 0);
