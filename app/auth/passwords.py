"""Argon2id password hashing, run off the event loop (a hash costs tens of milliseconds).

Each hash or verification holds 64 MiB while it runs, so `HashingSlots` lets only a few run at
once (one per CPU, at least 2, at most 8): a burst of logins waits a little for a slot, and past
`WAIT_SECONDS` is answered 503 `service_busy` with `Retry-After`, instead of the process taking
64 MiB per request in flight.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.errors import ServiceBusy

# argon2-cffi's defaults are RFC 9106's low-memory profile: Argon2id, t=3, m=64 MiB, p=4.
_hasher = PasswordHasher()

MIN_SLOTS, MAX_SLOTS = 2, 8
# How long a login waits for a free slot before it is told to come back.
WAIT_SECONDS = 3.0
RETRY_AFTER_SECONDS = 2


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified against when the email is unknown, so both answers cost the same time.
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password_sync(password: str) -> str:
    return _hasher.hash(password)


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


def _verify(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check a password; with no stored hash, spend the same time and answer False."""
    return await anyio.to_thread.run_sync(_verify, stored_hash, password)


def warm_up() -> None:
    """Compute the dummy hash at start-up, not during the first login."""
    _dummy_hash()


def default_slots() -> int:
    """One Argon2 computation per CPU this process may use, within MIN_SLOTS..MAX_SLOTS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(MIN_SLOTS, min(cpus or 1, MAX_SLOTS))


class HashingSlots:
    """At most `size` Argon2 computations at once in this process; the rest wait, then get 503."""

    def __init__(self, size: int | None = None, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self.size = size or default_slots()
        self.wait_seconds = wait_seconds
        self._semaphore = asyncio.Semaphore(self.size)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._semaphore.acquire()
        except TimeoutError:
            raise ServiceBusy(
                "Too many sign-ins at once; try again shortly.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        try:
            yield
        finally:
            self._semaphore.release()

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        async with self.slot():
            return await verify_password(stored_hash, password)

    async def hash(self, password: str) -> str:
        async with self.slot():
            return await hash_password(password)
