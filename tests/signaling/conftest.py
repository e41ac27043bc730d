"""Fixtures of the signaling tests (their helpers are in tests.signaling.helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.live import LiveServer


@pytest.fixture
async def http(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the test's live server (the one its sockets talk to)."""
    async with httpx.AsyncClient(base_url=live_server.url) as client:
        yield client
