"""`AsyncClient`: the same calls as `Client` over an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import inspect
import time
from datetime import timedelta
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Iterable

import httpx

from . import _protocol as p
from ._errors import RunqError, Unreachable
from ._models import Job, JobPage, JobRequest, JobState, JobStatus, Priority, _seconds
from ._sync import DEFAULT_TIMEOUT, TokenSource, _Base


class AsyncClient(_Base):
    """`Client` for asyncio: the same methods, awaited. Callbacks of `wait` may be plain
    functions or coroutine functions."""

    def __init__(
        self,
        base_url: str,
        token: TokenSource = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()

    async def aclose(self) -> None:
        """Closes the connection pool (unless it was passed in as ``http``)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send(self, call: p.Call) -> httpx.Response | Unreachable:
        args = self._request_args(call)
        try:
            return await self._http.request(**args)
        except httpx.TransportError as e:
            return Unreachable(args["url"], e)

    async def _call(self, call: p.Call) -> httpx.Response:
        answer = await self._send(call)
        if isinstance(answer, Unreachable):
            raise answer
        return p.checked(answer)

    async def submit(
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
        """`Client.submit`."""
        request = JobRequest(function, args, priority, max_attempts, delay, unique_key, debounce)
        return p.job_of(await self._call(p.submit_call(request, idempotency_key, traceparent)))

    async def submit_batch(self, requests: Iterable[JobRequest], *, traceparent: str | None = None) -> list[Job]:
        """`Client.submit_batch`."""
        return p.jobs_of(await self._call(p.batch_call(list(requests), traceparent)))

    async def status(self, job_id: p.JobId) -> JobStatus:
        """`Client.status`."""
        return p.status_of(await self._call(p.Call("GET", p.job_path(job_id, "/status"))))

    async def get(self, job_id: p.JobId) -> Job:
        """`Client.get`."""
        return p.job_of(await self._call(p.Call("GET", p.job_path(job_id))))

    async def cancel(self, job_id: p.JobId) -> Job:
        """`Client.cancel`."""
        return p.job_of(await self._call(p.Call("POST", p.job_path(job_id, "/cancel"))))

    async def retry(self, job_id: p.JobId) -> Job:
        """`Client.retry`."""
        return p.job_of(await self._call(p.Call("POST", p.job_path(job_id, "/retry"))))

    async def delete(self, job_id: p.JobId) -> None:
        """`Client.delete`."""
        await self._call(p.Call("DELETE", p.job_path(job_id)))

    async def jobs(
        self,
        *,
        status: JobState | None = None,
        function: str | None = None,
        parent: p.JobId | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """`Client.jobs`."""
        return p.page_of(await self._call(p.list_call(status, function, parent, limit, cursor)))

    async def iter_jobs(
        self, *, status: JobState | None = None, function: str | None = None, parent: p.JobId | None = None
    ) -> AsyncIterator[Job]:
        """`Client.iter_jobs`."""
        cursor: str | None = None
        while True:
            page = await self.jobs(status=status, function=function, parent=parent, limit=p.MAX_PAGE, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def wait(
        self,
        job_id: p.JobId,
        *,
        on_progress: Callable[[JobStatus], object] | None = None,
        on_retry: Callable[[RunqError, float], object] | None = None,
        timeout: float | timedelta | None = None,
        hold: int = p.DEFAULT_HOLD_SECONDS,
        max_outage: float = p.DEFAULT_MAX_OUTAGE,
    ) -> Job:
        """`Client.wait`; cancelling the task stops waiting (the job goes on)."""
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
                    answer = await self._send(step)
                elif isinstance(step, p.Sleep):
                    if step.retrying is not None and on_retry is not None:
                        await _called(on_retry, step.retrying, step.seconds)
                    await asyncio.sleep(step.seconds)
                elif on_progress is not None:
                    await _called(on_progress, step.status)
        except StopIteration as done:
            job: Job = done.value
            return job


async def _called(callback: Callable[..., object], *args: Any) -> None:
    """Calls ``callback``, awaiting what it returns when that is awaitable."""
    outcome = callback(*args)
    if inspect.isawaitable(outcome):
        await outcome
