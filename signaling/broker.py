"""Fan-out between the sockets of one process, or of many processes through Redis.

Channels carry small JSON objects. A subscriber's handler should be quick (it queues a message
for a socket, or schedules work); one process has one Redis pub/sub connection however many
sockets it serves, subscribing a channel when its first local subscriber arrives and
unsubscribing when its last leaves. A handler that may wait (the relay tearing a call down)
is subscribed with `may_wait`: across processes it runs on a task of its channel's own, in the
channel's order, so the one task that reads pub/sub for the whole process never waits for it.

Two ways to publish: `publish` waits for Redis to say how many processes received the message
(the media routing needs that count), `post` does not wait. Posting is the hot path (every
message between a call's participants, every queue change): it goes out on a connection of its
own on which Redis sends no replies (`CLIENT REPLY OFF`), so a message costs one write and no
round trip. Redis handles one connection's commands in order, so posts to a channel arrive in
the order they were made.

Queues are bounded. A handler that may wait has at most `BACKLOG_LIMIT` messages waiting for
it; past that, what arrives for that channel is dropped (and logged once per overflow) until it
catches up: negotiation answers a dropped step with a timeout on the client, which starts
again, and the hub's reconciliation catches a dropped teardown.

When Redis goes away, publishing raises `BrokerUnavailable` (callers answer "try again" or
let the message go, as pub/sub would have); the reader reconnects and subscribes every channel
again, then calls `on_resubscribed`, so the hub can send what may have been missed (queues).
Which processes live is the database's business, not Redis's (signaling.liveness).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from signaling.liveness import MEMORY, redis_fanout

logger = logging.getLogger("televisit.broker")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
PREFIX = "televisit:"
# A channel no one uses, always subscribed: its confirmation after a reconnect says all are.
HELLO = "hello"
CONFIRM_SECONDS = 2.0
WRITE_TIMEOUT_SECONDS = 5.0
# How the posting connection shows in Redis's CLIENT LIST.
POSTER_NAME = "televisit-poster"
# Messages waiting for one channel's handlers that may wait; past it, arrivals are dropped.
BACKLOG_LIMIT = 256


class BrokerUnavailable(Exception):
    """Redis did not take the message (it is down or restarting): nothing was sent."""


class Subscription:
    def __init__(
        self, broker: Broker, channel: str, handler: Handler, *, may_wait: bool = False
    ) -> None:
        self.broker, self.channel, self.handler = broker, channel, handler
        self.may_wait = may_wait

    async def cancel(self) -> None:
        await self.broker._unsubscribe(self)


class Broker:
    """In-memory fan-out for one process; `RedisBroker` extends it across processes."""

    # Processes of one database must fan out the same way (signaling.liveness).
    fanout = MEMORY

    def __init__(self) -> None:
        self._handlers: dict[str, list[Subscription]] = {}
        # Called after Redis came back and every channel was subscribed again.
        self.on_resubscribed: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._handlers.clear()

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        """Deliver to every subscriber of the channel; the number of receivers."""
        return await self._dispatch(channel, message)

    async def post(self, channel: str, message: dict[str, Any]) -> None:
        """Deliver to every subscriber of the channel, without learning how many there were."""
        await self._dispatch(channel, message)

    async def subscribe(
        self, channel: str, handler: Handler, *, may_wait: bool = False
    ) -> Subscription:
        """Call `handler` with every message published to the channel from now on.

        In one process, `publish` and `post` wait for every handler, `may_wait` or not.
        """
        subscription = Subscription(self, channel, handler, may_wait=may_wait)
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
            await _deliver(subscription, message)
        return len(handlers)


async def _deliver(subscription: Subscription, message: dict[str, Any]) -> None:
    try:
        await subscription.handler(message)
    except Exception as exc:
        logger.exception("subscriber failed", extra={"error_type": type(exc).__name__})


class RedisBroker(Broker):
    """Channels shared by every process connected to the same Redis."""

    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis
        where = redis.connection_pool.connection_kwargs
        self.fanout = redis_fanout(
            str(where.get("host", where.get("path", ""))),
            int(where.get("port", 0)),
            int(where.get("db", 0)),
        )
        self._pubsub: PubSub = redis.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self._poster = _Poster(redis)
        # Redis confirms a SUBSCRIBE asynchronously; until then a PUBLISH can pass it by.
        # Every subscriber of a channel being confirmed waits for the same confirmation.
        self._confirming: dict[str, asyncio.Future[None]] = {}
        # Messages for handlers that may wait, per channel, and the task working through each.
        self._backlogs: dict[str, deque[tuple[Subscription, dict[str, Any]]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._overflowing: set[str] = set()
        self.dropped = 0
        # The pub/sub connection failed: the next confirmation of the hello channel means
        # every channel is subscribed again.
        self._lost = False
        self._resync: asyncio.Task[None] | None = None
        # Channels subscribed in Redis (or that redis-py subscribes again on reconnecting),
        # changed only under `_commands`.
        self._subscribed: set[str] = set()
        self._commands = asyncio.Lock()

    async def start(self) -> None:
        # A channel nobody uses keeps the connection subscribed, so the reader has work at once.
        # If Redis does not answer yet, the reader keeps trying (readyz reports it meanwhile);
        # redis-py subscribes every channel again on each new connection.
        with contextlib.suppress(Exception):
            await self._pubsub.subscribe(PREFIX + HELLO)
        self._reader = asyncio.create_task(self._read(), name="redis-broker")

    async def stop(self) -> None:
        for task in [self._reader, self._resync, *self._workers.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        await self._poster.close()
        await super().stop()

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        try:
            receivers = await self._redis.publish(PREFIX + channel, json.dumps(message))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(type(exc).__name__) from exc
        return int(receivers)

    async def post(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self._poster.publish(PREFIX + channel, json.dumps(message))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(type(exc).__name__) from exc

    async def subscribe(
        self, channel: str, handler: Handler, *, may_wait: bool = False
    ) -> Subscription:
        subscription = await super().subscribe(channel, handler, may_wait=may_wait)
        # SUBSCRIBE and UNSUBSCRIBE go out one at a time, each decided on the handlers as they
        # are then: a channel's last subscriber leaving while a new one arrives cannot leave
        # the channel unsubscribed in Redis with a handler waiting on it.
        async with self._commands:
            if subscription not in self._handlers.get(channel, ()):
                return subscription  # cancelled meanwhile
            confirmed = self._confirming.get(channel)
            if channel not in self._subscribed:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirming[channel] = confirmed
                try:
                    await self._pubsub.subscribe(PREFIX + channel)
                except Exception as exc:
                    # Not subscribed now; the reader subscribes it once Redis is back.
                    logger.warning(
                        "redis subscribe failed", extra={"error_type": type(exc).__name__}
                    )
                    self._lost = True
                    del self._confirming[channel]
                    confirmed.set_result(None)
                    return subscription
                self._subscribed.add(channel)
        if confirmed is not None:
            # Wait for Redis to confirm, so what is published next reaches this channel. A
            # second subscriber arriving meanwhile waits for the same confirmation.
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), CONFIRM_SECONDS)
            except TimeoutError:
                logger.warning("redis subscribe not confirmed")
            if self._confirming.get(channel) is confirmed and confirmed.done():
                del self._confirming[channel]
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> bool:
        last = await super()._unsubscribe(subscription)
        channel = subscription.channel
        if last:
            async with self._commands:
                if channel not in self._handlers and channel in self._subscribed:
                    self._subscribed.discard(channel)
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(PREFIX + channel)
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
                self._lost = True
                await asyncio.sleep(0.5)
                # redis-py subscribes again what it knew of on a new connection; channels whose
                # SUBSCRIBE failed are not among them.
                async with self._commands:
                    known = self._pubsub.channels
                    missing = [c for c in (HELLO, *self._handlers) if _key(c) not in known]
                    if missing:
                        with contextlib.suppress(Exception):
                            await self._pubsub.subscribe(*(PREFIX + c for c in missing))
                            self._subscribed.update(c for c in missing if c != HELLO)
                continue
            if message is None:
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if message.get("type") == "subscribe":
                name = channel.removeprefix(PREFIX)
                waiting = self._confirming.get(name)
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
                if name == HELLO and self._lost:
                    self._resubscribed()
                continue
            if message.get("type") != "message":
                continue
            try:
                payload = json.loads(message["data"])
            except (ValueError, TypeError):
                continue
            await self._hand_over(channel.removeprefix(PREFIX), payload)

    def _resubscribed(self) -> None:
        self._lost = False
        logger.info("redis pub/sub subscribed again")
        callback = self.on_resubscribed
        if callback is not None and (self._resync is None or self._resync.done()):
            self._resync = asyncio.create_task(_run_quietly(callback()), name="redis-resync")

    async def _hand_over(self, channel: str, message: dict[str, Any]) -> None:
        for subscription in list(self._handlers.get(channel, ())):
            if not subscription.may_wait:
                await _deliver(subscription, message)
                continue
            backlog = self._backlogs.setdefault(channel, deque())
            if len(backlog) >= BACKLOG_LIMIT:
                self.dropped += 1
                if channel not in self._overflowing:
                    self._overflowing.add(channel)
                    logger.warning("channel backlog full: dropping its messages")
                continue
            self._overflowing.discard(channel)
            backlog.append((subscription, message))
            if channel not in self._workers:
                self._workers[channel] = asyncio.create_task(
                    self._work_through(channel), name="redis-broker-channel"
                )

    async def _work_through(self, channel: str) -> None:
        backlog = self._backlogs[channel]
        try:
            while backlog:
                subscription, message = backlog.popleft()
                # Gone meanwhile (a call's relay closed): what followed is not for it.
                if subscription in self._handlers.get(channel, ()):
                    await _deliver(subscription, message)
        finally:
            del self._workers[channel]
            if not backlog:
                del self._backlogs[channel]


def _key(channel: str) -> bytes:
    """A channel's name as redis-py keeps it (bytes: responses are not decoded)."""
    return (PREFIX + channel).encode()


async def _run_quietly(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception as exc:
        logger.exception("resync failed", extra={"error_type": type(exc).__name__})


class _Poster:
    """PUBLISH without a round trip: one connection on which Redis sends no replies.

    Nothing arrives on that connection, so a read on it returns only when it closes: a watcher
    notices and the next post opens a new one. A post that fails to write is tried once more on a
    new connection, and then raises. What was written just before Redis went away can be lost
    unnoticed; pub/sub delivers at most once anyway (a subscriber reconnecting misses what was
    published meanwhile), and every client reconnects and starts its negotiation again.
    """

    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._connection: AbstractConnection | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    async def publish(self, channel: str, data: str) -> None:
        connection = await self._open()
        try:
            await self._send(connection, channel, data)
        except (RedisConnectionError, OSError):
            if self._connection is connection:
                await self._drop()
            await self._send(await self._open(), channel, data)

    @staticmethod
    async def _send(connection: AbstractConnection, channel: str, data: str) -> None:
        if not connection.is_connected:
            # redis-py would connect it again, without replies turned off.
            raise RedisConnectionError("the posting connection closed")
        # The write waits only when Redis stops reading; then it gives up, as a command would.
        async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
            await connection.send_packed_command(
                connection.pack_command("PUBLISH", channel, data), check_health=False
            )

    async def _open(self) -> AbstractConnection:
        connection = self._connection
        if connection is not None and connection.is_connected:
            return connection
        async with self._opening:
            connection = self._connection
            if connection is not None and connection.is_connected:
                return connection
            await self._drop()
            # No socket timeout on this connection: its watcher's read must wait for ever, and a
            # write bounded by redis-py's timeout would cost a task each (asyncio.wait_for).
            pool = self._pool
            connection = pool.connection_class(
                **{**pool.connection_kwargs, "socket_timeout": None, "client_name": POSTER_NAME}
            )
            await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)
            self._connection = connection
            self._watcher = asyncio.create_task(self._watch(connection), name="redis-poster")
            return connection

    async def _watch(self, connection: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            await connection.read_response(disconnect_on_error=True)
        # Closed by Redis (or something arrived that should not have): start afresh next time.
        if self._connection is connection:
            self._connection = None
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)

    async def _drop(self) -> None:
        watcher, connection = self._watcher, self._connection
        self._watcher = self._connection = None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)

    async def close(self) -> None:
        await self._drop()
