"""No double booking under concurrency, through a real server process and in the database."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections import Counter

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.config import Settings
from app.db import Database, create_engine
from scheduling import visits
from scheduling.models import Appointment, Status
from tests.factories import Staff, booking_body, local_instant, next_weekday, set_hours
from tests.live import LiveServer

CONCURRENT = 120


async def _storm(
    server: LiveServer, headers: dict[str, str], bodies: list[dict[str, object]]
) -> list[int]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as http:
        gate = asyncio.Event()

        async def one(body: dict[str, object]) -> int:
            await gate.wait()
            response = await http.post("/api/v1/appointments", json=body, headers=headers)
            assert "locked" not in response.text.lower()
            return response.status_code

        tasks = [asyncio.create_task(one(body)) for body in bodies]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks)


class TestRace:
    async def test_many_concurrent_bookings_of_one_slot_give_exactly_one_201(
        self, live_server: LiveServer, staff: Staff
    ) -> None:
        start = local_instant(next_weekday(50), "10:00", "America/New_York")
        bodies = [
            booking_body(staff.clinician.id, start, name=f"Patient {i}") for i in range(CONCURRENT)
        ]
        codes = Counter(await _storm(live_server, staff.scheduler.headers, bodies))
        assert codes == Counter({201: 1, 409: CONCURRENT - 1})

    async def test_overlapping_but_not_identical_ranges_cannot_both_be_booked(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        day = next_weekday(51)
        zone = "America/New_York"
        await set_hours(db, staff.clinician.id, timezone=zone, slot_minutes=20)
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            first = await http.post(
                "/api/v1/appointments",
                json=booking_body(staff.clinician.id, local_instant(day, "09:20", zone)),
                headers=staff.scheduler.headers,
            )
            assert first.status_code == 201
            # The grid changes: 30-minute slots from 09:10, so 09:10-09:40 overlaps 09:20-09:40.
            weekly = [{"weekday": d, "start": "09:10", "end": "17:10"} for d in range(5)]
            await set_hours(db, staff.clinician.id, timezone=zone, slot_minutes=30, weekly=weekly)
            overlapping = await http.post(
                "/api/v1/appointments",
                json=booking_body(staff.clinician.id, local_instant(day, "09:10", zone)),
                headers=staff.scheduler.headers,
            )
            assert overlapping.status_code == 409
            assert overlapping.json()["error"]["code"] == "slot_unavailable"
            after = await http.post(
                "/api/v1/appointments",
                json=booking_body(staff.clinician.id, local_instant(day, "09:40", zone)),
                headers=staff.scheduler.headers,
            )
            assert after.status_code == 201  # back to back with 09:20-09:40

    async def test_concurrent_bookings_of_distinct_slots_all_succeed(
        self, live_server: LiveServer, staff: Staff
    ) -> None:
        day = next_weekday(52)
        begin = local_instant(day, "09:00", "America/New_York")
        bodies = [
            booking_body(staff.clinician.id, begin + dt.timedelta(minutes=20 * i))
            for i in range(24)
        ]
        codes = await _storm(live_server, staff.scheduler.headers, bodies)
        assert codes == [201] * 24


class TestDatabaseConstraint:
    """The database itself refuses overlap, whatever the application checks."""

    async def _insert(self, db: Database, staff: Staff, start: dt.datetime, minutes: int) -> bool:
        salt = visits.new_salt()
        now = dt.datetime.now(dt.UTC)
        try:
            async with db.session(write=True) as session:
                session.add(
                    Appointment(
                        id=uuid.uuid4(),
                        clinician_id=staff.other_clinician.id,
                        start_at=start,
                        end_at=start + dt.timedelta(minutes=minutes),
                        status=Status.BOOKED.value,
                        patient_name="Direct",
                        link_salt=salt,
                        link_hash=visits.token_hash(salt.hex()),
                        sequence=0,
                        created_by_id=staff.scheduler.id,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            return False
        except DBAPIError as exc:
            # Raw concurrent overlapping inserts may also deadlock inside the exclusion check
            # (each waits for the other's row); PostgreSQL then fails one. The app avoids this
            # by locking the clinician's row first (see repository.clinician_hours).
            if "deadlock" not in str(exc):
                raise
            return False
        return True

    async def test_concurrent_overlapping_inserts_leave_no_overlap(
        self, db: Database, staff: Staff, settings: Settings
    ) -> None:
        base = dt.datetime(2031, 3, 3, 9, 0, tzinfo=dt.UTC)
        # 40 ranges of 20 minutes starting a minute apart: each overlaps its 19 neighbours.
        # They queue for the test pool's few connections, and PostgreSQL takes its
        # deadlock_timeout (1 s) to fail each deadlock they make: the queue's last may wait
        # longer than the pool's 10 s (once, in a whole run), which is not what this tests.
        racing = Database(
            create_engine(settings.model_copy(update={"db_pool_timeout_seconds": 120}))
        )
        try:
            results = await asyncio.gather(
                *(
                    self._insert(racing, staff, base + dt.timedelta(minutes=i), 20)
                    for i in range(40)
                )
            )
        finally:
            await racing.dispose()
        assert any(results)
        async with db.session(write=False) as session:
            rows = (
                await session.execute(
                    select(Appointment.start_at, Appointment.end_at)
                    .where(
                        Appointment.clinician_id == staff.other_clinician.id,
                        Appointment.start_at >= base,
                        Appointment.start_at < base + dt.timedelta(hours=2),
                    )
                    .order_by(Appointment.start_at)
                )
            ).all()
        assert len(rows) == sum(results)
        for before, after in itertools.pairwise(rows):
            assert before.end_at <= after.start_at

    async def test_cancelled_appointments_do_not_hold_time(
        self, db: Database, staff: Staff
    ) -> None:
        start = dt.datetime(2031, 4, 1, 9, 0, tzinfo=dt.UTC)
        assert await self._insert(db, staff, start, 20)
        assert not await self._insert(db, staff, start + dt.timedelta(minutes=10), 20)
        async with db.session(write=True) as session:
            appointment = (
                await session.execute(
                    select(Appointment).where(
                        Appointment.clinician_id == staff.other_clinician.id,
                        Appointment.start_at == start,
                    )
                )
            ).scalar_one()
            appointment.status = Status.CANCELLED.value
        assert await self._insert(db, staff, start + dt.timedelta(minutes=10), 20)

    async def test_reactivating_into_an_overlap_is_refused(
        self, db: Database, staff: Staff
    ) -> None:
        start = dt.datetime(2031, 5, 1, 9, 0, tzinfo=dt.UTC)
        assert await self._insert(db, staff, start, 20)
        async with db.session(write=True) as session:
            first = (
                await session.execute(
                    select(Appointment).where(
                        Appointment.clinician_id == staff.other_clinician.id,
                        Appointment.start_at == start,
                    )
                )
            ).scalar_one()
            first.status = Status.CANCELLED.value
        assert await self._insert(db, staff, start, 20)

        async def reactivate() -> None:
            async with db.session(write=True) as session:
                await session.execute(
                    update(Appointment)
                    .where(Appointment.id == first.id)
                    .values(status=Status.BOOKED.value)
                )

        with pytest.raises(IntegrityError):
            await reactivate()
