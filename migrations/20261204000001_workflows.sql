-- Workflows: DAGs of steps, each step an ordinary job (docs/workflows.md).
--
-- A step whose parents haven't all finished is `pending`; a step that waits for a person's
-- decision is `waiting`. The transition "parent finished -> child runnable" is the trigger at the
-- end of this file: it runs inside the statement that finishes the parent (a worker's outcome,
-- the reaper, a cancel, a signal), so it happens exactly once, in the same transaction, whatever
-- path finished the parent. Jobs outside a workflow (`workflow_id IS NULL`) never enter it.

ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('pending', 'waiting', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE jobs ADD COLUMN workflow_id uuid;
CREATE INDEX jobs_workflow ON jobs (workflow_id, id) WHERE workflow_id IS NOT NULL;
-- Signal steps by their timeout (the sweep fails them, or applies their default decision).
CREATE INDEX jobs_waiting_due ON jobs (run_after) WHERE status = 'waiting';

CREATE TABLE workflows (
    id               uuid PRIMARY KEY,              -- UUIDv7; a fan-out from a run uses its job's id
    owner            text        NOT NULL,
    name             text,                          -- the template's name; NULL when submitted whole
    args             jsonb       NOT NULL DEFAULT '{}',
    -- The first step that failed or was cancelled ({step, job_id, status, error}): the workflow
    -- has failed, and every step not yet run, bar those that run on failure, was cancelled.
    failure          jsonb,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_owner_id ON workflows (owner, id DESC);
-- A submit's `Idempotency-Key`, or a schedule's firing time: a repeat answers with the first.
ALTER TABLE workflows ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX workflows_owner_key ON workflows (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The graph facts of each step's job, apart from the hot `jobs` row.
CREATE TABLE workflow_steps (
    job_id          uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    workflow_id     uuid    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    step            text    NOT NULL,
    -- A fan-out member: its position and element (for_each), or its position among a run's children.
    item_index      integer,
    item            jsonb,
    pending_parents integer NOT NULL DEFAULT 0 CHECK (pending_parents >= 0),
    failed_parents  integer NOT NULL DEFAULT 0 CHECK (failed_parents >= 0),
    run_on_failure  boolean NOT NULL DEFAULT false,
    -- A signal step: {timeout_secs, on_timeout, on_reject: {back_to, max_rounds}}.
    signal          jsonb,
    -- Times a rejection sent the workflow back through this step.
    round           integer NOT NULL DEFAULT 0,
    -- What the step reads: its parents' results by step name (or a summary of a large fan-in),
    -- and a reviewer's notes on a rework; written when it becomes runnable.
    inputs          jsonb
);
CREATE INDEX workflow_steps_workflow ON workflow_steps (workflow_id, step);

-- parent -> child: the child runs after the parent; it reads the parent's result under `name`.
CREATE TABLE workflow_edges (
    parent uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    child  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name   text NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE INDEX workflow_edges_child ON workflow_edges (child, parent);

-- Every decision a signal step received, with who sent it; one per step and round.
CREATE TABLE workflow_signals (
    job_id       uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    round        integer     NOT NULL,
    decision     text        NOT NULL CHECK (decision IN ('approve', 'reject')),
    data         jsonb       NOT NULL DEFAULT '{}',
    sent_by      text        NOT NULL,
    request_hash bytea       NOT NULL,
    -- The sender's `Idempotency-Key`, if it gave one: a repeat of it is answered, not applied.
    request_key  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, round),
    UNIQUE (job_id, request_key)
);

-- A step that became runnable: its inputs written, and `queued` (published by the relay, or at
-- once by whoever finished its parent) or `waiting` for its signal until its timeout.
CREATE FUNCTION runq_step_runnable(step_job uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    inline_limit constant integer := 100;
    -- A fan-out member after a member of another fan-out over the same list reads that one
    -- member as an object, not as a list of one.
    is_member boolean := (SELECT item_index IS NOT NULL FROM workflow_steps WHERE job_id = step_job);
BEGIN
    UPDATE workflow_steps s SET inputs = coalesce(s.inputs, '{}'::jsonb) || coalesce((
        SELECT jsonb_object_agg(g.name, g.value) FROM (
            SELECT e.name,
                   CASE WHEN count(*) = 1 AND (bool_and(ps.item_index IS NULL) OR is_member) THEN (array_agg(
                            jsonb_build_object('job_id', p.id, 'index', ps.item_index, 'item', ps.item,
                                               'status', p.status, 'result', p.result,
                                               'result_uri', p.result_uri, 'error', p.error)))[1]
                        WHEN count(*) <= inline_limit THEN jsonb_agg(
                            jsonb_build_object('job_id', p.id, 'index', ps.item_index, 'item', ps.item,
                                               'status', p.status, 'result', p.result,
                                               'result_uri', p.result_uri, 'error', p.error)
                            ORDER BY ps.item_index, p.id)
                        ELSE jsonb_build_object(
                            'total', count(*),
                            'succeeded', count(*) FILTER (WHERE p.status = 'succeeded'),
                            'failed', count(*) FILTER (WHERE p.status = 'failed'),
                            'cancelled', count(*) FILTER (WHERE p.status = 'cancelled'),
                            'paged', true)
                   END AS value
            FROM workflow_edges e
            JOIN jobs p ON p.id = e.parent
            LEFT JOIN workflow_steps ps ON ps.job_id = p.id
            WHERE e.child = step_job
            GROUP BY e.name) g), '{}'::jsonb)
    WHERE s.job_id = step_job;

    UPDATE jobs j SET
        status = CASE WHEN s.signal IS NULL THEN 'queued' ELSE 'waiting' END,
        run_after = CASE WHEN s.signal IS NULL OR s.signal->'timeout_secs' IS NULL
                              OR jsonb_typeof(s.signal->'timeout_secs') <> 'number' THEN
                             CASE WHEN s.signal IS NULL THEN now() ELSE 'infinity'::timestamptz END
                         ELSE now() + make_interval(secs => (s.signal->>'timeout_secs')::float8) END,
        dispatched_at = NULL, updated_at = now()
    FROM workflow_steps s
    WHERE j.id = step_job AND s.job_id = j.id AND j.status = 'pending';
END;
$$;

-- The first failure of a workflow: every step not yet finished, bar those that run on failure,
-- is cancelled (a running one is asked to stop). Each cancel re-enters the trigger below, which
-- passes it on to that step's children.
CREATE FUNCTION runq_stop_workflow(wf uuid, why text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs j SET
        status = CASE WHEN j.status = 'running' THEN j.status ELSE 'cancelled' END,
        finished_at = CASE WHEN j.status = 'running' THEN j.finished_at ELSE now() END,
        error = CASE WHEN j.status = 'running' THEN j.error
                     ELSE jsonb_build_object('kind', 'cancelled', 'message', why, 'retryable', false) END,
        claim_id = CASE WHEN j.status = 'running' THEN j.claim_id END,
        cancel_requested = true, updated_at = now()
    WHERE j.workflow_id = wf AND j.status IN ('pending', 'waiting', 'queued', 'retrying', 'running')
      AND NOT EXISTS (SELECT 1 FROM workflow_steps s WHERE s.job_id = j.id AND s.run_on_failure);
END;
$$;

CREATE FUNCTION runq_step_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    me workflow_steps%ROWTYPE;
    child record;
    unsuccessful boolean := NEW.status <> 'succeeded';
BEGIN
    SELECT * INTO me FROM workflow_steps WHERE job_id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF unsuccessful AND NOT me.run_on_failure THEN
        UPDATE workflows SET failure = jsonb_build_object('step', me.step, 'job_id', NEW.id, 'status', NEW.status,
                                                          'error', NEW.error),
                             updated_at = now()
        WHERE id = NEW.workflow_id AND failure IS NULL;
        IF FOUND THEN
            PERFORM runq_stop_workflow(NEW.workflow_id,
                format('step %s ended %s, so the workflow stopped', me.step, NEW.status));
        END IF;
    END IF;
    FOR child IN
        UPDATE workflow_steps s SET pending_parents = s.pending_parents - 1,
                                    failed_parents = s.failed_parents + unsuccessful::int
        FROM workflow_edges e
        WHERE e.parent = NEW.id AND s.job_id = e.child AND s.pending_parents > 0
        RETURNING s.job_id, s.pending_parents, s.failed_parents, s.run_on_failure
    LOOP
        IF child.pending_parents = 0 THEN
            IF child.failed_parents = 0 OR child.run_on_failure THEN
                PERFORM runq_step_runnable(child.job_id);
            ELSE
                UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now(), cancel_requested = true,
                                error = jsonb_build_object('kind', 'cancelled', 'retryable', false,
                                                           'message', 'a step it runs after did not succeed')
                WHERE id = child.job_id AND status = 'pending';
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_step_finished AFTER UPDATE OF status ON jobs
FOR EACH ROW
WHEN (NEW.workflow_id IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
      AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
EXECUTE FUNCTION runq_step_finished();
