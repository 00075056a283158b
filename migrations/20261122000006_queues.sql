-- Queues of their own: a function may be routed to a queue other than its priority's (a
-- `heavy` queue on a bigger worker service, like Celery's task_routes). NULL: the priority's.
ALTER TABLE jobs ADD COLUMN queue text CHECK (queue ~ '^[a-z][a-z0-9-]{0,29}$');
