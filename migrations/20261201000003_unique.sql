-- Unique jobs and debounce: at most one live (queued, retrying or running) job per owner, key
-- and slot. Plain unique submits use slot 0 only; a debounced submit whose slot-0 job already
-- runs queues its follow-up in slot 1 (docs/architecture.md, "Unique jobs and debounce").
ALTER TABLE jobs
    ADD COLUMN unique_key  text,
    ADD COLUMN unique_slot smallint NOT NULL DEFAULT 0 CHECK (unique_slot IN (0, 1));

CREATE UNIQUE INDEX jobs_unique_live ON jobs (owner, unique_key, unique_slot)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'retrying', 'running');
