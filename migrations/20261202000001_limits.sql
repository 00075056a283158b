-- Flow control: concurrency and rate limits enforced at claim time across every worker, and
-- pauses of a queue or a function. Jobs of functions without a limit carry no limit keys and
-- never touch these tables (their claim is the one statement it was).

-- The limit keys a job must take a slot of before it runs: `<limit>` for a global limit,
-- `<limit>:<value>` for a keyed one (its owner, or a field of its args), fixed at submit.
ALTER TABLE jobs
    ADD COLUMN limit_keys  text[],
    -- The key (or pause) holding a queued job back until it is released; NULL once released.
    ADD COLUMN held_on     text,
    -- The run whose end released this job, so that worker can publish it at once.
    ADD COLUMN released_by uuid,
    -- Held by a rate, which reserved its start at `run_after`: it runs then without asking again.
    ADD COLUMN rate_reserved boolean NOT NULL DEFAULT false;

-- Runs per limit key, counted under the key's row lock by every limited claim.
CREATE INDEX jobs_limit_running ON jobs USING gin (limit_keys) WHERE status = 'running' AND limit_keys IS NOT NULL;
-- The jobs each key holds back, first come first released.
CREATE INDEX jobs_held ON jobs (held_on, created_at) WHERE status = 'queued' AND held_on IS NOT NULL;
-- What a finished run released, for its worker to publish.
CREATE INDEX jobs_released_by ON jobs (released_by) WHERE released_by IS NOT NULL;

-- Every declared limit with its effective values (the declaration's, unless an operator set
-- others at run time; those survive deploys until reset).
CREATE TABLE limits (
    name            text PRIMARY KEY,
    -- How a job's key is found: 'global', 'owner' or 'arg:<field>'.
    key_by          text NOT NULL,
    functions       text[] NOT NULL,
    concurrency     integer CHECK (concurrency >= 0),
    rate_per_second double precision CHECK (rate_per_second > 0),
    burst           integer NOT NULL DEFAULT 1 CHECK (burst >= 1),
    declared        jsonb NOT NULL,
    overridden_by   text,
    overridden_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per limit key in use: the lock every claim and release of the key serialises on, and
-- the rate limit's state: GCRA's theoretical arrival time over starts and reserved starts
-- (`tat`), the same over actual starts (`started`), and where the next held job that came back
-- late waits (`next_hold`), so a late bunch is spread at the rate again.
CREATE TABLE limit_keys (
    key       text PRIMARY KEY,
    tat       timestamptz,
    started   timestamptz,
    next_hold timestamptz
);

-- Paused queues and functions: their queued jobs are held, their running jobs finish.
CREATE TABLE pauses (
    scope     text NOT NULL CHECK (scope IN ('queue', 'function')),
    name      text NOT NULL,
    paused_by text NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, name)
);

-- When a limited run ends (whatever ended it: its outcome, the reaper, a release at shutdown),
-- the next job held on each of its concurrency keys is released (due now, undispatched, so its
-- worker or the relay publishes it) in the same transaction. The
-- keys' rows are locked first, as claims lock them, so a claim holding a job back and a run
-- ending at the same instant can't miss each other: whichever locks second sees the other.
CREATE FUNCTION runq_release_slots() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    PERFORM 1 FROM limit_keys WHERE key = ANY (NEW.limit_keys) ORDER BY key FOR UPDATE;
    FOR k IN SELECT lk FROM unnest(NEW.limit_keys) AS lk
             JOIN limits l ON l.name = split_part(lk, ':', 1) AND l.concurrency IS NOT NULL ORDER BY lk
    LOOP
        UPDATE jobs SET held_on = NULL, dispatched_at = NULL, run_after = now(), released_by = NEW.id, updated_at = now()
        WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND held_on = k AND NOT rate_reserved
                    ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_release_slots AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status <> 'running' AND NEW.limit_keys IS NOT NULL)
    EXECUTE FUNCTION runq_release_slots();
