-- The jobs table: Postgres is the source of truth for every job (ARCHITECTURE.md section 2).
-- Statuses are text with a CHECK rather than an enum type so adding one is a one-line migration.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,               -- UUIDv7: time-ordered, so keyset pagination is by id
    owner            text        NOT NULL,           -- JWT `sub` of the submitter
    function         text        NOT NULL,
    priority         text        NOT NULL CHECK (priority IN ('high', 'medium', 'low')),
    args             jsonb       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    progress         real        NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    message          text,
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts >= 1),
    run_after        timestamptz NOT NULL DEFAULT now(),
    -- The claim: a fresh random id per run fences every later write of that run.
    claim_id         uuid,
    worker_id        text,
    lease_until      timestamptz,
    -- Outbox marker: NULL until the message is published; cleared by every transition into queued.
    dispatched_at    timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    idempotency_key  text,                           -- shown to clients; idempotency_keys enforces uniqueness
    parent_id        uuid REFERENCES jobs (id) ON DELETE SET NULL,
    result           jsonb,
    result_uri       text,
    error            jsonb,                          -- {kind, message, retryable}
    trace_context    text,                           -- W3C traceparent of the submit
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,                    -- when cleanup may delete a finished job
    CHECK (attempt <= max_attempts)
);

-- Listing: newest first per owner, optionally by status or function.
CREATE INDEX jobs_owner_id ON jobs (owner, id DESC);
CREATE INDEX jobs_owner_status_id ON jobs (owner, status, id DESC);
CREATE INDEX jobs_owner_function_id ON jobs (owner, function, id DESC);
-- Admin listing by status across owners.
CREATE INDEX jobs_status_id ON jobs (status, id DESC);
-- Relay: queued jobs that are due, and retrying jobs whose backoff has passed.
CREATE INDEX jobs_dispatch_due ON jobs (run_after) WHERE status IN ('queued', 'retrying');
-- Reaper: running jobs by lease expiry.
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE status = 'running';
-- Cleanup: finished jobs by expiry.
CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL;
-- Fan-out: children of a parent.
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;

-- Idempotency keys outlive their job's cleanup by a retention window, so a late retry of a
-- submit can't create a duplicate. The hash is of the request body, to tell replay from conflict.
CREATE TABLE idempotency_keys (
    owner        text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    job_id       uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
