"""Fault tests: real `televisit serve` processes on PostgreSQL, and a Redis of the test's own.

The Redis here is started by the test on a free loopback port, without persistence (as a Redis
that restarts empty), and restarted or stopped at will; the shared Redis is never touched.
Settings are short (liveness 2 s, grace 10 s) so that each fault plays out in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media import hooks
from tests.conftest import ServerFactory, unavailable
from tests.live import LiveServer, free_port

LIVENESS_SECONDS = 2.0
GRACE_SECONDS = 10.0
FAST = {
    "liveness_seconds": str(LIVENESS_SECONDS),
    "reconnect_grace_seconds": str(GRACE_SECONDS),
}


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """PostgreSQL only: the database that serves several processes."""
    return postgres_url


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """The test's own aiortc peers offer 127.0.0.1 only, like the relay (TELEVISIT_MEDIA_IPS)."""
    hooks.restrict_host_addresses(["127.0.0.1"])
    yield
    hooks.restrict_host_addresses(None)


class RedisServer:
    """`redis-server` on a loopback port, no persistence: a restart starts it empty."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # No persistence: a Redis that restarts comes back empty.
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
        self.process = subprocess.Popen(  # noqa: S603 (a fixed binary, our arguments)
            [self.binary, *arguments, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{self.port} within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Killed (nothing saved) and started again on the same port, empty."""
        self.kill()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server", "not installed: apt-get install redis-server")
    server = RedisServer(str(binary), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def pair(live_server_factory: ServerFactory, redis_server: RedisServer) -> list[LiveServer]:
    """Two processes sharing PostgreSQL and the test's Redis."""
    return [live_server_factory(redis_url=redis_server.url, **FAST) for _ in range(2)]


class Figures:
    """What a fault test measured, written where TELEVISIT_FAULT_FIGURES says (docs figures)."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.values: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = round(value, 2) if isinstance(value, float) else value


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    found = Figures(request.node.name)
    yield found
    target = os.environ.get("TELEVISIT_FAULT_FIGURES")
    if target and found.values:
        with Path(target).open("a") as out:
            out.write(json.dumps({"test": found.test, **found.values}) + "\n")
