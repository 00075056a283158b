-- One row per run of a job: when it was claimed and by whom, how it ended, and when it was
-- due to be retried. The history behind the dashboard's timeline and the recorded backoff gaps.
-- Written in the same statement as the claim and the outcome, so it costs no extra commit.
CREATE TABLE job_runs (
    claim_id    uuid PRIMARY KEY,
    job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    worker_id   text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text,        -- succeeded | retrying | failed | cancelled | released | reaped
    error       jsonb,
    retry_at    timestamptz  -- when a retrying job became due again
);
CREATE INDEX job_runs_job ON job_runs (job_id, started_at);
