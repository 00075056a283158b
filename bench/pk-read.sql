-- bench/vs-celery's Postgres primary-key read ceiling: pgbench runs this at the status
-- look-ups' concurrency over a 100,000-row table shaped like a status read.
\set id random(1, 100000)
SELECT status, progress FROM pk_read WHERE id = :id;
