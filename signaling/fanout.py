"""Queue fan-out: the consoles and waiting patients of this process that watch a queue.

`queue:{clinician}` carries "the queue changed". A process with local watchers of that clinician
subscribes the channel once (however many watchers arrive at once: the subscribing task is stored
before its first await and later watchers await it), reads the queue once per burst of news
(news during a read runs one more) and pushes the snapshot to every watcher. News posted while
Redis is away is lost: once it is back, every queue watched here is read again (`resync`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import defaultdict
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select

from app.auth.models import User
from app.config import Settings
from app.db import Database, utcnow
from scheduling import calls
from scheduling import guests as guest_links
from signaling.broker import Broker, Subscription
from signaling.participants import Participants
from signaling.queue import Snapshot, build

logger = logging.getLogger("televisit.signaling")

# The typical consult length (and the clinician's time zone) is re-read at most this often.
CONSULT_CACHE_SECONDS = 60.0


class QueueWatcher(Protocol):
    def on_queue(self, snapshot: Snapshot) -> None: ...


class QueueFanout:
    def __init__(
        self, *, db: Database, settings: Settings, broker: Broker, participants: Participants
    ) -> None:
        self.db, self.settings, self.broker = db, settings, broker
        self.participants = participants
        self._watchers: dict[uuid.UUID, set[QueueWatcher]] = defaultdict(set)
        # One subscription per channel, however many callers ask at once: each key holds the
        # task that subscribes, stored before its first await, so a second caller awaits it.
        self._subscriptions: dict[uuid.UUID, asyncio.Task[Subscription]] = {}
        self._refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._consult: dict[uuid.UUID, tuple[int, float]] = {}
        self._zones: dict[uuid.UUID, tuple[ZoneInfo, float]] = {}

    def stop(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()

    async def watch(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        self._watchers[clinician_id].add(watcher)
        subscribing = self._subscriptions.get(clinician_id)
        if subscribing is None:
            subscribing = self._subscriptions[clinician_id] = asyncio.create_task(
                self.broker.subscribe(
                    f"queue:{clinician_id}", lambda _message: self._news(clinician_id)
                )
            )
        await asyncio.shield(subscribing)

    async def unwatch(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        watchers = self._watchers.get(clinician_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[clinician_id]
            subscribing = self._subscriptions.pop(clinician_id, None)
            if subscribing is not None:
                await (await subscribing).cancel()

    async def changed(self, clinician_id: uuid.UUID) -> None:
        """Tell every process watching this queue. Lost while Redis is away: each process
        reads its watched queues again once it is back (`resync`)."""
        await self.participants.post(f"queue:{clinician_id}", {"changed": str(clinician_id)})

    def consult_changed(self, clinician_id: uuid.UUID) -> None:
        """A call ended: the typical consult length is read again next time."""
        self._consult.pop(clinician_id, None)

    async def snapshot(self, clinician_id: uuid.UUID) -> Snapshot:
        rows = await calls.queue_rows(self.db, clinician_id, day=await self._today(clinician_id))
        async with self.db.session(write=False) as session:
            guests = await guest_links.of_appointments(session, [r.appointment_id for r in rows])
        return build(
            rows,
            consult_seconds=await self._consult_seconds(clinician_id),
            now=utcnow(),
            guests=guests,
        )

    async def resync(self) -> None:
        """Redis is back: what was posted while it was away is lost. Read every queue watched
        here again (consoles and waiting patients get the current one)."""
        for clinician_id in list(self._watchers):
            await self._news(clinician_id)

    async def _today(self, clinician_id: uuid.UUID) -> tuple[dt.datetime, dt.datetime]:
        """The clinician's day, in their time zone, as the queue shows it: from midnight to
        midnight, and as far past it as a patient may already check in."""
        cached = self._zones.get(clinician_id)
        if cached is None or time.monotonic() - cached[1] >= CONSULT_CACHE_SECONDS:
            async with self.db.session(write=False) as session:
                name = await session.scalar(select(User.timezone).where(User.id == clinician_id))
            try:
                zone = ZoneInfo(name or "UTC")
            except (ZoneInfoNotFoundError, ValueError):
                zone = ZoneInfo("UTC")
            cached = self._zones[clinician_id] = (zone, time.monotonic())
        zone = cached[0]
        today = utcnow().astimezone(zone).date()
        start = dt.datetime.combine(today, dt.time(), tzinfo=zone)
        end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=zone)
        window = dt.timedelta(minutes=self.settings.checkin_minutes_before)
        return start.astimezone(dt.UTC), end.astimezone(dt.UTC) + window

    async def _news(self, clinician_id: uuid.UUID) -> None:
        # Coalesce bursts: one read of the queue runs per clinician; news during it runs another.
        self._dirty.add(clinician_id)
        if clinician_id not in self._refreshing:
            self._refreshing[clinician_id] = asyncio.create_task(self._refresh(clinician_id))

    async def _refresh(self, clinician_id: uuid.UUID) -> None:
        try:
            while clinician_id in self._dirty:
                self._dirty.discard(clinician_id)
                watchers = self._watchers.get(clinician_id)
                if not watchers:
                    return
                snapshot = await self.snapshot(clinician_id)
                for watcher in list(self._watchers.get(clinician_id, ())):
                    watcher.on_queue(snapshot)
        except Exception as exc:
            logger.exception("queue refresh failed", extra={"error_type": type(exc).__name__})
        finally:
            self._refreshing.pop(clinician_id, None)

    async def _consult_seconds(self, clinician_id: uuid.UUID) -> int:
        cached = self._consult.get(clinician_id)
        if cached is not None and time.monotonic() - cached[1] < CONSULT_CACHE_SECONDS:
            return cached[0]
        seconds = await calls.typical_consult_seconds(self.db, clinician_id)
        self._consult[clinician_id] = (seconds, time.monotonic())
        return seconds
