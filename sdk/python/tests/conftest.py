"""Fixtures: a uvicorn server on a free loopback port running a test app (a real socket, as runq
calls it), an RSA key with its JWKS served over HTTP, and tokens signed like Google's."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

RUNQ_ACCOUNT = "runq-invoker@runq-dev.iam.gserviceaccount.com"
KID = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A uvicorn server in a thread; ``url`` is its base URL."""

    def __init__(self, app: FastAPI) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], Served]]:
    started: list[Served] = []

    def start(app: FastAPI) -> Served:
        s = Served(app)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """An RSA key, its JWKS at ``jwks_url``, and tokens signed with it."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self.key.public_key().public_numbers()
        jwks = json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                                     "n": _b64(public.n), "e": _b64(public.e)}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self.http.server_address[1]}/certs"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(self, audience: str, email: str = RUNQ_ACCOUNT, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": audience, "email": email,
                  "email_verified": True, "iat": now, "exp": now + 3600, "sub": "1234"}
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture(scope="session")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    yield i
    i.http.shutdown()


def call(job_id: str = "0193-test", attempt: int = 1, args: Any = None) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": attempt, "max_attempts": 3, "args": args if args is not None else {},
            "deadline": "2030-01-01T00:00:00.000Z"}
