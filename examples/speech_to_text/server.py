"""A speech-to-text worker as a runq HTTP function, written with ``sdk/python``.

The transcription is fake (it "decodes" the audio in chunks, reporting progress after each),
so it runs anywhere; swap :func:`transcribe_chunk` for a real model or API call.

    PORT=9000 python examples/speech_to_text/server.py

Environment (all optional):

- ``PORT``: where to listen on 127.0.0.1 (default 0: any free port, printed on stdout);
- ``RUNQ_FUNCTION_AUDIENCE``: check runq's identity tokens for this audience (the URL's origin);
- ``RUNQ_FUNCTION_JWKS_URL``: their keys (default Google's; ``runq dev`` prints its emulator's);
- ``RUNQ_FUNCTION_ALLOWED_EMAILS``: comma-separated accounts allowed to call (runq's).

It prints one JSON line per event on stdout (``ready`` with its port, then ``started``,
``cancelled``, ``finished`` per run), which is how the end-to-end test follows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

# The SDK from this checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python" / "src"))

import uvicorn  # noqa: E402

from runq_functions import Context, FatalError, RetryableError, RunqApp  # noqa: E402


def event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, **fields}), flush=True)


emails = [e for e in os.environ.get("RUNQ_FUNCTION_ALLOWED_EMAILS", "").split(",") if e.strip()]
runq = RunqApp(
    audience=os.environ.get("RUNQ_FUNCTION_AUDIENCE") or None,
    jwks_url=os.environ.get("RUNQ_FUNCTION_JWKS_URL") or "https://www.googleapis.com/oauth2/v3/certs",
    allowed_emails=emails,
)
app = runq.app


def transcribe_chunk(audio: str, index: int) -> str:
    """One chunk's text (fake)."""
    return f"[{audio} part {index + 1}]"


@runq.function("/transcribe")
async def transcribe(ctx: Context, args: Any) -> Any:
    """Args: ``audio`` (a URI), ``chunks`` (10), ``chunk_seconds`` (0.1); for testing,
    ``fail``: ``"fatal"`` (an undecodable file) or ``"retryable"`` with ``failing_attempts`` (1):
    the first attempts fail as an upstream outage would. In a workflow, without ``audio`` in
    its args, it takes the ``audio`` of a parent step's result."""
    if not isinstance(args, dict):
        raise FatalError("args must be an object with `audio`")
    audio = args.get("audio")
    if audio is None:
        parents = [p.get("result") for p in ctx.inputs.values() if isinstance(p, dict)]
        audio = next((r["audio"] for r in parents if isinstance(r, dict) and "audio" in r), None)
    if not isinstance(audio, str):
        raise FatalError("`audio` (a URI of the file) is required")
    chunks = int(args.get("chunks", 10))
    pause = float(args.get("chunk_seconds", 0.1))
    event("started", job_id=ctx.job_id, attempt=ctx.attempt)
    if args.get("fail") == "fatal":
        raise FatalError(f"cannot decode {audio}: unsupported codec")
    if args.get("fail") == "retryable" and ctx.attempt <= int(args.get("failing_attempts", 1)):
        raise RetryableError("the speech API answered 503")
    text = []
    for i in range(chunks):
        ctx.progress(i / chunks, f"transcribing chunk {i + 1}/{chunks}")
        try:
            await asyncio.wait_for(ctx.cancelled(), pause)
        except asyncio.TimeoutError:
            pass
        if ctx.is_cancelled():
            event("cancelled", job_id=ctx.job_id, attempt=ctx.attempt, at_chunk=i)
            raise FatalError("cancelled")
        text.append(transcribe_chunk(audio, i))
    ctx.progress(1.0, "done")
    event("finished", job_id=ctx.job_id, attempt=ctx.attempt)
    return {"audio": audio, "text": " ".join(text), "chunks": chunks}


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("PORT", "0"))))
    sock.listen(128)
    # Listening already: connections wait in the backlog until uvicorn serves them.
    event("ready", port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
