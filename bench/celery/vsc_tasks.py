"""The Celery app of bench/vs-celery: one no-op task, configured as the comparison states.

Settings (the script header and bench/README.md say the same): prefork pool, concurrency 2,
task_acks_late=True, worker_prefetch_multiplier=1, Redis broker and Redis result backend
(VSC_BROKER / VSC_BACKEND, two databases of a Redis started for the run), JSON serialization.
"""

import os
import time

from celery import Celery

app = Celery("vsc_tasks", broker=os.environ["VSC_BROKER"], backend=os.environ["VSC_BACKEND"])
app.conf.update(
    worker_pool="prefork",
    worker_concurrency=2,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="vsc.noop")
def noop():
    """Does nothing; returns when it started (time.time()), for submit->start latency."""
    return time.time()
