"""The suite runs against a real runq API: ``RUNQ_URL`` and ``RUNQ_TOKEN`` say which (``runq
dev`` prints both). The restart test starts its own ``runq dev`` when given ``RUNQ_BIN`` (the
binary) and ``RUNQ_SCRATCH_DATABASE_URL`` (a database it may use alone), and skips otherwise.
``tests/it/python_client.rs`` in the Rust suite sets all four."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from runq_client import Client

BANNER_TOKEN = "token     export RUNQ_TOKEN="


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"set {name}: the tests run against a real runq API (start `runq dev`; it prints the URL and token)")
    return value


@pytest.fixture(scope="session")
def runq_url() -> str:
    return _env("RUNQ_URL").rstrip("/")


@pytest.fixture(scope="session")
def runq_token() -> str:
    return _env("RUNQ_TOKEN")


@pytest.fixture
def client(runq_url: str, runq_token: str) -> Iterator[Client]:
    with Client(runq_url, runq_token) as c:
        yield c


class Recorder:
    """Every request a client made and what it got, through httpx's event hooks."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[httpx.Request, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        self.exchanges.append((response.request, response.status_code))


@pytest.fixture
def recorded(runq_url: str, runq_token: str) -> Iterator[tuple[Client, Recorder]]:
    recorder = Recorder()
    with httpx.Client(event_hooks={"response": [recorder]}) as http:
        yield Client(runq_url, runq_token, http=http), recorder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DevProcess:
    """A ``runq dev`` of our own, on fixed ports so a restart comes back at the same URL."""

    SECRET = "python-client-restart-secret-0123456789"

    def __init__(self, binary: str, database_url: str, workdir: Path) -> None:
        self.binary, self.database_url, self.workdir = binary, database_url, workdir
        self.api_port, self.emulator_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self, within: float = 60.0) -> str:
        """Starts it and waits for its banner; the token it printed."""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": self.database_url,
            "PORT": str(self.api_port),
            "RUNQ_AUTH_HS256_SECRET": self.SECRET,
        }
        self.process = subprocess.Popen(
            [self.binary, "dev", "--emulator-addr", f"127.0.0.1:{self.emulator_port}"],
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        tokens: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process, tokens), daemon=True).start()
        try:
            token = tokens.get(timeout=within)
        except queue.Empty:
            pytest.fail(f"runq dev printed no banner in {within}s: {self.lines}")
        if token is None:
            pytest.fail(f"runq dev exited before its banner: {self.lines}")
        return token

    def _read(self, process: subprocess.Popen[str], tokens: queue.Queue[str | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip())
            if line.strip().startswith(BANNER_TOKEN):
                tokens.put(line.strip()[len(BANNER_TOKEN) :])
        tokens.put(None)

    def stop(self, within: float = 30.0) -> None:
        """SIGTERM, and a clean exit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=within)
        assert code == 0, f"runq dev exited {code}: {self.lines}"
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_dev(tmp_path: Path) -> Iterator[DevProcess]:
    binary, database = os.environ.get("RUNQ_BIN"), os.environ.get("RUNQ_SCRATCH_DATABASE_URL")
    if not binary or not database:
        pytest.skip("needs RUNQ_BIN and RUNQ_SCRATCH_DATABASE_URL to start a runq dev of its own")
    dev = DevProcess(binary, database, tmp_path)
    yield dev
    dev.kill()
