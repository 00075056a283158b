"""What the API answers, as typed, immutable values; and what a submit asks for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Mapping, cast

JobState = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
"""Where a job is in its life; ``docs/architecture.md`` has the state machine."""

Priority = Literal["high", "medium", "low"]

FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""The states a job never leaves."""

# chrono writes 0 to 9 fractional digits and `Z`; Python 3.10's fromisoformat takes neither.
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _time(raw: Any) -> datetime:
    text = _FRACTION.sub(r"\1", str(raw)).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _maybe_time(raw: Any) -> datetime | None:
    return None if raw is None else _time(raw)


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


@dataclass(frozen=True, kw_only=True)
class JobError:
    """Why a job failed or was cancelled (the job's ``error``)."""

    kind: str
    """A stable reason: ``error`` (the function's own), ``timeout``, ``cancelled``, ``lost``, ..."""
    message: str
    retryable: bool
    """Whether runq would have retried it had attempts been left."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobError:
        return cls(kind=str(data["kind"]), message=str(data["message"]), retryable=bool(data["retryable"]))


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    """The polling view of a job: what ``GET /jobs/{id}/status`` answers."""

    id: str
    status: JobState
    progress: float
    """Fraction done, 0 to 1, as the function last reported it."""
    message: str | None
    """The function's last progress message."""
    attempt: int
    """Runs started so far, the current one included."""
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    poll_after_ms: int | None
    """When the API suggests asking again; ``None`` once finished."""
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    """The JSON object as answered, for fields this version of the client doesn't know."""

    @property
    def finished(self) -> bool:
        """Whether the job is succeeded, failed or cancelled (it won't change again)."""
        return self.status in FINISHED

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobStatus:
        return cls(**_status_fields(data))


def _status_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    poll = data.get("poll_after_ms")
    return {
        "id": str(data["id"]),
        "status": cast(JobState, data["status"]),
        "progress": float(data["progress"]),
        "message": data.get("message"),
        "attempt": int(data["attempt"]),
        "max_attempts": int(data["max_attempts"]),
        "created_at": _time(data["created_at"]),
        "started_at": _maybe_time(data.get("started_at")),
        "finished_at": _maybe_time(data.get("finished_at")),
        "updated_at": _time(data["updated_at"]),
        "poll_after_ms": None if poll is None else int(poll),
        "raw": data,
    }


@dataclass(frozen=True, kw_only=True)
class Job(JobStatus):
    """The full view of a job: what a submit, ``GET /jobs/{id}``, cancel and retry answer."""

    function: str
    priority: Priority
    queue: str
    """The queue it runs on: its priority's, or its function's own."""
    args: Any
    run_after: datetime
    """When it becomes due (later than ``created_at`` when delayed or retrying)."""
    cancel_requested: bool
    result: Any
    """What the function returned (``None`` until it succeeded, or when stored in ``result_uri``)."""
    result_uri: str | None
    """Where a result too large to keep inline is stored (GCS)."""
    error: JobError | None
    parent_id: str | None
    idempotency_key: str | None
    unique_key: str | None
    children: Mapping[str, int] | None
    """A fan-out parent's children by status (``get`` only)."""
    deduplicated: bool
    """A submit answered with the live job of its ``unique_key`` instead of a new one."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        error = data.get("error")
        parent = data.get("parent_id")
        return cls(
            **_status_fields(data),
            function=str(data["function"]),
            priority=cast(Priority, data["priority"]),
            queue=str(data["queue"]),
            args=data.get("args"),
            run_after=_time(data["run_after"]),
            cancel_requested=bool(data.get("cancel_requested", False)),
            result=data.get("result"),
            result_uri=data.get("result_uri"),
            error=None if error is None else JobError.from_json(error),
            parent_id=None if parent is None else str(parent),
            idempotency_key=data.get("idempotency_key"),
            unique_key=data.get("unique_key"),
            children=data.get("children"),
            deduplicated=bool(data.get("deduplicated", False)),
        )


@dataclass(frozen=True, kw_only=True)
class JobPage:
    """One page of ``GET /jobs``, newest first."""

    jobs: list[Job]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; ``None`` on the last one."""


@dataclass(frozen=True)
class JobRequest:
    """One job to submit: the body of ``POST /jobs``, and an item of ``POST /jobs:batch``.

    Absent fields take the function's defaults. ``delay`` and ``debounce`` are seconds (or a
    ``timedelta``); ``debounce`` needs a ``unique_key``.
    """

    function: str
    args: Any = None
    priority: Priority | None = None
    max_attempts: int | None = None
    """Overrides the function's attempts (1 to 100)."""
    delay: float | timedelta | None = None
    """Not run before this long from now."""
    unique_key: str | None = None
    """At most one queued, retrying or running job of yours with this key: a second submit
    answers with the live one (``deduplicated``) and creates nothing."""
    debounce: float | timedelta | None = None
    """With ``unique_key``: run once, this long after the key's submits stopped, with the last
    submit's args."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"function": self.function}
        optional = {
            "args": self.args,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "delay_seconds": _seconds(self.delay),
            "unique_key": self.unique_key,
            "debounce_seconds": _seconds(self.debounce),
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body
