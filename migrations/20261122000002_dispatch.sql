-- Dispatch and execution: dead-letter rounds of a job that was never claimed.
-- A push that Cloud Run refuses (429 at max instances) counts as a delivery attempt; after the
-- subscription's max attempts the message is dead-lettered and runq re-dispatches it later.
-- After several such rounds the job fails as `undeliverable`.
ALTER TABLE jobs ADD COLUMN dead_letters integer NOT NULL DEFAULT 0 CHECK (dead_letters >= 0);
