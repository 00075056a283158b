"""The errors a runq function raises to say what runq should do next."""

from __future__ import annotations


class RunqFunctionError(Exception):
    """Base of the errors below."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RetryableError(RunqFunctionError):
    """A transient failure (an upstream 503, a timeout): runq retries the job with backoff while
    attempts are left."""

    retryable = True


class FatalError(RunqFunctionError):
    """A failure another attempt won't fix (bad input, a missing file): the job fails at once."""

    retryable = False


class DeferError(Exception):
    """Not now: runq queues the job again after ``seconds`` without using an attempt (an HTTP
    ``429`` with ``Retry-After``, or a final ``{"defer": seconds}`` line once the answer
    streams)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"deferred for {seconds} s")
        self.seconds = max(0.0, float(seconds))
