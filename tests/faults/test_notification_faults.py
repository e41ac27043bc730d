"""Two `televisit serve` processes send notifications from one PostgreSQL outbox through a real
SMTP server; one is killed (SIGKILL) mid-send. Nothing is sent twice, and nothing else is lost:
every notification is sent once, except those the dead process was handing over at that
instant, which end `failed` (outcome unknown) and are never sent again."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from app.db import Database
from scheduling.notifications.models import Notification
from scheduling.notifications.worker import SENDS_AT_ONCE, UNKNOWN
from tests.conftest import ServerFactory
from tests.factories import Staff, booking_body, local_instant, next_weekday
from tests.faults.conftest import FAST, Figures, RedisServer
from tests.live import LiveServer
from tests.outside import MailServer

BOOKINGS = 48
# The SMTP server takes this long to answer each message's DATA: sends overlap the kill.
DATA_DELAY = 0.5


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer()
    server.inbox.data_delay = DATA_DELAY
    server.start()
    try:
        yield server
    finally:
        server.stop()


def starts(count: int) -> list[dt.datetime]:
    """`count` free 20-minute slots of the New York clinician (09:00-17:00 on weekdays)."""
    found: list[dt.datetime] = []
    day = next_weekday(7, weekday=0)
    while len(found) < count:
        if day.weekday() < 5:
            found += [
                local_instant(day, f"{9 + minute // 60:02d}:{minute % 60:02d}", "America/New_York")
                for minute in range(0, 8 * 60, 20)
            ]
        day += dt.timedelta(days=1)
    return found[:count]


async def outbox(db: Database, ids: set[uuid.UUID]) -> list[Notification]:
    async with db.session(write=False) as session:
        rows = await session.execute(
            select(Notification).where(Notification.appointment_id.in_(ids))
        )
        return list(rows.scalars())


def holder_pid(row: Notification) -> int | None:
    return int(row.claimed_by.split(".")[0]) if row.claimed_by else None


class TestKilledMidSend:
    async def test_nothing_sent_twice_nothing_else_lost(
        self,
        live_server_factory: ServerFactory,
        redis_server: RedisServer,
        mail: MailServer,
        staff: Staff,
        db: Database,
        figures: Figures,
    ) -> None:
        env = {
            "redis_url": redis_server.url,
            "smtp_url": mail.url,
            "mail_from": "Clinic <visits@clinic.example.org>",
            "reminder_hours": "",
            "notify_poll_seconds": "0.1",
            # A loaded machine must not make a sound send look hung; the lease is 4 x 3 + 10 s.
            "notify_timeout_seconds": "3",
            **FAST,
        }
        servers: list[LiveServer] = [live_server_factory(**env) for _ in range(2)]
        victim, survivor = servers
        ids: set[uuid.UUID] = set()
        async with httpx.AsyncClient(timeout=10) as http:
            for n, start in enumerate(starts(BOOKINGS)):
                response = await http.post(
                    f"{servers[n % 2].url}/api/v1/appointments",
                    json=booking_body(
                        staff.clinician.id,
                        start,
                        email=f"pat-{n}-{uuid.uuid4().hex[:6]}@example.org",
                    ),
                    headers=staff.scheduler.headers,
                )
                assert response.status_code == 201, response.text
                ids.add(uuid.UUID(response.json()["id"]))

        # Kill the victim while it is handing a message over: once it has sent one (so both
        # processes' sends are among those that arrived) and a message of a row it still holds
        # as `sending` has reached the server, which waits DATA_DELAY before its 250.
        async with asyncio.timeout(60):
            while True:
                rows = await outbox(db, ids)
                arrived_now = mail.inbox.message_ids()
                mine = [r for r in rows if holder_pid(r) == victim.process.pid]
                if any(r.status == "sent" for r in mine) and any(
                    r.status == "sending" and f"<{r.id}@testserver>" in arrived_now for r in mine
                ):
                    break
                await asyncio.sleep(0.01)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed_at = asyncio.get_running_loop().time()

        # The survivor sends the rest, takes the victim's claims back when their lease ends,
        # and marks the victim's sends in flight failed.
        async with asyncio.timeout(120):
            while True:
                rows = await outbox(db, ids)
                if all(r.status in ("sent", "failed") for r in rows):
                    break
                await asyncio.sleep(0.2)
        settled_after = asyncio.get_running_loop().time() - killed_at

        assert len(rows) == BOOKINGS
        arrived = mail.inbox.message_ids()
        assert max(arrived.values()) == 1, "a notification arrived twice"
        sent = [r for r in rows if r.status == "sent"]
        unknown = [r for r in rows if r.status == "failed"]
        for row in sent:
            assert arrived[f"<{row.id}@testserver>"] == 1
        # Only what the victim was handing over when it died, each sent at most once.
        assert 1 <= len(unknown) <= SENDS_AT_ONCE
        for row in unknown:
            assert row.last_error == UNKNOWN
            assert holder_pid(row) == victim.process.pid
            assert row.attempts == 1
        assert {holder_pid(r) for r in sent} == {victim.process.pid, survivor.process.pid}
        delivered_unknown = sum(arrived[f"<{r.id}@testserver>"] for r in unknown)
        assert len(arrived) == len(sent) + delivered_unknown
        figures["notifications"] = BOOKINGS
        figures["sent"] = len(sent)
        figures["in_flight_at_kill"] = len(unknown)
        figures["in_flight_that_arrived"] = delivered_unknown
        figures["settled_s_after_kill"] = settled_after
