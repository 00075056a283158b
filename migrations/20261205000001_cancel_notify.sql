-- A running job asked to stop (a cancel, a bulk cancel, its workflow failing or being cancelled)
-- notifies `runq_cancel` with `job_id:claim_id`, so the worker running that claim stops it at once
-- instead of at its next heartbeat (a third of the lease). The heartbeat still carries the flag: a
-- notification missed while a worker's listener reconnects only delays the stop to the next beat.
CREATE FUNCTION runq_notify_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('runq_cancel', NEW.id::text || ':' || NEW.claim_id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_cancel AFTER UPDATE OF cancel_requested ON jobs
FOR EACH ROW
WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested AND NEW.status = 'running'
      AND NEW.claim_id IS NOT NULL)
EXECUTE FUNCTION runq_notify_cancel();
