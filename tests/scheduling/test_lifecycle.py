"""The appointment's state machine: the presence functions go through its table, and nothing else.

Leaving the queue, undoing an admission and a grace period's expiry (scheduling.calls) are the
table's transitions (scheduling.lifecycle): each applies only from the statuses the table names
and only while what it depends on still holds, in one statement; a transition the table does not
hold is refused before any statement runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import pytest

from app.db import Database
from scheduling import calls, lifecycle
from scheduling.models import Status
from tests.factories import Staff
from tests.signaling.helpers import Visit, make_visit
from tests.test_consent import put, row


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _in_room(status: Status, connection: str = "conn-1") -> dict[str, object]:
    return {
        "status": status.value,
        "checked_in_at": _now(),
        "patient_presence": calls.CONNECTED,
        "patient_process": "proc-1",
        "patient_connection": connection,
    }


def _gone(status: Status, **values: object) -> dict[str, object]:
    """A patient in the room whose connection went, and whose grace period ran out."""
    return {
        **_in_room(status),
        "patient_presence": calls.RECONNECTING,
        "presence_deadline": _now() - dt.timedelta(seconds=1),
        **values,
    }


class TestLeaveQueue:
    async def test_a_waiting_patient_is_booked_again(self, staff: Staff, db: Database) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, visit, **_in_room(Status.WAITING))
        left = await calls.leave_queue(db, visit.appointment_id, now=_now(), connection="conn-1")
        assert left is not None
        found = await row(db, visit)
        assert found.status == Status.BOOKED.value
        assert (found.patient_presence, found.patient_connection, found.checked_in_at) == (
            None,
            None,
            None,
        )

    async def test_an_old_connection_does_not_take_out_a_newer_one(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, visit, **_in_room(Status.WAITING, connection="new"))
        old = await calls.leave_queue(db, visit.appointment_id, now=_now(), connection="old")
        assert old is None
        found = await row(db, visit)
        assert (found.status, found.patient_connection) == (Status.WAITING.value, "new")

    @pytest.mark.parametrize("status", [Status.BOOKED, Status.IN_CALL, Status.COMPLETED])
    async def test_only_from_the_waiting_room(
        self, staff: Staff, db: Database, status: Status
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, visit, **_in_room(status))
        assert await calls.leave_queue(db, visit.appointment_id, now=_now()) is None
        found = await row(db, visit)
        assert (found.status, found.patient_connection) == (status.value, "conn-1")


class TestUnadmit:
    async def _admitted(self, db: Database, visit: Visit, status: Status) -> dt.datetime:
        await put(db, visit, **_in_room(status), call_host="proc-1", call_started_at=_now())
        started = (await row(db, visit)).call_started_at
        assert started is not None
        return started

    async def test_undoes_that_admission(self, staff: Staff, db: Database) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        started = await self._admitted(db, visit, Status.IN_CALL)
        undone = await calls.unadmit(db, visit.appointment_id, host="proc-1", started_at=started)
        assert undone is not None
        found = await row(db, visit)
        assert (found.status, found.call_host, found.call_started_at) == (
            Status.WAITING.value,
            None,
            None,
        )

    async def test_another_admission_is_left_alone(self, staff: Staff, db: Database) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        started = await self._admitted(db, visit, Status.IN_CALL)
        earlier = started - dt.timedelta(seconds=5)
        for host, at in (("proc-1", earlier), ("other", started)):
            assert await calls.unadmit(db, visit.appointment_id, host=host, started_at=at) is None
        found = await row(db, visit)
        assert (found.status, found.call_host) == (Status.IN_CALL.value, "proc-1")

    async def test_not_once_the_call_ended(self, staff: Staff, db: Database) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        started = await self._admitted(db, visit, Status.COMPLETED)
        undone = await calls.unadmit(db, visit.appointment_id, host="proc-1", started_at=started)
        assert undone is None
        assert (await row(db, visit)).status == Status.COMPLETED.value


class TestExpireGrace:
    async def test_the_queue_is_left_and_the_call_ended(self, staff: Staff, db: Database) -> None:
        waiting = await make_visit(db, staff.clinician, by=staff.scheduler)
        calling = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, waiting, **_gone(Status.WAITING))
        await put(db, calling, **_gone(Status.IN_CALL, call_host="proc-1"))
        expired = await calls.expire_grace(db, now=_now())
        mine = {e.appointment_id: e.was_in_call for e in expired}
        assert mine[waiting.appointment_id] is False
        assert mine[calling.appointment_id] is True
        left, ended = await row(db, waiting), await row(db, calling)
        assert (left.status, left.patient_presence, left.checked_in_at) == (
            Status.BOOKED.value,
            None,
            None,
        )
        assert (ended.status, ended.end_reason, ended.call_host, ended.patient_presence) == (
            Status.COMPLETED.value,
            "patient_left",
            None,
            None,
        )
        assert ended.call_ended_at is not None

    async def test_nothing_before_the_deadline_nor_for_a_live_process(
        self, staff: Staff, db: Database
    ) -> None:
        early = await make_visit(db, staff.clinician, by=staff.scheduler)
        held = await make_visit(db, staff.clinician, by=staff.scheduler)
        later = _now() + dt.timedelta(minutes=1)
        await put(db, early, **_gone(Status.WAITING, presence_deadline=later))
        await put(db, held, **_gone(Status.IN_CALL))
        expired = await calls.expire_grace(db, now=_now(), live_processes=["proc-1"])
        assert {early.appointment_id, held.appointment_id}.isdisjoint(
            e.appointment_id for e in expired
        )
        assert (await row(db, early)).status == Status.WAITING.value
        assert (await row(db, held)).status == Status.IN_CALL.value

    @pytest.mark.parametrize("status", [Status.BOOKED, Status.COMPLETED, Status.NO_SHOW])
    async def test_a_status_the_table_does_not_move_stays(
        self, staff: Staff, db: Database, status: Status
    ) -> None:
        """A stale presence on a row in no state to leave the queue or end a call."""
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, visit, **_gone(status, end_reason="before"))
        expired = await calls.expire_grace(db, now=_now())
        assert visit.appointment_id not in {e.appointment_id for e in expired}
        found = await row(db, visit)
        assert (found.status, found.end_reason) == (status.value, "before")


class TestTheTable:
    async def test_a_transition_not_in_the_table_is_refused(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, visit, status=Status.COMPLETED.value)
        reopen = lifecycle.Transition("reopen", frozenset({Status.COMPLETED}), Status.BOOKED)
        async with db.session(write=True) as session:
            with pytest.raises(lifecycle.NotInTable):
                await lifecycle.move(session, reopen, visit.appointment_id)
        assert (await row(db, visit)).status == Status.COMPLETED.value

    def test_a_transition_sets_no_status_of_its_own(self) -> None:
        with pytest.raises(lifecycle.NotInTable):
            lifecycle.statement(lifecycle.UNADMIT, status=Status.COMPLETED.value)

    def test_final_statuses_lead_nowhere(self) -> None:
        for final in (Status.COMPLETED, Status.CANCELLED, Status.NO_SHOW):
            assert lifecycle.targets(final) == frozenset()
        assert lifecycle.leading_to(Status.BOOKED, Status.WAITING) is lifecycle.LEAVE_QUEUE
        assert lifecycle.leading_to(Status.WAITING, Status.IN_CALL) is lifecycle.UNADMIT

    @pytest.mark.parametrize(
        ("removed", "change"),
        [
            ("leave_queue", "leave_queue"),
            ("unadmit", "unadmit"),
            ("leave_queue", "expire_grace"),
            ("end", "expire_grace"),
            ("check_in", "check_in"),
        ],
    )
    async def test_the_presence_functions_go_through_the_table(
        self,
        staff: Staff,
        db: Database,
        monkeypatch: pytest.MonkeyPatch,
        removed: str,
        change: str,
    ) -> None:
        """Take the transition out of the table, and the function that uses it is refused."""
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await put(db, visit, **_gone(Status.WAITING))
        kept = tuple(t for t in lifecycle.TRANSITIONS if t.name != removed)
        assert len(kept) == len(lifecycle.TRANSITIONS) - 1
        monkeypatch.setattr(lifecycle, "TRANSITIONS", kept)
        appointment_id, now = visit.appointment_id, _now()
        changes: dict[str, Callable[[], Awaitable[object]]] = {
            "leave_queue": lambda: calls.leave_queue(db, appointment_id, now=now),
            "unadmit": lambda: calls.unadmit(db, appointment_id, host="proc-1", started_at=now),
            "expire_grace": lambda: calls.expire_grace(db, now=now),
            "check_in": lambda: calls.check_in(
                db,
                appointment_id,
                process="proc-1",
                connection="conn-2",
                now=now,
                opens_before=dt.timedelta(hours=1),
            ),
        }
        with pytest.raises(lifecycle.NotInTable):
            await changes[change]()
