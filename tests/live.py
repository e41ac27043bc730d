"""A real `televisit serve` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# SIGTERM gives a server this long (uvicorn's graceful shutdown is 10 s, then the lifespan's).
STOP_SECONDS = 15
# Servers that had not stopped by then: the end of each one's log (no patient data is ever
# logged), reported after the session's summary (tests/conftest.py).
UNSTOPPED: list[str] = []
UNSTOPPED_LINES = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                # Its threads' stacks to its log first (PYTHONFAULTHANDLER, set at its start).
                self.process.send_signal(signal.SIGABRT)
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                tail = self.logs().splitlines()[-UNSTOPPED_LINES:]
                UNSTOPPED.append("\n".join([f"{self.log_path.name}:", *tail]))


def start_server(
    env: dict[str, str],
    *,
    log_path: Path,
    timeout: float = 60.0,
    program: tuple[str, ...] = ("-m", "app"),
) -> LiveServer:
    """`televisit serve` (or another `program` taking its arguments, e.g. a benchmark's
    instrumented wrapper of it) on a free loopback port, once /healthz answers.

    The wait is generous: on a loaded 2-core CI machine importing the relay's libraries and
    migrating took 31 s once, and a start may also wait out a liveness period for a process
    just stopped on the same database (signaling.liveness.Liveness.register). A server that
    never starts still fails, with its log."""
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, *program, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start in {timeout} s:\n{server.logs()}")
