"""The :class:`Context` a function gets: its job, progress reports, child jobs, cancellation."""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Union

#: What the function's run sends to the response: a line to stream, or its end.
Line = dict[str, Any]


@dataclass(frozen=True)
class Call:
    """The request runq sends (``docs/http-functions.md``)."""

    job_id: str
    attempt: int
    max_attempts: int
    args: Any
    deadline: Optional[datetime]
    #: A workflow step's parents' results by step name (``{}`` outside a workflow).
    inputs: dict[str, Any]

    @staticmethod
    def parse(body: Any) -> "Call":
        if not isinstance(body, dict):
            raise ValueError("the body is not a JSON object")
        job_id, attempt, max_attempts = body.get("job_id"), body.get("attempt"), body.get("max_attempts")
        if not isinstance(job_id, str) or not isinstance(attempt, int) or not isinstance(max_attempts, int):
            raise ValueError("job_id (a string), attempt and max_attempts (integers) are required")
        deadline = body.get("deadline")
        parsed = None
        if isinstance(deadline, str):
            parsed = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
        inputs = body.get("inputs")
        return Call(job_id, attempt, max_attempts, body.get("args"), parsed, inputs if isinstance(inputs, dict) else {})


class Context:
    """One run of a job. Thread-safe: a synchronous function running in a worker thread may
    report progress too."""

    def __init__(self, call: Call, loop: asyncio.AbstractEventLoop) -> None:
        self._call = call
        self._loop = loop
        self._lines: "asyncio.Queue[Line]" = asyncio.Queue()
        self._cancelled = asyncio.Event()
        self._cancelled_flag = threading.Event()

    @property
    def job_id(self) -> str:
        """The job's id, the same for every attempt: an idempotency key for side effects."""
        return self._call.job_id

    @property
    def attempt(self) -> int:
        """This run's number, 1 for the first."""
        return self._call.attempt

    @property
    def max_attempts(self) -> int:
        """How many runs the job may have in all."""
        return self._call.max_attempts

    @property
    def deadline(self) -> Optional[datetime]:
        """When runq stops waiting for the answer (UTC)."""
        return self._call.deadline

    @property
    def inputs(self) -> dict[str, Any]:
        """In a workflow, the parent steps' results by step name (``{"transcribe": {"job_id",
        "status", "result", ...}}``); ``{}`` outside one."""
        return self._call.inputs

    def input(self, step: str) -> Any:
        """The result of parent step ``step``, or ``None``."""
        parent = self._call.inputs.get(step)
        return parent.get("result") if isinstance(parent, dict) else None

    def time_left(self) -> Optional[float]:
        """Seconds until :attr:`deadline`, or ``None`` without one."""
        if self._call.deadline is None:
            return None
        return (self._call.deadline - datetime.now(timezone.utc)).total_seconds()

    def progress(self, fraction: float, message: Optional[str] = None) -> None:
        """Reports progress (``fraction`` in 0..1; the last ``message`` stays). runq shows it in
        ``/jobs/{id}/status``; reporting often is cheap (runq writes a few a second)."""
        if not math.isfinite(fraction):
            fraction = 0.0
        line: Line = {"progress": min(1.0, max(0.0, float(fraction)))}
        if message is not None:
            line["message"] = message
        self._send(line)

    def spawn(
        self,
        function: str,
        args: Any = None,
        *,
        priority: Optional[str] = None,
        unique_key: Optional[str] = None,
    ) -> None:
        """Asks runq for a child job of this job (a fan-out), created under this run's claim."""
        child: dict[str, Any] = {"function": function, "args": {} if args is None else args}
        if priority is not None:
            child["priority"] = priority
        if unique_key is not None:
            child["unique_key"] = unique_key
        self._send({"spawn": [child]})

    def is_cancelled(self) -> bool:
        """True once runq closed the request: the job was cancelled, its timeout passed, or the
        worker is stopping. Stop work then; nothing sent afterwards is read."""
        return self._cancelled_flag.is_set()

    async def cancelled(self) -> None:
        """Resolves once :meth:`is_cancelled` is true."""
        await self._cancelled.wait()

    # The SDK's side.

    def _send(self, line: Line) -> None:
        try:
            running: Union[asyncio.AbstractEventLoop, None] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._lines.put_nowait(line)
        else:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)

    def _cancel(self) -> None:
        self._cancelled_flag.set()
        self._cancelled.set()
