from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.config import Settings
from media import hooks
from media.relay import Relay
from tests.conftest import unavailable
from tests.live import free_port
from tests.media.harness import Log, Outbox


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """The test's own aiortc peers offer 127.0.0.1 only, like the relay (TELEVISIT_MEDIA_IPS)."""
    hooks.restrict_host_addresses(["127.0.0.1"])
    yield
    hooks.restrict_host_addresses(None)


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Debian's coturn on loopback, with use-auth-secret; (TURN URL, shared secret)."""
    binary = shutil.which("turnserver")
    if binary is None:
        unavailable("coturn (turnserver)", "not installed: apt-get install coturn")
    port = free_port()
    secret = secrets.token_hex(16)
    log = tmp_path / "turn.log"
    process = subprocess.Popen(  # noqa: S603 (a fixed binary, our arguments)
        [
            str(binary),
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            str(port),
            "--min-port",
            "49160",
            "--max-port",
            "49400",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            "--realm",
            "televisit.test",
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            str(log),
            "--simple-log",
            "--pidfile",
            str(tmp_path / "turn.pid"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_coturn(port)
        yield f"turn:127.0.0.1:{port}", secret
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_coturn(port: int) -> None:
    """Until coturn accepts TCP connections on 127.0.0.1:port (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"coturn did not listen on 127.0.0.1:{port} within 10 s")


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[Relay, Outbox]]:
    """A relay in the test's process, without a consent guard (signaling's word is the
    consent), and what it emits (a module may define its own)."""
    outbox = Outbox()
    settings = Settings(
        environment="development", media_ips=["127.0.0.1"], recordings_dir=tmp_path / "rec"
    )
    relay = Relay(settings=settings, emit=outbox.emit, recordings=Log())
    yield relay, outbox
    await relay.shutdown()
