"""Serving runq functions from FastAPI: :class:`RunqApp` and its ``@function`` decorator."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Sequence, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .auth import GOOGLE_JWKS_URL, TokenError, Verifier
from .context import Call, Context, Line
from .errors import DeferError, RunqFunctionError

log = logging.getLogger("runq_functions")

#: The media type of a streamed answer.
NDJSON = "application/x-ndjson"
#: Key of the internal line that ends a run (never sent as is).
_FINAL = "__final__"
#: How often the SDK checks whether runq closed the request while the function runs.
DISCONNECT_POLL_SECONDS = 0.05

#: A function: ``async def f(ctx, args)`` (or a plain ``def``, run in a thread) returning the
#: job's result (anything JSON can hold).
Handler = Union[Callable[[Context, Any], Awaitable[Any]], Callable[[Context, Any], Any]]


def _error(message: str, retryable: bool) -> dict[str, Any]:
    return {"error": {"message": message, "retryable": retryable}}


class RunqApp:
    """A FastAPI app (yours, or a new one) serving runq functions.

    With ``audience`` set, every call's identity token is checked (``docs/http-functions.md``):
    RS256 by a key of ``jwks_url`` (Google's; ``runq dev`` prints its emulator's), Google's
    issuer, that audience, not expired, ``email_verified`` and ``email`` in ``allowed_emails``
    (runq's service account). Without it, nothing is checked: only behind Cloud Run IAM
    (``roles/run.invoker`` for runq's account, no ``--allow-unauthenticated``).

    When runq closes a request (a cancel, its timeout), the run's :meth:`Context.is_cancelled`
    turns true at once, and its task is cancelled ``cancel_grace`` seconds later if it hasn't
    returned.
    """

    def __init__(
        self,
        app: Optional[FastAPI] = None,
        *,
        audience: Optional[str] = None,
        jwks_url: str = GOOGLE_JWKS_URL,
        allowed_emails: Sequence[str] = (),
        cancel_grace: float = 5.0,
    ) -> None:
        self.app = app if app is not None else FastAPI()
        self.verifier = Verifier(audience, jwks_url, allowed_emails) if audience else None
        self.cancel_grace = cancel_grace

    def function(self, path: str, *, name: Optional[str] = None) -> Callable[[Handler], Handler]:
        """Serves the decorated function at ``POST path``::

            @runq.function("/transcribe")
            async def transcribe(ctx: Context, args: dict) -> dict:
                ctx.progress(0.5, "halfway")
                return {"text": "..."}
        """

        def decorate(fn: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                return await self._serve(fn, request)

            self.app.add_api_route(path, endpoint, methods=["POST"], name=name or getattr(fn, "__name__", path))
            return fn

        return decorate

    async def _serve(self, fn: Handler, request: Request) -> Response:
        if self.verifier is not None:
            try:
                await self.verifier.verify(request.headers.get("authorization"))
            except TokenError as e:
                return JSONResponse(_error(str(e), False), status_code=401)
        try:
            call = Call.parse(await request.json())
        except Exception as e:
            return JSONResponse(_error(f"not a runq call: {e}", False), status_code=400)
        ctx = Context(call, asyncio.get_running_loop())
        task = asyncio.create_task(self._run(fn, ctx, call.args))
        watcher = asyncio.create_task(self._watch(request, ctx, task))
        first = await ctx._lines.get()
        final = first.get(_FINAL)
        if final is not None:
            watcher.cancel()
            return self._whole(final)
        return StreamingResponse(self._stream(first, ctx, task, watcher), media_type=NDJSON)

    def _whole(self, final: dict[str, Any]) -> Response:
        """The answer of a run that ended before reporting anything: JSON, a status, a 429."""
        if "defer" in final:
            return Response(status_code=429, headers={"Retry-After": str(math.ceil(final["defer"]))})
        if "error" in final:
            status = 503 if final["error"]["retryable"] else 422
            return JSONResponse(final, status_code=status)
        try:
            body = json.dumps(final["result"])
        except (TypeError, ValueError) as e:
            return JSONResponse(_error(f"the result is not JSON: {e}", False), status_code=422)
        return Response(body, media_type="application/json")

    async def _stream(
        self, first: Line, ctx: Context, task: "asyncio.Task[None]", watcher: "asyncio.Task[None]"
    ) -> AsyncIterator[bytes]:
        line = first
        try:
            while True:
                final = line.get(_FINAL)
                if final is not None:
                    # A defer after progress is its own final line ({"defer": seconds}).
                    yield _encode(final)
                    return
                yield _encode(line)
                line = await ctx._lines.get()
        finally:
            watcher.cancel()
            if not task.done():
                # The response was dropped: runq closed the request.
                self._cancelled(ctx, task)

    async def _run(self, fn: Handler, ctx: Context, args: Any) -> None:
        try:
            if asyncio.iscoroutinefunction(fn):
                result = await fn(ctx, args)
            else:
                result = await asyncio.to_thread(fn, ctx, args)
            final: dict[str, Any] = {"result": result}
        except DeferError as e:
            final = {"defer": e.seconds}
        except RunqFunctionError as e:
            final = _error(e.message, e.retryable)
        except asyncio.CancelledError:
            final = _error("cancelled", True)
        except Exception as e:
            log.exception("runq function %s failed (job %s, attempt %s)", getattr(fn, "__name__", fn), ctx.job_id, ctx.attempt)
            final = _error(f"{type(e).__name__}: {e}", True)
        ctx._lines.put_nowait({_FINAL: final})

    async def _watch(self, request: Request, ctx: Context, task: "asyncio.Task[None]") -> None:
        while not task.done():
            if await request.is_disconnected():
                self._cancelled(ctx, task)
                return
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)

    def _cancelled(self, ctx: Context, task: "asyncio.Task[None]") -> None:
        if ctx.is_cancelled():
            return
        ctx._cancel()
        asyncio.get_running_loop().call_later(self.cancel_grace, task.cancel)


def _encode(line: Line) -> bytes:
    try:
        return (json.dumps(line) + "\n").encode()
    except (TypeError, ValueError) as e:
        return (json.dumps(_error(f"not JSON: {e}", False)) + "\n").encode()
