-- Manual retries and bulk operations (`POST /jobs/{id}/retry`, `POST /operations`).

-- A manual retry gives a failed or cancelled job its attempt budget again without renumbering
-- its runs: `attempt` keeps counting (so the new runs' numbers follow the old `job_runs` rows),
-- `attempt_base` is the attempt the current budget started at and `max_attempts` moves to
-- `attempt_base + budget`, so `max_attempts - attempt_base` is always the submitted budget.
ALTER TABLE jobs ADD COLUMN attempt_base integer NOT NULL DEFAULT 0 CHECK (attempt_base >= 0);
-- How many times a client retried the job by hand (single or bulk).
ALTER TABLE jobs ADD COLUMN manual_retries integer NOT NULL DEFAULT 0 CHECK (manual_retries >= 0);

-- A bulk operation: what to do to which jobs, and how far it got. The API creates it and works
-- it at once under a lease; if that process dies, `runq.sweep` takes over a stale lease
-- (`maintenance::operations`) and carries on from what is left in `operation_jobs`.
CREATE TABLE operations (
    id             uuid PRIMARY KEY,
    owner          text        NOT NULL,   -- who asked (JWT `sub`)
    action         text        NOT NULL CHECK (action IN ('retry', 'cancel', 'delete')),
    filter         jsonb       NOT NULL,   -- the filter as asked, shown back
    -- The filter as applied. scope_owner NULL: every owner's jobs (an admin without `owner`).
    scope_owner    text,
    function       text,
    statuses       text[]      NOT NULL,
    error_kind     text,
    created_after  timestamptz,
    created_before timestamptz,
    -- Jobs created after the operation are never matched.
    created_at     timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished', 'failed')),
    -- Set once the matched jobs are frozen into operation_jobs (then `matched` is their count).
    frozen         boolean     NOT NULL DEFAULT false,
    matched        bigint      NOT NULL DEFAULT 0,
    done           bigint      NOT NULL DEFAULT 0,   -- matched jobs processed
    affected       bigint      NOT NULL DEFAULT 0,   -- of those, changed (the others had moved on)
    key_retention_secs float8  NOT NULL DEFAULT 0,   -- delete: how long idempotency keys outlive the jobs
    runner         uuid,                             -- the lease holder; fences every write
    lease_until    timestamptz,
    claims         integer     NOT NULL DEFAULT 1,   -- takeovers after a lost runner, bounded
    error          text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX operations_stale ON operations (lease_until) WHERE status = 'running';

-- The jobs an operation matched, frozen when it starts; a row is deleted in the same statement
-- that acts on its job, so a re-run batch can never act on a job twice.
CREATE TABLE operation_jobs (
    operation_id uuid NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    job_id       uuid NOT NULL,
    PRIMARY KEY (operation_id, job_id)
);
