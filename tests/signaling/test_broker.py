"""The fan-out: in one process, and across processes through a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from signaling.broker import BACKLOG_LIMIT, POSTER_NAME, PREFIX, Broker, RedisBroker


class Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.changed.set()

    async def until(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.messages


async def test_in_memory_post_and_publish_reach_every_subscriber_in_order() -> None:
    broker = Broker()
    first, second = Inbox(), Inbox()
    await broker.subscribe("c", first)
    subscription = await broker.subscribe("c", second)
    for i in range(5):
        await broker.post("c", {"i": i})
    assert await broker.publish("c", {"i": 5}) == 2
    await subscription.cancel()
    assert await broker.publish("c", {"i": 6}) == 1
    assert [m["i"] for m in first.messages] == [0, 1, 2, 3, 4, 5, 6]
    assert [m["i"] for m in second.messages] == [0, 1, 2, 3, 4, 5]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def brokers(redis_url: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """Two processes' brokers (their own Redis clients), as two servers have."""
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    pair = (RedisBroker(clients[0]), RedisBroker(clients[1]))
    for broker in pair:
        await broker.start()
    yield pair
    for broker in pair:
        await broker.stop()
    for client in clients:
        await client.aclose()


async def test_posts_cross_processes_in_order(brokers: tuple[RedisBroker, RedisBroker]) -> None:
    here, there = brokers
    channel = f"test:{uuid.uuid4().hex}"
    inbox = Inbox()
    await there.subscribe(channel, inbox)
    for i in range(300):
        await here.post(channel, {"i": i})
    received = await inbox.until(300)
    assert [m["i"] for m in received] == list(range(300))


async def test_publish_counts_the_processes_that_received(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    here, there = brokers
    channel = f"test:{uuid.uuid4().hex}"
    assert await here.publish(channel, {"n": 0}) == 0
    inbox_here, inbox_there = Inbox(), Inbox()
    await here.subscribe(channel, inbox_here)
    await there.subscribe(channel, inbox_there)
    assert await here.publish(channel, {"n": 1}) == 2
    assert (await inbox_there.until(1))[0] == {"n": 1}
    assert (await inbox_here.until(1))[0] == {"n": 1}


async def test_posting_recovers_when_redis_drops_its_connection(
    brokers: tuple[RedisBroker, RedisBroker], redis: Redis
) -> None:
    here, there = brokers

    async def posters() -> set[str]:
        return {c["id"] for c in await redis.client_list() if c.get("name") == POSTER_NAME}

    elsewhere = await posters()  # other servers' on the same Redis, if any
    channel = f"test:{uuid.uuid4().hex}"
    inbox = Inbox()
    await there.subscribe(channel, inbox)
    await here.post(channel, {"i": -1})
    await inbox.until(1)
    # The broker posts on a connection of its own (on which Redis sends no replies).
    killed = await posters() - elsewhere
    assert len(killed) == 1
    await redis.client_kill_filter(_id=next(iter(killed)))

    # Posting goes on without raising: once the broker has noticed, on a new connection.
    async with asyncio.timeout(5):
        while not any(m.get("after") for m in inbox.messages):
            await here.post(channel, {"after": True})
            await asyncio.sleep(0.05)
    assert len(await posters() - elsewhere - killed) == 1
    start = len(inbox.messages)
    for i in range(50):
        await here.post(channel, {"i": i})
    received = await inbox.until(start + 50)
    assert [m["i"] for m in received[start:]] == list(range(50))


async def test_post_channels_carry_the_prefix(
    brokers: tuple[RedisBroker, RedisBroker], redis: Redis
) -> None:
    """Other tenants of the Redis see Televisit's channels under its prefix."""
    here, _there = brokers
    channel = f"test:{uuid.uuid4().hex}"
    outside = redis.pubsub()
    await outside.subscribe(PREFIX + channel)
    assert (await outside.get_message(timeout=2))["type"] == "subscribe"
    await here.post(channel, {"x": 1})
    message = None
    async with asyncio.timeout(5):
        while message is None:
            message = await outside.get_message(timeout=1)
    assert message["data"] == b'{"x": 1}'
    await outside.aclose()


async def test_a_handler_that_waits_holds_up_only_its_own_channel(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    """A relay tearing a call down must not stall every other message of its process."""
    here, there = brokers
    slow_channel, fast_channel = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    release, finished = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def slow(message: dict[str, Any]) -> None:
        seen.append(message["i"])
        if message["i"] == 0:
            await release.wait()
        if message["i"] == 2:
            finished.set()

    fast = Inbox()
    await there.subscribe(slow_channel, slow, may_wait=True)
    await there.subscribe(fast_channel, fast)
    for i in range(3):
        await here.post(slow_channel, {"i": i})
    await here.post(fast_channel, {"n": 1})
    # Posted after the slow channel's three, read after them, delivered while the first waits.
    assert await fast.until(1) == [{"n": 1}]
    assert seen == [0]
    release.set()
    await asyncio.wait_for(finished.wait(), 5)
    assert seen == [0, 1, 2]


async def test_what_waits_for_a_handler_that_left_is_dropped(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    here, there = brokers
    channel, marker = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    release = asyncio.Event()
    seen: list[int] = []

    async def slow(message: dict[str, Any]) -> None:
        seen.append(message["i"])
        if message["i"] == 0:
            await release.wait()

    subscription = await there.subscribe(channel, slow, may_wait=True)
    marks = Inbox()
    await there.subscribe(marker, marks)
    for i in range(3):
        await here.post(channel, {"i": i})
    await here.post(marker, {})
    await marks.until(1)  # 1 and 2 are waiting behind 0
    await subscription.cancel()  # as a call's relay unsubscribes when the call closes
    # A newcomer on the channel gets what is posted after it came, behind what was queued.
    newcomer = Inbox()
    await there.subscribe(channel, newcomer, may_wait=True)
    await here.post(channel, {"i": 3})
    release.set()
    assert await newcomer.until(1) == [{"i": 3}]
    assert seen == [0]


async def test_a_backlog_that_fills_drops_what_arrives_and_stays_bounded(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    """A handler stuck on one message: its channel keeps at most BACKLOG_LIMIT waiting."""
    here, there = brokers
    channel, marker = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    release = asyncio.Event()
    seen: list[int] = []

    async def stuck(message: dict[str, Any]) -> None:
        seen.append(message["i"])
        await release.wait()

    await there.subscribe(channel, stuck, may_wait=True)
    marks = Inbox()
    await there.subscribe(marker, marks)
    total = BACKLOG_LIMIT + 50
    dropped_before = there.dropped
    for i in range(total):
        await here.post(channel, {"i": i})
    await here.post(marker, {})
    await marks.until(1)  # everything before it was read
    dropped = there.dropped - dropped_before
    # One message is with the handler (if its task ran before the others arrived), the
    # backlog holds BACKLOG_LIMIT, the rest was dropped.
    assert total - BACKLOG_LIMIT - 1 <= dropped <= total - BACKLOG_LIMIT
    release.set()
    async with asyncio.timeout(5):
        while len(seen) < total - dropped:  # noqa: ASYNC110 (the handler's task runs meanwhile)
            await asyncio.sleep(0.01)
    # What was kept is what came first (and, once the handler took its first message, one that
    # came later), in order.
    assert seen[:BACKLOG_LIMIT] == list(range(BACKLOG_LIMIT))
    assert seen == sorted(seen)


async def test_subscribers_racing_for_a_channel_both_wait_for_redis(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    """The second subscriber of a channel being subscribed returns only once Redis confirmed:
    what is published right after reaches it."""
    here, there = brokers
    channel = f"test:{uuid.uuid4().hex}"
    first, second = Inbox(), Inbox()
    tasks = [
        asyncio.create_task(there.subscribe(channel, first)),
        asyncio.create_task(there.subscribe(channel, second)),
    ]
    done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    assert await here.publish(channel, {"n": 1}) == 1
    await asyncio.gather(*tasks)
    inbox = first if tasks[0] in done else second
    assert await inbox.until(1) == [{"n": 1}]


async def test_a_last_subscriber_leaving_as_another_arrives_leaves_the_channel_subscribed(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    here, there = brokers
    for _ in range(5):
        channel = f"test:{uuid.uuid4().hex}"
        leaving = await there.subscribe(channel, Inbox())
        arriving = Inbox()
        await asyncio.gather(leaving.cancel(), there.subscribe(channel, arriving))
        assert await here.publish(channel, {"n": 1}) == 1
        assert await arriving.until(1) == [{"n": 1}]
