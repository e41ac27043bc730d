"""Which serving processes live: a heartbeat in the database, not in Redis.

Each process keeps a row in `server_processes` and writes its heartbeat every third of
`TELEVISIT_LIVENESS_SECONDS`; a row whose heartbeat is older than that is a process taken for
dead. The database is where presence and calls live, so liveness lives there too: a Redis
restart (or a Redis without persistence) loses nothing that says who is alive, and a process
that cannot reach the database cannot hold a visit anyway.

Being taken for dead is not final. A process that was only stalled (paused, starved, cut off
from the database for a while) finds on its next heartbeat that its row is gone or old, writes
it again, and takes back what it holds (signaling.upkeep's reconciliation). What the others did
meanwhile was only to start grace periods, which a live connection ends.

Without Redis a process fans out in memory: it can reach only its own sockets, so a second
process on the same database would split the clinic in two. `register` refuses that: a process
that finds another live one with a different fan-out (or any other, when it has no Redis)
waits one liveness period for that one to go (a restart just after a crash), then refuses to
start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time

from sqlalchemy import delete, select, update

from app.db import Database, utcnow
from signaling.models import ServerProcess

logger = logging.getLogger("televisit.liveness")

MEMORY = "memory"


class ConfigurationError(RuntimeError):
    """This process must not serve alongside the ones already serving."""


def redis_fanout(host: str, port: int, database: int) -> str:
    """How a process sharing this Redis is named (a digest: no address or secret stored)."""
    where = f"{host}:{port}/{database}".encode()
    return "redis:" + hashlib.sha256(where).hexdigest()[:24]


class Liveness:
    def __init__(self, db: Database, process_id: str, *, fanout: str, seconds: float) -> None:
        self.db, self.process_id, self.fanout = db, process_id, fanout
        self.seconds = seconds
        self.beat_every = seconds / 3
        # When this process's heartbeats began to follow each other within a liveness period
        # (monotonic). Only a process that has been beating steadily for a whole period judges
        # others: after a database outage every heartbeat is old, its own included.
        self._steady_since: float | None = None
        self._last_beat: float | None = None

    def _cutoff(self) -> dt.datetime:
        return utcnow() - dt.timedelta(seconds=self.seconds)

    async def register(self) -> None:
        """Write this process's row, refusing to serve beside processes it cannot reach."""
        deadline = time.monotonic() + self.seconds + self.beat_every
        waited = False
        while True:
            clash = await self._clash()
            if clash is None:
                break
            if time.monotonic() >= deadline:
                logger.error(clash, extra={"event": "startup_refused"})
                raise ConfigurationError(clash)
            if not waited:
                # Said once: a start that takes a liveness period longer is explained.
                logger.warning(
                    "another process's heartbeat is fresh: waiting up to one liveness period "
                    "for it to go before starting",
                    extra={"event": "startup_waiting"},
                )
                waited = True
            await asyncio.sleep(min(0.5, self.beat_every))
        now = utcnow()
        async with self.db.session(write=True) as session:
            session.add(
                ServerProcess(
                    id=self.process_id, fanout=self.fanout, started_at=now, heartbeat_at=now
                )
            )
        self._last_beat = self._steady_since = time.monotonic()
        # Two processes starting at once both wrote their row before looking: each sees the
        # other now, and at least one refuses.
        clash = await self._clash()
        if clash is not None:
            await self.unregister()
            logger.error(clash, extra={"event": "startup_refused"})
            raise ConfigurationError(clash)

    async def _clash(self) -> str | None:
        async with self.db.session(write=False) as session:
            others = (
                await session.execute(
                    select(ServerProcess.fanout).where(
                        ServerProcess.id != self.process_id,
                        ServerProcess.heartbeat_at >= self._cutoff(),
                    )
                )
            ).scalars()
            fanouts = set(others)
        if not fanouts:
            return None
        if self.fanout == MEMORY:
            return (
                "Another Televisit process is serving this database. Without "
                "TELEVISIT_REDIS_URL a process reaches only its own sockets, so only one may "
                "serve: stop the other one, or set TELEVISIT_REDIS_URL (the same Redis) on "
                "every process."
            )
        if fanouts != {self.fanout}:
            return (
                "Another Televisit process is serving this database without this process's "
                "Redis (none, or another one). Every process of one database needs the same "
                "TELEVISIT_REDIS_URL."
            )
        return None

    async def unregister(self) -> None:
        async with self.db.session(write=True) as session:
            await session.execute(delete(ServerProcess).where(ServerProcess.id == self.process_id))

    async def beat(self) -> bool:
        """Write the heartbeat (the row again, if others took this process for dead and
        removed it). True when this process had been taken for dead, or could have been: its
        previous heartbeat is more than a liveness period old."""
        now = utcnow()
        async with self.db.session(write=True) as session:
            written = (
                await session.execute(
                    update(ServerProcess)
                    .where(ServerProcess.id == self.process_id)
                    .values(heartbeat_at=now)
                    .returning(ServerProcess.id)
                )
            ).first()
            if written is None:
                session.add(
                    ServerProcess(
                        id=self.process_id, fanout=self.fanout, started_at=now, heartbeat_at=now
                    )
                )
        beaten = time.monotonic()
        lapsed = (
            written is None or self._last_beat is None or (beaten - self._last_beat > self.seconds)
        )
        if lapsed or self._steady_since is None:
            self._steady_since = beaten
        self._last_beat = beaten
        return lapsed

    def missed_beat(self) -> None:
        """A heartbeat could not be written: until steady again, judge no one."""
        self._steady_since = None

    @property
    def steady(self) -> bool:
        since = self._steady_since
        return since is not None and time.monotonic() - since >= self.seconds

    async def alive(self, process_id: str) -> bool:
        if process_id == self.process_id:
            return True
        async with self.db.session(write=False) as session:
            found = await session.scalar(
                select(ServerProcess.id).where(
                    ServerProcess.id == process_id, ServerProcess.heartbeat_at >= self._cutoff()
                )
            )
        return found is not None

    async def live_processes(self) -> set[str]:
        async with self.db.session(write=False) as session:
            rows = await session.execute(
                select(ServerProcess.id).where(ServerProcess.heartbeat_at >= self._cutoff())
            )
            return {self.process_id, *rows.scalars()}

    async def dead_processes(self) -> list[str]:
        """Processes whose heartbeat stopped (this one never counts)."""
        async with self.db.session(write=False) as session:
            rows = await session.execute(
                select(ServerProcess.id).where(
                    ServerProcess.id != self.process_id,
                    ServerProcess.heartbeat_at < self._cutoff(),
                )
            )
            return list(rows.scalars())

    async def forget(self, processes: list[str]) -> None:
        """Remove the rows of processes whose patients were handed their grace period, if
        they are still silent (one that came back keeps its row)."""
        if not processes:
            return
        async with self.db.session(write=True) as session:
            await session.execute(
                delete(ServerProcess).where(
                    ServerProcess.id.in_(processes), ServerProcess.heartbeat_at < self._cutoff()
                )
            )
