"""Fan-out between the sockets of one process, or of many processes through Redis.

Channels carry small JSON objects. A subscriber's handler must be quick (it queues a message
for a socket, or schedules work); one process has one Redis pub/sub connection however many
sockets it serves, subscribing a channel when its first local subscriber arrives and
unsubscribing when its last leaves.

Processes also announce that they live (`Liveness`): a key with a short expiry, refreshed by
each live process, so the others can take over the rooms of one that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

logger = logging.getLogger("televisit.broker")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
PREFIX = "televisit:"
CONFIRM_SECONDS = 2.0


class Subscription:
    def __init__(self, broker: Broker, channel: str, handler: Handler) -> None:
        self.broker, self.channel, self.handler = broker, channel, handler

    async def cancel(self) -> None:
        await self.broker._unsubscribe(self)


class Broker:
    """In-memory fan-out for one process; `RedisBroker` extends it across processes."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Subscription]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._handlers.clear()

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        """Deliver to every subscriber of the channel; the number of receivers."""
        return await self._dispatch(channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        subscription = Subscription(self, channel, handler)
        self._handlers.setdefault(channel, []).append(subscription)
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> bool:
        """Remove it; True when it was the channel's last local subscriber."""
        handlers = self._handlers.get(subscription.channel)
        if not handlers or subscription not in handlers:
            return False
        handlers.remove(subscription)
        if handlers:
            return False
        del self._handlers[subscription.channel]
        return True

    async def _dispatch(self, channel: str, message: dict[str, Any]) -> int:
        handlers = list(self._handlers.get(channel, ()))
        for subscription in handlers:
            try:
                await subscription.handler(message)
            except Exception as exc:
                logger.exception("subscriber failed", extra={"error_type": type(exc).__name__})
        return len(handlers)


class RedisBroker(Broker):
    """Channels shared by every process connected to the same Redis."""

    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis
        self._pubsub: PubSub = redis.pubsub()
        self._reader: asyncio.Task[None] | None = None
        # Redis confirms a SUBSCRIBE asynchronously; until then a PUBLISH can pass it by.
        self._confirming: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        # A channel nobody uses keeps the connection subscribed, so the reader has work at once.
        # If Redis does not answer yet, the reader keeps trying (readyz reports it meanwhile);
        # redis-py subscribes every channel again on each new connection.
        with contextlib.suppress(Exception):
            await self._pubsub.subscribe(PREFIX + "hello")
        self._reader = asyncio.create_task(self._read(), name="redis-broker")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        await super().stop()

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        receivers = await self._redis.publish(PREFIX + channel, json.dumps(message))
        return int(receivers)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        first = channel not in self._handlers
        subscription = await super().subscribe(channel, handler)
        if first:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirming[channel] = confirmed
            try:
                await self._pubsub.subscribe(PREFIX + channel)
                # Wait for Redis to confirm, so what is published next reaches this channel.
                await asyncio.wait_for(asyncio.shield(confirmed), CONFIRM_SECONDS)
            except Exception as exc:
                logger.warning("redis subscribe failed", extra={"error_type": type(exc).__name__})
            finally:
                self._confirming.pop(channel, None)
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> bool:
        last = await super()._unsubscribe(subscription)
        if last:
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(PREFIX + subscription.channel)
        return last

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "redis pub/sub read failed", extra={"error_type": type(exc).__name__}
                )
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    if not self._pubsub.subscribed:
                        await self._pubsub.subscribe(
                            PREFIX + "hello", *(PREFIX + c for c in self._handlers)
                        )
                continue
            if message is None:
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if message.get("type") == "subscribe":
                waiting = self._confirming.get(channel.removeprefix(PREFIX))
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
                continue
            if message.get("type") != "message":
                continue
            try:
                payload = json.loads(message["data"])
            except (ValueError, TypeError):
                continue
            await self._dispatch(channel.removeprefix(PREFIX), payload)


class Liveness:
    """Which processes live. Alone (no Redis), this process is the only one."""

    def __init__(self, process_id: str) -> None:
        self.process_id = process_id

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def alive(self, process_id: str) -> bool:
        return process_id == self.process_id


class RedisLiveness(Liveness):
    TTL_SECONDS = 6
    REFRESH_SECONDS = 2.0

    def __init__(self, process_id: str, redis: Redis) -> None:
        super().__init__(process_id)
        self._redis = redis
        self._task: asyncio.Task[None] | None = None

    def _key(self, process_id: str) -> str:
        return f"{PREFIX}process:{process_id}"

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.set(self._key(self.process_id), "1", ex=self.TTL_SECONDS)
        self._task = asyncio.create_task(self._refresh(), name="liveness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._redis.delete(self._key(self.process_id))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.REFRESH_SECONDS)
            try:
                await self._redis.set(self._key(self.process_id), "1", ex=self.TTL_SECONDS)
            except Exception as exc:
                logger.warning("liveness refresh failed", extra={"error_type": type(exc).__name__})

    async def alive(self, process_id: str) -> bool:
        if process_id == self.process_id:
            return True
        return bool(await self._redis.exists(self._key(process_id)))
