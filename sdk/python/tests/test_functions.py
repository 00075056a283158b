"""The SDK over a real socket: what each kind of function answers, as runq reads it
(``docs/http-functions.md``), the token check, and cancellation when the request is closed."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import httpx

from conftest import RUNQ_ACCOUNT, Issuer, call
from runq_functions import Context, DeferError, FatalError, RetryableError, RunqApp


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_a_function_without_progress_answers_its_result_as_json(serve: Any) -> None:
    runq = RunqApp()

    @runq.function("/echo")
    async def echo(ctx: Context, args: Any) -> Any:
        return {"args": args, "job": ctx.job_id, "attempt": ctx.attempt, "left": ctx.time_left() is not None}

    s = serve(runq.app)
    r = httpx.post(f"{s.url}/echo", json=call(args={"x": 1}))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"args": {"x": 1}, "job": "0193-test", "attempt": 1, "left": True}


def test_progress_streams_as_ndjson_then_the_final_line(serve: Any) -> None:
    runq = RunqApp()

    @runq.function("/work")
    async def work(ctx: Context, args: Any) -> Any:
        ctx.progress(0.25, "a quarter")
        ctx.spawn("index", {"video": "v1"}, priority="low")
        ctx.progress(float("nan"))
        ctx.progress(7.0, "all")
        return "done"

    @runq.function("/late-failure")
    async def late_failure(ctx: Context, args: Any) -> Any:
        ctx.progress(0.5, "halfway")
        raise FatalError("the file is corrupt")

    @runq.function("/late-defer")
    async def late_defer(ctx: Context, args: Any) -> Any:
        ctx.progress(0.1, "asked the upstream")
        raise DeferError(2.5)

    s = serve(runq.app)
    r = httpx.post(f"{s.url}/work", json=call())
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert lines(r) == [
        {"progress": 0.25, "message": "a quarter"},
        {"spawn": [{"function": "index", "args": {"video": "v1"}, "priority": "low"}]},
        {"progress": 0.0},
        {"progress": 1.0, "message": "all"},
        {"result": "done"},
    ]
    r = httpx.post(f"{s.url}/late-failure", json=call())
    assert lines(r) == [{"progress": 0.5, "message": "halfway"},
                        {"error": {"message": "the file is corrupt", "retryable": False}}]
    # Too late for a 429: the defer is the stream's final line.
    r = httpx.post(f"{s.url}/late-defer", json=call())
    assert lines(r) == [{"progress": 0.1, "message": "asked the upstream"}, {"defer": 2.5}]


def test_errors_say_whether_to_retry_and_a_defer_is_a_429(serve: Any) -> None:
    runq = RunqApp()

    @runq.function("/retryable")
    async def retryable(ctx: Context, args: Any) -> Any:
        raise RetryableError("upstream 503")

    @runq.function("/fatal")
    async def fatal(ctx: Context, args: Any) -> Any:
        raise FatalError("unsupported codec")

    @runq.function("/crash")
    async def crash(ctx: Context, args: Any) -> Any:
        raise KeyError("audio")

    @runq.function("/busy")
    async def busy(ctx: Context, args: Any) -> Any:
        raise DeferError(2.5)

    s = serve(runq.app)
    r = httpx.post(f"{s.url}/retryable", json=call())
    assert (r.status_code, r.json()) == (503, {"error": {"message": "upstream 503", "retryable": True}})
    r = httpx.post(f"{s.url}/fatal", json=call())
    assert (r.status_code, r.json()) == (422, {"error": {"message": "unsupported codec", "retryable": False}})
    r = httpx.post(f"{s.url}/crash", json=call())
    assert (r.status_code, r.json()) == (503, {"error": {"message": "KeyError: 'audio'", "retryable": True}})
    r = httpx.post(f"{s.url}/busy", json=call())
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    r = httpx.post(f"{s.url}/fatal", content=b"not json")
    assert r.status_code == 400 and r.json()["error"]["retryable"] is False


def test_a_plain_function_runs_in_a_thread_and_reports_progress(serve: Any) -> None:
    runq = RunqApp()
    threads: list[str] = []

    @runq.function("/sync")
    def sync(ctx: Context, args: Any) -> Any:
        threads.append(threading.current_thread().name)
        ctx.progress(0.5, "from a thread")
        return 42

    s = serve(runq.app)
    r = httpx.post(f"{s.url}/sync", json=call())
    assert lines(r) == [{"progress": 0.5, "message": "from a thread"}, {"result": 42}]
    assert threads and threads[0] != "MainThread"


def test_closing_the_request_cancels_the_run(serve: Any) -> None:
    runq = RunqApp(cancel_grace=30)
    noticed = threading.Event()
    started_quiet, noticed_quiet = threading.Event(), threading.Event()

    @runq.function("/long")
    async def long(ctx: Context, args: Any) -> Any:
        while not ctx.is_cancelled():
            ctx.progress(0.1, "working")
            await asyncio.sleep(0.05)
        noticed.set()
        return None

    @runq.function("/quiet")
    async def quiet(ctx: Context, args: Any) -> Any:
        # No progress at all (so no answer has started): the request is still watched.
        started_quiet.set()
        await ctx.cancelled()
        noticed_quiet.set()
        return None

    s = serve(runq.app)
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{s.url}/long", json=call()) as r:
            assert json.loads(next(r.iter_lines())) == {"progress": 0.1, "message": "working"}
    closed = time.monotonic()
    assert noticed.wait(5), "the streaming function never saw its request end"
    assert time.monotonic() - closed < 1.0

    # runq closes a request that has no answer yet the same way: the socket goes.
    body = json.dumps(call()).encode()
    host, port = s.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /quiet HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert started_quiet.wait(5)
    sock.close()
    closed = time.monotonic()
    assert noticed_quiet.wait(5), "the quiet function never saw its request end"
    assert time.monotonic() - closed < 1.0


def test_tokens_are_checked_when_an_audience_is_set(serve: Any, issuer: Issuer) -> None:
    runq = RunqApp(audience="https://stt.example.com", jwks_url=issuer.jwks_url, allowed_emails=[RUNQ_ACCOUNT])

    @runq.function("/f")
    async def f(ctx: Context, args: Any) -> Any:
        return "ok"

    s = serve(runq.app)

    def post(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(f"{s.url}/f", json=call(), headers=headers)

    assert post(issuer.token("https://stt.example.com")).json() == "ok"
    refused = [
        None,
        "not-a-jwt",
        issuer.token("https://other.example.com"),
        issuer.token("https://stt.example.com", email="mallory@evil.iam.gserviceaccount.com"),
        issuer.token("https://stt.example.com", email_verified=False),
        issuer.token("https://stt.example.com", iss="https://evil.example.com"),
        issuer.token("https://stt.example.com", exp=int(time.time()) - 3600),
    ]
    for token in refused:
        r = post(token)
        assert r.status_code == 401 and r.json()["error"]["retryable"] is False, token
        assert token is None or token not in r.text
