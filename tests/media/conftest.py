from __future__ import annotations

from collections.abc import Iterator

import pytest

from media import hooks


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """The test's own aiortc peers offer 127.0.0.1 only, like the relay (TELEVISIT_MEDIA_IPS)."""
    hooks.restrict_host_addresses(["127.0.0.1"])
    yield
    hooks.restrict_host_addresses(None)
