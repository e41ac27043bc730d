"""Rate limits on the `limits` library: shared by every process through Redis, else per process.

A `Policy` is one or more moving windows (`"5/minute;20/hour"`). `RateLimiter.hit` takes one unit
from each window, shortest first, and each take is a single atomic step (a Lua script in Redis, a
per-key lock in memory): N requests arriving at once can never all pass a window with room for
fewer. A refused request learns how long until the window that refused it has room again, so
the wait grows with the longer windows (a minute, then an hour, then a day).

When Redis fails or stalls, this process's own windows take over until it answers again: the
limits stay on, per process, rather than failing open or refusing everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from app.errors import TooManyRequests

logger = logging.getLogger("televisit.ratelimit")

PREFIX = "televisit:limits"
# A Redis that takes longer than this is treated as down for this request.
REDIS_SECONDS = 1.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of moving windows, e.g. `Policy("visit-consent", "10/minute;60/hour")`."""

    name: str
    spec: str
    windows: tuple[RateLimitItem, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        windows = sorted(parse_many(self.spec), key=lambda item: item.get_expiry())
        object.__setattr__(self, "windows", tuple(windows))


class RateLimiter:
    """Moving-window limits in Redis when given a client, with this process's memory as fallback."""

    def __init__(self, redis: Redis | None = None, *, prefix: str = PREFIX) -> None:
        self._memory = MemoryStorage()
        self._local = MovingWindowRateLimiter(self._memory)
        self._shared: MovingWindowRateLimiter | None = None
        if redis is not None:
            # The URI only names the kind of storage; the connections are the app's own pool.
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=prefix,
                wrap_exceptions=True,
                connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # passed on to redis.asyncio.Redis
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._degraded = False

    @property
    def shared(self) -> bool:
        return self._shared is not None

    async def hit(self, policy: Policy, *identifiers: str) -> int:
        """Take one unit from each window: 0 when allowed, else the seconds until one is free."""
        keys = (policy.name, *identifiers)
        for window in policy.windows:
            if not await self._take(window, keys):
                return await self._wait(window, keys)
        return 0

    async def enforce(self, policy: Policy, *identifiers: str) -> None:
        """`hit`, raising 429 `too_many_attempts` with `Retry-After` when refused."""
        wait = await self.hit(policy, *identifiers)
        if wait:
            raise TooManyRequests(headers={"Retry-After": str(wait)})

    async def clear(self, policy: Policy, *identifiers: str) -> None:
        """Forget every unit these identifiers took under this policy."""
        keys = (policy.name, *identifiers)
        for window in policy.windows:
            await self._forget(window, keys)

    async def _take(self, window: RateLimitItem, keys: tuple[str, ...]) -> bool:
        return await self._run(lambda limiter: limiter.hit(window, *keys))

    async def _wait(self, window: RateLimitItem, keys: tuple[str, ...]) -> int:
        stats = await self._run(lambda limiter: limiter.get_window_stats(window, *keys))
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def _forget(self, window: RateLimitItem, keys: tuple[str, ...]) -> None:
        await self._run(lambda limiter: limiter.clear(window, *keys))

    async def _run(self, operation: Callable[[MovingWindowRateLimiter], Awaitable[T]]) -> T:
        if self._shared is not None:
            try:
                async with asyncio.timeout(REDIS_SECONDS):
                    result = await operation(self._shared)
            except (StorageError, TimeoutError) as exc:
                if not self._degraded:
                    self._degraded = True
                    logger.warning(
                        "rate limits kept in this process: Redis is not answering",
                        extra={"event": "rate_limit_fallback", "error_type": type(exc).__name__},
                    )
            else:
                if self._degraded:
                    self._degraded = False
                    logger.info(
                        "rate limits shared through Redis again",
                        extra={"event": "rate_limit_shared"},
                    )
                return result
        return await operation(self._local)

    async def aclose(self) -> None:
        """Stop the in-memory store's expiry task."""
        timer = self._memory.timer
        if timer is not None and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
