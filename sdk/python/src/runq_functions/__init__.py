"""Serve runq HTTP functions from a FastAPI app (``docs/http-functions.md`` is the protocol)::

    from runq_functions import Context, FatalError, RunqApp

    runq = RunqApp(audience="https://stt-abc123-ew.a.run.app",
                   allowed_emails=["runq-worker@my-project.iam.gserviceaccount.com"])
    app = runq.app  # uvicorn module:app

    @runq.function("/transcribe")
    async def transcribe(ctx: Context, args: dict) -> dict:
        for i in range(10):
            if ctx.is_cancelled():
                raise FatalError("cancelled")
            ctx.progress(i / 10, f"chunk {i}")
        return {"text": "..."}
"""

from .app import NDJSON, RunqApp
from .auth import GOOGLE_ISSUERS, GOOGLE_JWKS_URL, TokenError, Verifier
from .context import Call, Context
from .errors import DeferError, FatalError, RetryableError, RunqFunctionError

__all__ = [
    "NDJSON",
    "GOOGLE_ISSUERS",
    "GOOGLE_JWKS_URL",
    "Call",
    "Context",
    "DeferError",
    "FatalError",
    "RetryableError",
    "RunqApp",
    "RunqFunctionError",
    "TokenError",
    "Verifier",
]
