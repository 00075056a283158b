-- A signal step without a timeout waited until 'infinity', which the API's timestamp type can't
-- hold (listing such a job panicked its request). It waits until 9999-12-31 instead: never due,
-- and a timestamp every client decodes. Same function otherwise.
CREATE OR REPLACE FUNCTION runq_step_runnable(step_job uuid) RETURNS void LANGUAGE plpgsql AS $$
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
                             CASE WHEN s.signal IS NULL THEN now() ELSE '9999-12-31 00:00:00+00'::timestamptz END
                         ELSE now() + make_interval(secs => (s.signal->>'timeout_secs')::float8) END,
        dispatched_at = NULL, updated_at = now()
    FROM workflow_steps s
    WHERE j.id = step_job AND s.job_id = j.id AND j.status = 'pending';
END;
$$;

UPDATE jobs SET run_after = '9999-12-31 00:00:00+00' WHERE run_after = 'infinity';
