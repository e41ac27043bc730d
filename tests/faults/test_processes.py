"""Several processes on one database: without Redis only one may serve."""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.faults.conftest import FAST, RedisServer


class TestOneProcessWithoutRedis:
    def test_a_second_process_without_redis_refuses_to_start(
        self, live_server_factory: ServerFactory
    ) -> None:
        first = live_server_factory(**FAST)
        with pytest.raises(RuntimeError) as refused:
            live_server_factory(**FAST)
        assert "TELEVISIT_REDIS_URL" in str(refused.value)
        assert "Another Televisit process is serving this database" in str(refused.value)
        # It waited a liveness period first, and said so (the log is in the error).
        assert "startup_waiting" in str(refused.value)
        # The first one serves on.
        assert httpx.get(f"{first.url}/readyz", timeout=5).status_code == 200

    def test_a_process_with_redis_refuses_to_join_one_without(
        self, live_server_factory: ServerFactory, redis_server: RedisServer
    ) -> None:
        live_server_factory(**FAST)
        with pytest.raises(RuntimeError) as refused:
            live_server_factory(redis_url=redis_server.url, **FAST)
        assert "the same TELEVISIT_REDIS_URL" in str(refused.value)

    def test_a_restart_after_a_crash_starts_once_the_dead_process_is_silent(
        self, live_server_factory: ServerFactory
    ) -> None:
        crashed = live_server_factory(**FAST)
        crashed.process.send_signal(signal.SIGKILL)
        crashed.process.wait()
        # Its heartbeat row is still fresh: the new process waits for it to go stale.
        again = live_server_factory(**FAST)
        assert httpx.get(f"{again.url}/readyz", timeout=5).status_code == 200
