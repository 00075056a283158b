"""`Client`: the API's calls over a blocking ``httpx.Client``."""

from __future__ import annotations

import time
from datetime import timedelta
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, Union

import httpx

from . import _protocol as p
from ._errors import RunqError, Unreachable
from ._models import Job, JobPage, JobRequest, JobState, JobStatus, Priority, _seconds

TokenSource = Union[str, Callable[[], str], None]
"""A bearer token, or a function called before each request that returns one (to refresh it)."""

DEFAULT_TIMEOUT = 30.0
"""Seconds a request may take (a long-poll gets its hold on top)."""


class _Base:
    """What both clients share: where the API is, how to authenticate, the request options."""

    def __init__(self, base_url: str, token: TokenSource, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def _request_args(self, call: p.Call) -> dict[str, Any]:
        headers = {"Accept": "application/json", **call.headers}
        token = self._token() if callable(self._token) else self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "params": call.params,
            "headers": headers,
            "json": call.json,
            "timeout": httpx.Timeout(self._timeout + call.hold),
        }


class Client(_Base):
    """A blocking client of one runq API.

    >>> with Client("https://runq.example.com", token) as runq:
    ...     job = runq.submit("sleep", {"seconds": 2}, idempotency_key="order-42")
    ...     done = runq.wait(job.id, on_progress=lambda s: print(s.progress))

    ``token`` is a bearer token, or a function returning one (called before every request, so
    it can refresh). ``timeout`` is per request, in seconds. Pass ``http`` to use your own
    ``httpx.Client`` (proxies, TLS settings, transports); it is then yours to close.
    Every method raises an `ApiError` subclass when the API refuses (`NotFound`,
    `InvalidRequest`, ...) and `Unreachable` when it doesn't answer; only `wait` retries.
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client()

    def close(self) -> None:
        """Closes the connection pool (unless it was passed in as ``http``)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, call: p.Call) -> httpx.Response | Unreachable:
        args = self._request_args(call)
        try:
            return self._http.request(**args)
        except httpx.TransportError as e:
            return Unreachable(args["url"], e)

    def _call(self, call: p.Call) -> httpx.Response:
        answer = self._send(call)
        if isinstance(answer, Unreachable):
            raise answer
        return p.checked(answer)

    def submit(
        self,
        function: str,
        args: Any = None,
        *,
        priority: Priority | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        delay: float | timedelta | None = None,
        unique_key: str | None = None,
        debounce: float | timedelta | None = None,
        traceparent: str | None = None,
    ) -> Job:
        """Submits a job (``POST /jobs``) and returns it, queued.

        With ``idempotency_key`` a repeat of the same submit returns the first one's job
        (so a submit that failed on the way back is safe to send again); the same key with
        other arguments raises `Conflict`. ``unique_key``, ``delay`` and ``debounce`` are
        `JobRequest`'s. ``traceparent`` joins the job to your trace (W3C trace context).
        """
        request = JobRequest(function, args, priority, max_attempts, delay, unique_key, debounce)
        return p.job_of(self._call(p.submit_call(request, idempotency_key, traceparent)))

    def submit_batch(self, requests: Iterable[JobRequest], *, traceparent: str | None = None) -> list[Job]:
        """Submits up to 1000 jobs in one commit, all or none (``POST /jobs:batch``); the jobs
        in request order. Batches take no idempotency key."""
        return p.jobs_of(self._call(p.batch_call(list(requests), traceparent)))

    def status(self, job_id: p.JobId) -> JobStatus:
        """The job's status, progress and attempts (``GET /jobs/{id}/status``)."""
        return p.status_of(self._call(p.Call("GET", p.job_path(job_id, "/status"))))

    def get(self, job_id: p.JobId) -> Job:
        """The whole job, with its args, result or error (``GET /jobs/{id}``)."""
        return p.job_of(self._call(p.Call("GET", p.job_path(job_id))))

    def cancel(self, job_id: p.JobId) -> Job:
        """Cancels the job. One not yet running is ``cancelled`` at once; a running one gets
        ``cancel_requested`` and ends ``cancelled`` when its run sees it (`wait` for that).
        Raises `Conflict` when it already succeeded or failed."""
        return p.job_of(self._call(p.Call("POST", p.job_path(job_id, "/cancel"))))

    def retry(self, job_id: p.JobId) -> Job:
        """Queues a failed or cancelled job again with a fresh attempt budget; `Conflict` for
        any other status."""
        return p.job_of(self._call(p.Call("POST", p.job_path(job_id, "/retry"))))

    def delete(self, job_id: p.JobId) -> None:
        """Deletes a finished job and its runs; `Conflict` while it is unfinished."""
        self._call(p.Call("DELETE", p.job_path(job_id)))

    def jobs(
        self,
        *,
        status: JobState | None = None,
        function: str | None = None,
        parent: p.JobId | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of your jobs, newest first (``GET /jobs``); pass its ``next_cursor`` as
        ``cursor`` for the next."""
        return p.page_of(self._call(p.list_call(status, function, parent, limit, cursor)))

    def iter_jobs(
        self, *, status: JobState | None = None, function: str | None = None, parent: p.JobId | None = None
    ) -> Iterator[Job]:
        """Every job matching, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.jobs(status=status, function=function, parent=parent, limit=p.MAX_PAGE, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def wait(
        self,
        job_id: p.JobId,
        *,
        on_progress: Callable[[JobStatus], object] | None = None,
        on_retry: Callable[[RunqError, float], object] | None = None,
        timeout: float | timedelta | None = None,
        hold: int = p.DEFAULT_HOLD_SECONDS,
        max_outage: float = p.DEFAULT_MAX_OUTAGE,
    ) -> Job:
        """Waits for the job to finish and returns it (check ``status``: ``succeeded``,
        ``failed`` or ``cancelled``; its ``result`` or ``error``).

        Long-polls the status (``?wait=hold`` seconds, with the last ``ETag``, so a quiet job
        costs one request per ``hold``), at the pace the API asks for. ``on_progress`` gets
        every new status, the final one included. Connection failures and 408/429/502/503/504
        are retried with backoff (``on_retry`` gets the error and the pause), resuming where
        it was; after ``max_outage`` seconds of failures in a row the last error is raised.
        Raises `WaitTimeout` after ``timeout`` seconds (the job goes on), and the `ApiError`
        of any refusal (`NotFound`, `Unauthorized`, ...).
        """
        limit = _seconds(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        steps = p.follow(
            job_id, hold=max(0, min(hold, p.MAX_HOLD_SECONDS)), deadline=deadline, max_outage=max_outage
        )
        answer: p.Answer = None
        try:
            while True:
                step = steps.send(answer)
                answer = None
                if isinstance(step, p.Call):
                    answer = self._send(step)
                elif isinstance(step, p.Sleep):
                    if step.retrying is not None and on_retry is not None:
                        on_retry(step.retrying, step.seconds)
                    time.sleep(step.seconds)
                elif on_progress is not None:
                    on_progress(step.status)
        except StopIteration as done:
            job: Job = done.value
            return job
