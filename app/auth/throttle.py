"""Slows down password guessing: after a few failures, an email or an address must wait.

Failures are counted per email (hashed, so the table holds no addresses) and per client address,
for existing and unknown emails alike, so the throttle reveals nothing about which accounts exist.
With Redis configured the counts are shared by every process; otherwise they live in this one.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

WINDOW_SECONDS = 15 * 60
MAX_LOCK_SECONDS = 15 * 60
_MAX_TRACKED = 100_000


@dataclass(frozen=True, slots=True)
class Limit:
    prefix: str
    free_failures: int


EMAIL = Limit("email", free_failures=5)
ADDRESS = Limit("ip", free_failures=20)


def lock_seconds(failures: int, free_failures: int) -> float:
    """Doubling lock after the free failures: 1 s, 2 s, 4 s ... up to 15 minutes."""
    if failures < free_failures:
        return 0.0
    return float(min(2 ** (failures - free_failures), MAX_LOCK_SECONDS))


class _Store(Protocol):
    async def get(self, key: str) -> tuple[int, float]: ...
    async def add_failure(self, key: str, now: float) -> None: ...
    async def clear(self, key: str) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, float]] = {}

    async def get(self, key: str) -> tuple[int, float]:
        count, last = self._entries.get(key, (0, 0.0))
        if time.time() - last > WINDOW_SECONDS:
            return 0, 0.0
        return count, last

    async def add_failure(self, key: str, now: float) -> None:
        if len(self._entries) >= _MAX_TRACKED:
            self._entries = {k: v for k, v in self._entries.items() if now - v[1] <= WINDOW_SECONDS}
        count, _ = await self.get(key)
        self._entries[key] = (count + 1, now)

    async def clear(self, key: str) -> None:
        self._entries.pop(key, None)


class RedisStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def get(self, key: str) -> tuple[int, float]:
        values = await self._redis.hmget(f"televisit:login:{key}", ["count", "last"])
        if values[0] is None:
            return 0, 0.0
        return int(values[0]), float(values[1] or 0.0)

    async def add_failure(self, key: str, now: float) -> None:
        name = f"televisit:login:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(name, "count", 1)
            pipe.hset(name, "last", str(now))
            pipe.expire(name, WINDOW_SECONDS)
            await pipe.execute()

    async def clear(self, key: str) -> None:
        await self._redis.delete(f"televisit:login:{key}")


class LoginThrottle:
    def __init__(self, store: _Store | None = None) -> None:
        self._store: _Store = store or MemoryStore()

    @staticmethod
    def _keys(email: str, address: str) -> list[tuple[Limit, str]]:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return [(EMAIL, f"email:{digest}"), (ADDRESS, f"ip:{address}")]

    async def retry_after(self, email: str, address: str) -> int:
        """Seconds this login must still wait; 0 when it may proceed."""
        now = time.time()
        wait = 0.0
        for limit, key in self._keys(email, address):
            count, last = await self._store.get(key)
            wait = max(wait, last + lock_seconds(count, limit.free_failures) - now)
        return math.ceil(wait) if wait > 0 else 0

    async def failed(self, email: str, address: str) -> None:
        now = time.time()
        for _limit, key in self._keys(email, address):
            await self._store.add_failure(key, now)

    async def succeeded(self, email: str, address: str) -> None:
        await self._store.clear(self._keys(email, address)[0][1])
