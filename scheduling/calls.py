"""An appointment's live state: check-in, the patient's presence, the call. Signaling's service.

Every change is one conditional UPDATE ... RETURNING: it applies only if the row is still in
the state the caller saw, so two processes (or a socket and a sweeper) never both win. Each
function takes the database and opens its own short transaction: sockets never hold a session.
"""

from __future__ import annotations

import datetime as dt
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update

from app.db import Database
from scheduling.models import Appointment, Availability, Status

CONNECTED, RECONNECTING = "connected", "reconnecting"
# Presence matters only while the patient is in the waiting room or the call: a finished visit
# may keep the presence it last had, and must never be taken for a live one.
_IN_ROOM = Appointment.status.in_([Status.WAITING.value, Status.IN_CALL.value])
# Consult durations that estimate a wait: the clinician's latest this many calls.
RECENT_CALLS = 20
DEFAULT_CONSULT_SECONDS = 15 * 60


async def _update(
    db: Database,
    appointment_id: uuid.UUID,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> Appointment | None:
    async with db.session(write=True) as session:
        result = await session.execute(
            update(Appointment)
            .where(Appointment.id == appointment_id, *where)
            .values(**values)
            .returning(Appointment)
            .execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()


async def get(db: Database, appointment_id: uuid.UUID) -> Appointment | None:
    async with db.session(write=False) as session:
        return await session.get(Appointment, appointment_id)


async def check_in(
    db: Database, appointment_id: uuid.UUID, *, process: str, now: dt.datetime
) -> Appointment | None:
    """The patient's socket is here: `booked` becomes `waiting`; waiting or in a call: back.

    None when the appointment is in neither state (ended, cancelled, no-show).
    """
    presence = {
        "patient_presence": CONNECTED,
        "patient_process": process,
        "presence_deadline": None,
        "updated_at": now,
    }
    checked_in = await _update(
        db,
        appointment_id,
        [Appointment.status == Status.BOOKED.value],
        {"status": Status.WAITING.value, "checked_in_at": now, **presence},
    )
    if checked_in is not None:
        return checked_in
    return await _update(
        db,
        appointment_id,
        [Appointment.status.in_([Status.WAITING.value, Status.IN_CALL.value])],
        presence,
    )


async def dropped(
    db: Database, appointment_id: uuid.UUID, *, process: str, deadline: dt.datetime
) -> Appointment | None:
    """This process's patient socket closed: their place is kept until `deadline`."""
    return await _update(
        db,
        appointment_id,
        [
            Appointment.patient_process == process,
            Appointment.patient_presence == CONNECTED,
            Appointment.status.in_([Status.WAITING.value, Status.IN_CALL.value]),
        ],
        {"patient_presence": RECONNECTING, "presence_deadline": deadline},
    )


async def leave_queue(
    db: Database, appointment_id: uuid.UUID, *, now: dt.datetime
) -> Appointment | None:
    """Out of the waiting room, back to `booked` (a withdrawal, or the grace period over)."""
    return await _update(
        db,
        appointment_id,
        [Appointment.status == Status.WAITING.value],
        {
            "status": Status.BOOKED.value,
            "patient_presence": None,
            "patient_process": None,
            "presence_deadline": None,
            "checked_in_at": None,
            "updated_at": now,
        },
    )


async def admit(
    db: Database, appointment_id: uuid.UUID, *, clinician_id: uuid.UUID, host: str, now: dt.datetime
) -> Appointment | None:
    """`waiting` becomes `in_call`, only for this clinician's patient who is connected."""
    return await _update(
        db,
        appointment_id,
        [
            Appointment.clinician_id == clinician_id,
            Appointment.status == Status.WAITING.value,
            Appointment.patient_presence == CONNECTED,
        ],
        {
            "status": Status.IN_CALL.value,
            "call_started_at": now,
            "call_host": host,
            "updated_at": now,
        },
    )


async def end_call(
    db: Database,
    appointment_id: uuid.UUID,
    *,
    reason: str,
    now: dt.datetime,
    clinician_id: uuid.UUID | None = None,
) -> Appointment | None:
    where = [Appointment.status == Status.IN_CALL.value]
    if clinician_id is not None:
        where.append(Appointment.clinician_id == clinician_id)
    return await _update(
        db,
        appointment_id,
        where,
        {
            "status": Status.COMPLETED.value,
            "call_ended_at": now,
            "end_reason": reason,
            "call_host": None,
            "updated_at": now,
        },
    )


async def no_show(
    db: Database, appointment_id: uuid.UUID, *, clinician_id: uuid.UUID, now: dt.datetime
) -> Appointment | None:
    return await _update(
        db,
        appointment_id,
        [
            Appointment.clinician_id == clinician_id,
            Appointment.status.in_([Status.BOOKED.value, Status.WAITING.value]),
        ],
        {
            "status": Status.NO_SHOW.value,
            "end_reason": "no_show",
            "patient_presence": None,
            "presence_deadline": None,
            "updated_at": now,
        },
    )


async def claim_host(
    db: Database, appointment_id: uuid.UUID, *, previous: str | None, process: str
) -> Appointment | None:
    """Make this process the call's relay host, if the host is still the one seen as gone."""
    host_was = (
        Appointment.call_host.is_(None) if previous is None else Appointment.call_host == previous
    )
    return await _update(
        db,
        appointment_id,
        [Appointment.status == Status.IN_CALL.value, host_was],
        {"call_host": process},
    )


@dataclass(frozen=True, slots=True)
class Expired:
    appointment_id: uuid.UUID
    clinician_id: uuid.UUID
    was_in_call: bool


async def expire_grace(db: Database, *, now: dt.datetime) -> list[Expired]:
    """Patients whose grace period ran out: out of the queue, or their call ended."""
    expired: list[Expired] = []
    gone = and_(Appointment.patient_presence == RECONNECTING, Appointment.presence_deadline <= now)
    # The sweeper asks every second: a read on the indexed deadline first, so that no write
    # transaction (on SQLite, the process's write lock) is taken when nothing ran out.
    async with db.session(write=False) as session:
        if await session.scalar(select(Appointment.id).where(gone).limit(1)) is None:
            return expired
    async with db.session(write=True) as session:
        waiting = await session.execute(
            update(Appointment)
            .where(gone, Appointment.status == Status.WAITING.value)
            .values(
                status=Status.BOOKED.value,
                patient_presence=None,
                patient_process=None,
                presence_deadline=None,
                checked_in_at=None,
                updated_at=now,
            )
            .returning(Appointment.id, Appointment.clinician_id)
        )
        expired += [Expired(row[0], row[1], False) for row in waiting]
        calling = await session.execute(
            update(Appointment)
            .where(gone, Appointment.status == Status.IN_CALL.value)
            .values(
                status=Status.COMPLETED.value,
                call_ended_at=now,
                end_reason="patient_left",
                call_host=None,
                patient_presence=None,
                patient_process=None,
                presence_deadline=None,
                updated_at=now,
            )
            .returning(Appointment.id, Appointment.clinician_id)
        )
        expired += [Expired(row[0], row[1], True) for row in calling]
    return expired


async def processes_with_patients(db: Database) -> list[str]:
    async with db.session(write=False) as session:
        result = await session.execute(
            select(Appointment.patient_process)
            .where(Appointment.patient_presence == CONNECTED, _IN_ROOM)
            .distinct()
        )
        return [process for process in result.scalars() if process]


async def process_gone(
    db: Database, process: str, *, deadline: dt.datetime
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """A dead process's patients: reconnecting, with the grace period from now."""
    async with db.session(write=True) as session:
        result = await session.execute(
            update(Appointment)
            .where(
                Appointment.patient_process == process,
                Appointment.patient_presence == CONNECTED,
                _IN_ROOM,
            )
            .values(patient_presence=RECONNECTING, presence_deadline=deadline)
            .returning(Appointment.id, Appointment.clinician_id)
        )
        return [(row[0], row[1]) for row in result]


async def set_connection_check(db: Database, appointment_id: uuid.UUID, verdict: str) -> None:
    await _update(db, appointment_id, [], {"connection_check": verdict})


async def in_progress(db: Database, clinician_id: uuid.UUID) -> list[Appointment]:
    async with db.session(write=False) as session:
        result = await session.execute(
            select(Appointment).where(
                Appointment.clinician_id == clinician_id,
                Appointment.status == Status.IN_CALL.value,
            )
        )
        return list(result.scalars())


@dataclass(frozen=True, slots=True)
class QueueRow:
    appointment_id: uuid.UUID
    patient_name: str
    start: dt.datetime
    status: str
    presence: str | None
    checked_in_at: dt.datetime | None
    call_started_at: dt.datetime | None
    connection: str | None = None


async def queue_rows(db: Database, clinician_id: uuid.UUID) -> list[QueueRow]:
    """The clinician's patients waiting or in a call, in queue order (appointment time, arrival)."""
    async with db.session(write=False) as session:
        result = await session.execute(
            select(
                Appointment.id,
                Appointment.patient_name,
                Appointment.start_at,
                Appointment.status,
                Appointment.patient_presence,
                Appointment.checked_in_at,
                Appointment.call_started_at,
                Appointment.connection_check,
            )
            .where(
                Appointment.clinician_id == clinician_id,
                or_(
                    Appointment.status == Status.WAITING.value,
                    Appointment.status == Status.IN_CALL.value,
                ),
            )
            .order_by(Appointment.start_at, Appointment.checked_in_at, Appointment.id)
        )
        return [QueueRow(*row) for row in result]


async def typical_consult_seconds(db: Database, clinician_id: uuid.UUID) -> int:
    """The median length of the clinician's recent calls; their slot length before any."""
    async with db.session(write=False) as session:
        rows = (
            await session.execute(
                select(Appointment.call_started_at, Appointment.call_ended_at)
                .where(
                    Appointment.clinician_id == clinician_id,
                    Appointment.status == Status.COMPLETED.value,
                    Appointment.call_started_at.is_not(None),
                    Appointment.call_ended_at.is_not(None),
                )
                .order_by(Appointment.call_ended_at.desc())
                .limit(RECENT_CALLS)
            )
        ).all()
        durations = [
            (end - start).total_seconds() for start, end in rows if start is not None and end
        ]
        if durations:
            return max(1, int(statistics.median(durations)))
        slot = await session.scalar(
            select(Availability.slot_minutes).where(Availability.clinician_id == clinician_id)
        )
        return int(slot) * 60 if slot else DEFAULT_CONSULT_SECONDS
