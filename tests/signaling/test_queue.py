"""Queue order, positions and wait estimates from the clinician's recent consults."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import update

from app.db import Database
from scheduling import calls
from scheduling.calls import CONNECTED, RECONNECTING, QueueRow
from scheduling.models import Appointment, Status
from signaling.queue import build
from tests.factories import Staff
from tests.signaling.helpers import make_visit

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def row(
    status: str, presence: str | None = CONNECTED, *, call_minutes_ago: int | None = None
) -> QueueRow:
    return QueueRow(
        appointment_id=uuid.uuid4(),
        patient_name="P",
        start=NOW,
        status=status,
        presence=presence,
        checked_in_at=NOW - dt.timedelta(minutes=5),
        call_started_at=None
        if call_minutes_ago is None
        else NOW - dt.timedelta(minutes=call_minutes_ago),
    )


class TestBuild:
    def test_positions_skip_calls_and_reconnecting_patients(self) -> None:
        rows = [
            row(Status.IN_CALL, call_minutes_ago=4),
            row(Status.WAITING),
            row(Status.WAITING, RECONNECTING),
            row(Status.WAITING),
        ]
        snapshot = build(rows, consult_seconds=600, now=NOW)
        assert [i["position"] for i in snapshot.items] == [None, 1, None, 2]
        assert [i["status"] for i in snapshot.items] == [
            "in_call",
            "waiting",
            "reconnecting",
            "waiting",
        ]
        # The call has 6 of its typical 10 minutes left; then 10 minutes per patient ahead.
        assert snapshot.places[rows[1].appointment_id] == (1, 360)
        assert snapshot.places[rows[3].appointment_id] == (2, 960)
        assert snapshot.places[rows[2].appointment_id] == (None, None)

    def test_a_call_running_over_leaves_no_negative_wait(self) -> None:
        rows = [row(Status.IN_CALL, call_minutes_ago=30), row(Status.WAITING)]
        snapshot = build(rows, consult_seconds=600, now=NOW)
        assert snapshot.places[rows[1].appointment_id] == (1, 0)


class TestTypicalConsult:
    async def test_median_of_recent_calls_else_the_slot_length(
        self, db: Database, staff: Staff
    ) -> None:
        assert await calls.typical_consult_seconds(db, staff.clinician.id) == 20 * 60
        for minutes in (6, 8, 30):
            visit = await make_visit(db, staff.clinician, by=staff.scheduler)
            async with db.session(write=True) as session:
                await session.execute(
                    update(Appointment)
                    .where(Appointment.id == visit.appointment_id)
                    .values(
                        status=Status.COMPLETED.value,
                        call_started_at=NOW,
                        call_ended_at=NOW + dt.timedelta(minutes=minutes),
                    )
                )
        assert await calls.typical_consult_seconds(db, staff.clinician.id) == 8 * 60
