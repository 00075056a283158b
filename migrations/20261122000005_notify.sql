-- Status long-polls (`GET /jobs/{id}/status?wait=N`) are woken by NOTIFY, not by polling.
-- Only changes a poller can see notify: status, progress, message (not heartbeats or the
-- dispatched mark). The payload is the job id; one listener per API process fans it out.
CREATE FUNCTION runq_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('runq_jobs', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify AFTER UPDATE OF status, progress, message ON jobs
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status
      OR OLD.progress IS DISTINCT FROM NEW.progress
      OR OLD.message IS DISTINCT FROM NEW.message)
EXECUTE FUNCTION runq_notify_job();
