"""The exceptions: one class per problem the API answers (``application/problem+json``), and
the failures that never got an answer."""

from __future__ import annotations

from typing import Any, Mapping

import httpx

from ._models import JobStatus

# Longest text kept from an error answer that is not problem+json.
_MAX_RAW_DETAIL = 300


class RunqError(Exception):
    """Everything this client raises."""


class ApiError(RunqError):
    """The API answered with an error status. Subclasses name the statuses runq answers.

    ``detail`` is the problem's human-readable explanation; ``type`` its stable URI
    (``https://runq.dev/problems/<kind>``); ``field`` names the offending field or parameter
    of a 422; ``problem`` is the whole body.
    """

    status: int

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = "about:blank",
        title: str | None = None,
        field: str | None = None,
        problem: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title
        self.field = field
        self.problem: Mapping[str, Any] = problem or {}
        self.retry_after = retry_after
        """Seconds the API asked to wait before trying again (``Retry-After``), if it did."""

    @property
    def kind(self) -> str:
        """The last segment of ``type``: ``job-not-found``, ``invalid-request``, ``conflict``, ..."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]

    @property
    def transient(self) -> bool:
        """Whether asking again later may succeed (the API overloaded, restarting or unreachable)."""
        return False


class BadRequest(ApiError):
    """400: the body is not valid JSON."""


class Unauthorized(ApiError):
    """401: the bearer token is missing, malformed, expired or wrongly signed."""


class Forbidden(ApiError):
    """403: the token is valid but not allowed this (an admin-only route, another owner's jobs)."""


class NotFound(ApiError):
    """404: no such job (or not yours), operation or route."""


class Conflict(ApiError):
    """409: the job's state forbids it (cancel a finished job, retry a running one), or an
    ``Idempotency-Key`` was reused with a different request."""


class PayloadTooLarge(ApiError):
    """413: the body or its ``args`` are over the API's limit."""


class UnsupportedMediaType(ApiError):
    """415: the body was not sent as JSON."""


class InvalidRequest(ApiError):
    """422: well-formed but unacceptable: unknown function, bad args, priority, id, cursor, ...
    ``field`` says which."""


class RateLimited(ApiError):
    """429: too many requests (from a proxy or load balancer in front of runq)."""

    @property
    def transient(self) -> bool:
        return True


class ServerError(ApiError):
    """5xx: the API (or what is in front of it) failed; 503 means its database is unreachable
    and nothing was written."""

    @property
    def transient(self) -> bool:
        return self.status in (502, 503, 504)


class RequestTimeout(ApiError):
    """408: something in front of the API gave up on the request."""

    @property
    def transient(self) -> bool:
        return True


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: RateLimited,
}


class Unreachable(RunqError):
    """No answer at all: connection refused or reset, DNS failure, timeout. The request may or
    may not have reached the API."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"can't reach the runq API at {url}: {cause or type(cause).__name__}")
        self.url = url

    @property
    def transient(self) -> bool:
        return True


class ProtocolError(RunqError):
    """An answer that is not what the API documents (not JSON, fields missing)."""


class WaitTimeout(RunqError, TimeoutError):
    """``wait`` ran out of time before the job finished; the job goes on."""

    def __init__(self, job_id: str, last: JobStatus | None) -> None:
        state = f"; last seen {last.status} at {last.progress:.0%}" if last else ""
        super().__init__(f"job {job_id} did not finish in time{state}")
        self.job_id = job_id
        self.last = last
        """The last status seen, if any."""


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer, from its problem+json body when it has one."""
    status = response.status_code
    problem: Mapping[str, Any] | None = None
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    if problem is not None and isinstance(problem.get("detail"), str):
        detail = str(problem["detail"])
    else:
        detail = response.text[:_MAX_RAW_DETAIL].strip() or response.reason_phrase or f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    problem = problem or {}
    field = problem.get("field")
    return cls(
        status,
        detail,
        type=str(problem.get("type", "about:blank")),
        title=problem.get("title") if isinstance(problem.get("title"), str) else None,
        field=field if isinstance(field, str) else None,
        problem=problem,
        retry_after=_retry_after(response),
    )
