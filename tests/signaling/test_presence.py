"""Presence per connection, the check-in window and an undone admission, in the database itself.

These are the statements the sockets, the heartbeat and the sweeper run, on both databases.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from app.db import Database
from scheduling import calls
from scheduling.models import Appointment, Status
from tests.factories import Staff
from tests.signaling.helpers import grant, make_visit

WINDOW = dt.timedelta(minutes=30)
Consenting = Callable[..., Awaitable[uuid.UUID]]
A, B = "a" * 32, "b" * 32


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def consenting(
    db: Database, staff: Staff, client: httpx.AsyncClient
) -> Callable[..., Awaitable[uuid.UUID]]:
    """Booked visits whose patient's consent to the video visit stands (granted through the API)."""

    async def make(*, start: dt.datetime | None = None) -> uuid.UUID:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, start=start)
        await grant(client, visit.token)
        return visit.appointment_id

    return make


async def check_in(
    db: Database, appointment_id: uuid.UUID, connection: str, process: str = "p1"
) -> Appointment | None:
    return await calls.check_in(
        db, appointment_id, process=process, connection=connection, now=now(), opens_before=WINDOW
    )


async def row(db: Database, appointment_id: uuid.UUID) -> Appointment:
    found = await calls.get(db, appointment_id)
    assert found is not None
    return found


class TestPresencePerConnection:
    async def test_an_old_sockets_close_does_not_mark_the_patient_who_came_back(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        visit = await consenting()
        assert (await check_in(db, visit, A)) is not None
        # The patient's new socket checks in before the old one has finished closing.
        back = await check_in(db, visit, B)
        assert back is not None
        assert back.patient_connection == B
        deadline = now() + dt.timedelta(seconds=30)
        assert await calls.dropped(db, visit, connection=A, deadline=deadline) is None
        current = await row(db, visit)
        assert (current.patient_presence, current.patient_connection) == (calls.CONNECTED, B)
        # The new socket's own close does start the grace period.
        gone = await calls.dropped(db, visit, connection=B, deadline=deadline)
        assert gone is not None
        assert (gone.patient_presence, gone.patient_connection) == (calls.RECONNECTING, None)

    async def test_an_old_sockets_leave_does_not_take_the_patient_out(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        visit = await consenting()
        await check_in(db, visit, A)
        await check_in(db, visit, B)
        assert await calls.leave_queue(db, visit, now=now(), connection=A) is None
        assert (await row(db, visit)).status == Status.WAITING
        assert await calls.leave_queue(db, visit, now=now(), connection=B) is not None
        assert (await row(db, visit)).status == Status.BOOKED

    async def test_a_process_taken_for_dead_takes_back_the_connections_it_still_holds(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        held, moved = await consenting(), await consenting()
        await check_in(db, held, A, process="p1")
        await check_in(db, moved, B, process="p1")
        deadline = now() + dt.timedelta(seconds=30)
        marked = await calls.process_gone(db, ["p1"], deadline=deadline)
        assert {appointment for appointment, _ in marked} == {held, moved}
        # Meanwhile one patient came back through another process.
        await check_in(db, moved, "c" * 32, process="p2")
        reclaimed = await calls.reclaim(db, [A, B], process="p1")
        assert [appointment for appointment, _ in reclaimed] == [held]
        assert (await row(db, held)).patient_presence == calls.CONNECTED
        assert (await row(db, held)).presence_deadline is None
        assert (await row(db, moved)).patient_process == "p2"

    async def test_grace_runs_out_only_for_connections_that_are_really_gone(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        stalled = await consenting()
        await check_in(db, stalled, A, process="p1")
        await calls.process_gone(db, ["p1"], deadline=now() - dt.timedelta(seconds=1))
        # p1 lives again (its heartbeat is fresh): its patient is its to take back. (The
        # sweeper's statement runs over the whole table: other tests' rows may expire too.)
        spared = await calls.expire_grace(db, now=now(), live_processes={"p1"})
        assert stalled not in {e.appointment_id for e in spared}
        assert (await row(db, stalled)).status == Status.WAITING
        expired = await calls.expire_grace(db, now=now(), live_processes={"p2"})
        assert stalled in {e.appointment_id for e in expired}
        assert (await row(db, stalled)).status == Status.BOOKED

    async def test_connections_a_process_no_longer_holds_are_let_go(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        visit = await consenting()
        await check_in(db, visit, A)
        released = await calls.release(db, [A], deadline=now() + dt.timedelta(seconds=30))
        assert [appointment for appointment, _ in released] == [visit]
        current = await row(db, visit)
        assert (current.patient_presence, current.patient_connection) == (calls.RECONNECTING, None)
        assert current.presence_deadline is not None


class TestCheckInWindow:
    async def test_the_waiting_room_opens_30_minutes_before_the_start(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        soon = now().replace(microsecond=0)
        later = await consenting(start=soon + dt.timedelta(minutes=45))
        assert await check_in(db, later, A) is None
        assert (await row(db, later)).status == Status.BOOKED
        open_now = await consenting(start=soon + dt.timedelta(minutes=25))
        checked_in = await check_in(db, open_now, B)
        assert checked_in is not None
        assert checked_in.status == Status.WAITING


class TestUndoneAdmission:
    async def test_only_the_admission_that_failed_is_undone(
        self, db: Database, staff: Staff, consenting: Consenting
    ) -> None:
        visit = await consenting()
        await check_in(db, visit, A)
        started = now()
        admitted = await calls.admit(
            db, visit, clinician_id=staff.clinician.id, host="p1", now=started
        )
        assert admitted is not None
        assert admitted.call_started_at is not None
        assert await calls.unadmit(db, visit, host="p2", started_at=started) is None
        undone = await calls.unadmit(db, visit, host="p1", started_at=admitted.call_started_at)
        assert undone is not None
        assert (undone.status, undone.call_host, undone.call_started_at) == (
            Status.WAITING,
            None,
            None,
        )
        assert undone.patient_presence == calls.CONNECTED
