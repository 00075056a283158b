"""A client of runq's HTTP API for backends: submit background jobs, follow them, wait for them.

    from runq_client import Client

    with Client("https://runq.example.com", token) as runq:
        job = runq.submit("resize", {"image": "a.png"}, idempotency_key="upload-17")
        done = runq.wait(job.id, on_progress=lambda s: print(f"{s.progress:.0%} {s.message}"))
        print(done.status, done.result or done.error)

Layout:

- ``_sync``: `Client`, one method per endpoint, blocking.
- ``_async``: `AsyncClient`, the same methods for asyncio.
- ``_protocol``: the calls without I/O, and waiting as a generator of steps both clients drive.
- ``_models``: `Job`, `JobStatus`, `JobError`, `JobPage`, `JobRequest`.
- ``_errors``: the exceptions, one per problem status the API answers.
"""

from ._async import AsyncClient
from ._errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    RunqError,
    ServerError,
    Unauthorized,
    Unreachable,
    UnsupportedMediaType,
    WaitTimeout,
)
from ._models import FINISHED, Job, JobError, JobPage, JobRequest, JobState, JobStatus, Priority
from ._sync import Client, TokenSource

__all__ = [
    "FINISHED",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "Job",
    "JobError",
    "JobPage",
    "JobRequest",
    "JobState",
    "JobStatus",
    "NotFound",
    "PayloadTooLarge",
    "Priority",
    "ProtocolError",
    "RateLimited",
    "RequestTimeout",
    "RunqError",
    "ServerError",
    "TokenSource",
    "Unauthorized",
    "Unreachable",
    "UnsupportedMediaType",
    "WaitTimeout",
]
