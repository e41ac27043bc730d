"""Bounded queues and one subscription per channel, checked on the objects themselves."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.db import Database
from scheduling.models import Appointment
from signaling.broker import RedisBroker
from signaling.hub import Signaling
from signaling.sockets import OUTBOX_BYTES, OUTBOX_SIZE, Connection


def closing(connection: Connection) -> bool:
    """Read afresh each time (mypy would keep the first answer)."""
    return connection.closing


class TestOutbox:
    def test_a_client_that_lets_messages_pile_up_is_disconnected(self) -> None:
        # Nothing is written: no writer runs, as with a client that stopped reading.
        connection = Connection(websocket=None)  # type: ignore[arg-type]  # never touched
        for i in range(OUTBOX_SIZE):
            connection.send({"type": "pong", "i": i})
        assert not closing(connection)
        connection.send({"type": "pong"})
        assert closing(connection)
        connection.send({"type": "pong"})
        assert len(connection._outbox) == OUTBOX_SIZE + 1  # the messages, then the close

    def test_so_is_one_whose_queue_holds_too_many_bytes(self) -> None:
        connection = Connection(websocket=None)  # type: ignore[arg-type]  # never touched
        big = {"type": "message", "data": {"text": "x" * 60_000}}
        sent = 0
        while not connection.closing:
            connection.send(big)
            sent += 1
        assert sent < OUTBOX_SIZE
        assert sent * 60_000 > OUTBOX_BYTES


@pytest.fixture
async def hub(
    db: Database, settings: Settings, redis_url: str
) -> AsyncIterator[tuple[Signaling, RedisBroker]]:
    client = Redis.from_url(redis_url)
    broker = RedisBroker(client)
    await broker.start()
    yield Signaling(db=db, settings=settings, broker=broker, process_id=uuid.uuid4().hex), broker
    await broker.stop()
    await client.aclose()


class TestOneSubscriptionPerChannel:
    async def test_watchers_arriving_together_share_one_subscription(
        self, hub: tuple[Signaling, RedisBroker]
    ) -> None:
        signaling, broker = hub
        clinician = uuid.uuid4()

        class Watcher:
            def on_queue(self, snapshot: object) -> None:
                return None

        watchers = [Watcher() for _ in range(5)]
        await asyncio.gather(*(signaling.watch_queue(clinician, w) for w in watchers))
        assert len(broker._handlers[f"queue:{clinician}"]) == 1
        for watcher in watchers:
            await signaling.unwatch_queue(clinician, watcher)
        assert f"queue:{clinician}" not in broker._handlers

    async def test_a_call_is_hosted_once_however_many_ask(
        self, hub: tuple[Signaling, RedisBroker]
    ) -> None:
        signaling, broker = hub
        now = dt.datetime.now(dt.UTC)
        call = Appointment(id=uuid.uuid4(), start_at=now, end_at=now + dt.timedelta(minutes=20))
        await asyncio.gather(*(signaling.host_call(call) for _ in range(5)))
        assert len(broker._handlers[f"media:{call.id}"]) == 1
        assert await broker.publish(f"media:{call.id}", {"op": "ping"}) == 1
