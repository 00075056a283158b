"""The API's calls without I/O: each endpoint as a `Call` to send and a decoder of its answer,
and `follow`, the whole of waiting for a job as a generator of steps (send this, sleep that,
report this status) that the sync and the async client each drive with their own I/O."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Mapping, Union
from urllib.parse import quote
from uuid import UUID

import httpx

from ._errors import ApiError, ProtocolError, RunqError, Unreachable, WaitTimeout, error_from_response
from ._models import Job, JobPage, JobRequest, JobStatus

JobId = Union[str, UUID]

MAX_HOLD_SECONDS = 30
"""The longest ``?wait=`` the API accepts."""
DEFAULT_HOLD_SECONDS = 25
"""How long each long-poll of ``wait`` may be held: under any load balancer's idle timeout."""
MIN_PACE = 0.1
"""Never ask again sooner than this after a change, whatever ``poll_after_ms`` says."""
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0
MAX_PAGE = 200
"""The largest page ``GET /jobs`` answers."""
DEFAULT_MAX_OUTAGE = 600.0
"""``wait`` gives up after the API has failed continuously for this many seconds."""


@dataclass(frozen=True)
class Call:
    """One request, relative to the API's base URL."""

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    hold: float = 0.0
    """Seconds the API may hold the answer (a long-poll), added to the request timeout."""


@dataclass(frozen=True)
class Sleep:
    """Pause for ``seconds``; ``retrying`` is the failure being retried, when it is one."""

    seconds: float
    retrying: RunqError | None = None


@dataclass(frozen=True)
class Progress:
    """A new status to pass to ``on_progress``."""

    status: JobStatus


Step = Union[Call, Sleep, Progress]
Answer = Union[httpx.Response, Unreachable, None]
"""What the driver sends back: the response to a `Call` (any status) or why there was none;
``None`` after a `Sleep` or `Progress`."""


def job_path(job_id: JobId, suffix: str = "") -> str:
    return f"/jobs/{quote(str(job_id), safe='')}{suffix}"


def submit_call(request: JobRequest, idempotency_key: str | None, traceparent: str | None) -> Call:
    headers = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return Call("POST", "/jobs", headers=headers, json=request.to_json())


def batch_call(requests: list[JobRequest], traceparent: str | None) -> Call:
    headers = {} if traceparent is None else {"traceparent": traceparent}
    return Call("POST", "/jobs:batch", headers=headers, json={"jobs": [r.to_json() for r in requests]})


def list_call(status: str | None, function: str | None, parent: JobId | None, limit: int | None, cursor: str | None) -> Call:
    given = {"status": status, "function": function, "parent": parent, "limit": limit, "cursor": cursor}
    params: dict[str, str | int] = {k: v if isinstance(v, int) else str(v) for k, v in given.items() if v is not None}
    return Call("GET", "/jobs", params=params)


def body(response: httpx.Response) -> Any:
    """The JSON of a successful answer."""
    try:
        return response.json()
    except ValueError as e:
        raise ProtocolError(f"{response.request.url} answered {response.status_code} without JSON: {e}") from e


def decoded(response: httpx.Response, decode: Callable[[Any], Any]) -> Any:
    try:
        return decode(body(response))
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"unexpected answer from {response.request.url}: {e!r}") from e


def job_of(response: httpx.Response) -> Job:
    job: Job = decoded(response, Job.from_json)
    return job


def status_of(response: httpx.Response) -> JobStatus:
    status: JobStatus = decoded(response, JobStatus.from_json)
    return status


def jobs_of(response: httpx.Response) -> list[Job]:
    jobs: list[Job] = decoded(response, lambda b: [Job.from_json(j) for j in b["jobs"]])
    return jobs


def page_of(response: httpx.Response) -> JobPage:
    page: JobPage = decoded(
        response, lambda b: JobPage(jobs=[Job.from_json(j) for j in b["jobs"]], next_cursor=b.get("next_cursor"))
    )
    return page


def checked(response: httpx.Response) -> httpx.Response:
    """The response when it is a success (or a 304); else its `ApiError`."""
    if response.is_success or response.status_code == 304:
        return response
    raise error_from_response(response)


def backoff(failures: int, retry_after: float | None) -> float:
    """The pause after ``failures`` earlier failures in a row: doubling from `FIRST_BACKOFF`
    with jitter, at least the API's ``Retry-After``, at most `MAX_BACKOFF`."""
    exp = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(failures, 10))
    return min(MAX_BACKOFF, max(exp * random.uniform(0.5, 1.0), retry_after or 0.0))


class _Outage:
    """A run of transient failures: how many, since when, and when to give up."""

    def __init__(self, max_outage: float, clock: Callable[[], float]) -> None:
        self.max_outage = max_outage
        self.clock = clock
        self.since: float | None = None
        self.failures = 0

    def pause(self, error: RunqError) -> Sleep:
        """The sleep before trying again; raises ``error`` once the outage lasted too long."""
        now = self.clock()
        if self.since is None:
            self.since = now
        elif now - self.since >= self.max_outage:
            raise error
        retry_after = error.retry_after if isinstance(error, ApiError) else None
        seconds = backoff(self.failures, retry_after)
        self.failures += 1
        return Sleep(seconds, retrying=error)

    def over(self) -> None:
        self.since, self.failures = None, 0


def _transient(answer: Answer) -> RunqError | None:
    """The failure of ``answer`` when asking again may help; raises it when it won't."""
    if isinstance(answer, Unreachable):
        return answer
    assert isinstance(answer, httpx.Response)
    if answer.is_success or answer.status_code == 304:
        return None
    error = error_from_response(answer)
    if error.transient:
        return error
    raise error


def follow(
    job_id: JobId,
    *,
    hold: int,
    deadline: float | None,
    max_outage: float,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[Step, Answer, Job]:
    """Waits for job ``job_id`` to finish; returns the finished job (``GET /jobs/{id}``).

    The first request answers at once; each later one is a long-poll (``?wait=hold``) with the
    last ``ETag`` as ``If-None-Match``, which the API answers when the job changes (200) or
    when the hold is over (304). After a change it keeps to the API's ``poll_after_ms``
    (counted from when that request started). Connection failures, 408, 429, 502, 503 and 504
    are retried with backoff, resuming from the last ETag; any other error is raised.
    Raises `WaitTimeout` at ``deadline`` (a ``clock`` time).
    """
    status_path = job_path(job_id, "/status")
    etag: str | None = None
    last: JobStatus | None = None
    outage = _Outage(max_outage, clock)

    def remaining() -> float | None:
        if deadline is None:
            return None
        left = deadline - clock()
        if left <= 0:
            raise WaitTimeout(str(job_id), last)
        return left

    while True:
        left = remaining()
        headers: dict[str, str] = {}
        params: dict[str, str | int] | None = None
        hold_now = 0
        if etag is not None:
            headers["If-None-Match"] = etag
            hold_now = hold if left is None else min(hold, int(left))
            if hold_now > 0:
                params = {"wait": hold_now}
        started = clock()
        answer = yield Call("GET", status_path, params=params, headers=headers, hold=hold_now)
        failure = _transient(answer)
        if failure is not None:
            yield _bounded(outage.pause(failure), remaining())
            continue
        outage.over()
        assert isinstance(answer, httpx.Response)
        if answer.status_code != 304:
            status = status_of(answer)
            etag = answer.headers.get("etag")
            last = status
            yield Progress(status)
            if status.finished:
                break
        pace = max(MIN_PACE, (last.poll_after_ms if last and last.poll_after_ms is not None else 1000) / 1000)
        wait_more = pace - (clock() - started)
        if wait_more > 0:
            yield _bounded(Sleep(wait_more), remaining())

    while True:
        answer = yield Call("GET", job_path(job_id))
        failure = _transient(answer)
        if failure is None:
            assert isinstance(answer, httpx.Response)
            return job_of(answer)
        yield _bounded(outage.pause(failure), remaining())


def _bounded(sleep: Sleep, left: float | None) -> Sleep:
    """``sleep``, cut short so it ends at the deadline (``left`` seconds from now)."""
    if left is None or sleep.seconds <= left:
        return sleep
    return Sleep(left, sleep.retrying)
