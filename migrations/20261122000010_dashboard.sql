-- The dashboard's counts by function and status (`GET /dashboard/stats`).
-- No other index leads with `function` across owners, so without this one the count reads every
-- row of `jobs`; with it the count is an index-only scan. The cost is one more index entry per
-- insert and per status change (both already non-HOT updates, since `status` is indexed).
CREATE INDEX jobs_function_status ON jobs (function, status);
