-- N finished jobs (owner 'prefill'), as a long-running deployment keeps them until cleanup:
-- 95% succeeded, 4% failed, 1% cancelled, created over the past 30 days, time-ordered
-- UUIDv7-shaped ids, expiring 30 days from now (so the cleanup sweep leaves them alone during
-- a bench run). Run by `bench/e2e.rs --prefill N` after the migrations (it substitutes
-- :prefill_rows), or by hand:
--   psql -v prefill_rows=1000000 -f bench/prefill.sql runq_bench_e2e
INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, run_after,
                  result, error, created_at, started_at, finished_at, updated_at, expires_at)
SELECT (lpad(to_hex(floor(extract(epoch FROM t.created) * 1000)::bigint), 12, '0') || '7000' || '8000'
        || lpad(to_hex(t.g), 12, '0'))::uuid,
       'prefill',
       (ARRAY['noop', 'echo', 'report', 'resize'])[1 + t.g % 4],
       (ARRAY['high', 'medium', 'low'])[1 + t.g % 3],
       '{}'::jsonb,
       t.status,
       1,
       3,
       t.created,
       CASE WHEN t.status = 'succeeded' THEN '{"ok": true}'::jsonb END,
       CASE WHEN t.status = 'failed' THEN '{"kind": "error", "message": "boom", "retryable": false}'::jsonb END,
       t.created,
       t.created + interval '2 ms',
       t.created + interval '5 ms',
       t.created + interval '5 ms',
       now() + interval '30 days'
FROM (SELECT g,
             now() - interval '30 days' + (interval '30 days' / :prefill_rows) * g AS created,
             CASE WHEN g % 100 < 95 THEN 'succeeded' WHEN g % 100 < 99 THEN 'failed' ELSE 'cancelled' END AS status
      FROM generate_series(1, :prefill_rows) AS g) AS t;
