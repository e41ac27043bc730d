"""An appointment's live state: check-in, the patient's presence, the call. Signaling's service.

Every change is one conditional UPDATE ... RETURNING: it applies only if the row is still in
the state the caller saw, so two processes (or a socket and a sweeper) never both win. Each
function takes the database and opens its own short transaction: sockets never hold a session.

Presence is per connection: the socket that checked the patient in is named on the row
(`patient_connection`, with the process holding it), and only a statement naming that
connection marks the patient gone. An older socket of the same patient that finishes closing
after a newer one checked in changes nothing.
"""

from __future__ import annotations

import datetime as dt
import statistics
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from scheduling import lifecycle
from scheduling.models import Appointment, Availability, Status

CONNECTED, RECONNECTING = "connected", "reconnecting"
# Presence matters only while the patient is in the waiting room or the call: a finished visit
# may keep the presence it last had, and must never be taken for a live one.
_IN_ROOM = Appointment.status.in_([Status.WAITING.value, Status.IN_CALL.value])
# What a patient leaving the room (or never coming back) clears, beside the status.
_LEFT_ROOM: dict[str, Any] = {
    "patient_presence": None,
    "patient_process": None,
    "patient_connection": None,
    "presence_deadline": None,
    "checked_in_at": None,
}
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
    db: Database,
    appointment_id: uuid.UUID,
    *,
    process: str,
    connection: str,
    now: dt.datetime,
    opens_before: dt.timedelta,
) -> Appointment | None:
    """The patient's socket is here: `booked` becomes `waiting`; waiting or in a call: back.

    A first check-in opens `opens_before` the visit's start (in the same statement, so a
    reschedule at the same moment cannot let an early one through). None when the visit is
    not open yet, or in no state to join (ended, cancelled, no-show): `get` tells which.
    """
    presence = {
        "patient_presence": CONNECTED,
        "patient_process": process,
        "patient_connection": connection,
        "presence_deadline": None,
        "updated_at": now,
    }
    checked_in = await _move(
        db,
        # From booked, with the patient's video consent standing on the row in the same
        # statement (a withdrawal racing it cannot be overtaken).
        lifecycle.CHECK_IN,
        appointment_id,
        [Appointment.start_at <= now + opens_before],
        {"checked_in_at": now, **presence},
    )
    if checked_in is not None:
        return checked_in
    # Back in the room: not a transition, the presence alone changes.
    return await _update(db, appointment_id, [_IN_ROOM], presence)


async def dropped(
    db: Database, appointment_id: uuid.UUID, *, connection: str, deadline: dt.datetime
) -> Appointment | None:
    """This connection closed: if it still is the patient's presence, their place (or call)
    is kept until `deadline`. None when a newer connection took over, or the visit moved on."""
    return await _update(
        db,
        appointment_id,
        [Appointment.patient_connection == connection, _IN_ROOM],
        {
            "patient_presence": RECONNECTING,
            "patient_connection": None,
            "presence_deadline": deadline,
        },
    )


async def leave_queue(
    db: Database,
    appointment_id: uuid.UUID,
    *,
    now: dt.datetime,
    connection: str | None = None,
) -> Appointment | None:
    """Out of the waiting room, back to `booked` (a withdrawal, or the patient's `leave`).

    With `connection`, only while that connection is the patient's presence (an old socket's
    `leave` does not take out the patient who came back on a new one).
    """
    where = [] if connection is None else [Appointment.patient_connection == connection]
    return await _move(
        db, lifecycle.LEAVE_QUEUE, appointment_id, where, {**_LEFT_ROOM, "updated_at": now}
    )


async def _move(
    db: Database,
    transition: lifecycle.Transition,
    appointment_id: uuid.UUID,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> Appointment | None:
    """A transition of the appointment's state machine, in a transaction of its own."""
    async with db.session(write=True) as session:
        return await lifecycle.move(session, transition, appointment_id, *where, **values)


async def admit(
    db: Database, appointment_id: uuid.UUID, *, clinician_id: uuid.UUID, host: str, now: dt.datetime
) -> Appointment | None:
    """`waiting` becomes `in_call`, only for this clinician's patient who is connected and whose
    consent to the video visit stands, all in the one statement: an admission racing a
    withdrawal either sees it (and admits no one) or comes first (and the withdrawal ends it)."""
    return await _move(
        db,
        lifecycle.ADMIT,
        appointment_id,
        [Appointment.clinician_id == clinician_id, Appointment.patient_presence == CONNECTED],
        {"call_started_at": now, "call_host": host, "updated_at": now},
    )


async def end_call(
    db: Database,
    appointment_id: uuid.UUID,
    *,
    reason: str,
    now: dt.datetime,
    clinician_id: uuid.UUID | None = None,
) -> Appointment | None:
    where = [] if clinician_id is None else [Appointment.clinician_id == clinician_id]
    return await _move(
        db,
        lifecycle.END,
        appointment_id,
        where,
        {"call_ended_at": now, "end_reason": reason, "call_host": None, "updated_at": now},
    )


async def no_show(
    db: Database, appointment_id: uuid.UUID, *, clinician_id: uuid.UUID, now: dt.datetime
) -> Appointment | None:
    return await _move(
        db,
        lifecycle.NO_SHOW,
        appointment_id,
        [Appointment.clinician_id == clinician_id],
        {
            "end_reason": "no_show",
            "patient_presence": None,
            "presence_deadline": None,
            "updated_at": now,
        },
    )


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """What a withdrawal of the patient's video consent did to their visit."""

    ended: Appointment | None = None  # the call, now `completed`
    left_queue: Appointment | None = None  # out of the waiting room, `booked` again


async def withdraw(
    session: AsyncSession, appointment_id: uuid.UUID, *, now: dt.datetime
) -> Withdrawal:
    """In the decision's own transaction (its consent update holds the row's lock): the call
    ends, or the patient leaves the waiting room.

    The ended call keeps its `call_host` until its end has been announced (`release_host`), so
    the process that announces it is exactly one, whichever hears of the withdrawal first.
    """
    ended = await lifecycle.move(
        session,
        lifecycle.END,
        appointment_id,
        call_ended_at=now,
        end_reason="consent_withdrawn",
        updated_at=now,
    )
    if ended is not None:
        return Withdrawal(ended=ended)
    left = await lifecycle.move(
        session, lifecycle.LEAVE_QUEUE, appointment_id, **_LEFT_ROOM, updated_at=now
    )
    return Withdrawal(left_queue=left)


async def release_host(db: Database, appointment_id: uuid.UUID) -> Appointment | None:
    """The call is over and its end not yet announced: this process announces it (once)."""
    return await _update(
        db,
        appointment_id,
        [Appointment.status != Status.IN_CALL.value, Appointment.call_host.is_not(None)],
        {"call_host": None},
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


async def unadmit(
    db: Database, appointment_id: uuid.UUID, *, host: str, started_at: dt.datetime
) -> Appointment | None:
    """Undo an admission whose call could not be set up (the relay or the message to the
    patient failed): `in_call` back to `waiting`, only if it still is that very admission."""
    return await _move(
        db,
        lifecycle.UNADMIT,
        appointment_id,
        [Appointment.call_host == host, Appointment.call_started_at == started_at],
        {"call_started_at": None, "call_host": None},
    )


async def hosts(db: Database, call_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """For each of these calls still under way, the process that hosts its relay."""
    if not call_ids:
        return {}
    async with db.session(write=False) as session:
        rows = await session.execute(
            select(Appointment.id, Appointment.call_host).where(
                Appointment.id.in_(list(call_ids)), Appointment.status == Status.IN_CALL.value
            )
        )
        return {row[0]: row[1] for row in rows}


async def statuses(
    db: Database, appointment_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str | None]]:
    """Each appointment's status and, once it ended, why."""
    if not appointment_ids:
        return {}
    async with db.session(write=False) as session:
        rows = await session.execute(
            select(Appointment.id, Appointment.status, Appointment.end_reason).where(
                Appointment.id.in_(list(appointment_ids))
            )
        )
        return {row[0]: (row[1], row[2]) for row in rows}


@dataclass(frozen=True, slots=True)
class Expired:
    appointment_id: uuid.UUID
    clinician_id: uuid.UUID
    was_in_call: bool


async def expire_grace(
    db: Database, *, now: dt.datetime, live_processes: Collection[str] = ()
) -> list[Expired]:
    """Patients whose grace period ran out: out of the queue, or their call ended.

    Only connections that are really gone: a patient whose connection is still named on the
    row and held by one of `live_processes` is that process's to take back (a stalled process
    that others took for dead) or to let go.
    """
    expired: list[Expired] = []
    gone = and_(
        Appointment.patient_presence == RECONNECTING,
        Appointment.presence_deadline <= now,
        or_(
            Appointment.patient_connection.is_(None),
            Appointment.patient_process.is_(None),
            Appointment.patient_process.not_in(list(live_processes)),
        ),
    )
    # The sweeper asks every second: a read on the indexed deadline first, so that no write
    # transaction (on SQLite, the process's write lock) is taken when nothing ran out.
    async with db.session(write=False) as session:
        if await session.scalar(select(Appointment.id).where(gone).limit(1)) is None:
            return expired
    # The table's transitions, each one statement over every row whose grace ran out.
    async with db.session(write=True) as session:
        waiting = await session.execute(
            lifecycle.statement(
                lifecycle.LEAVE_QUEUE, gone, **_LEFT_ROOM, updated_at=now
            ).returning(Appointment.id, Appointment.clinician_id)
        )
        expired += [Expired(row[0], row[1], False) for row in waiting]
        calling = await session.execute(
            lifecycle.statement(
                lifecycle.END,
                gone,
                call_ended_at=now,
                end_reason="patient_left",
                call_host=None,
                patient_presence=None,
                patient_process=None,
                patient_connection=None,
                presence_deadline=None,
                updated_at=now,
            ).returning(Appointment.id, Appointment.clinician_id)
        )
        expired += [Expired(row[0], row[1], True) for row in calling]
    return expired


async def processes_with_patients(db: Database) -> list[str]:
    """Every process named as holding a connected patient (a scan: run it rarely)."""
    async with db.session(write=False) as session:
        result = await session.execute(
            select(Appointment.patient_process)
            .where(Appointment.patient_presence == CONNECTED, _IN_ROOM)
            .distinct()
        )
        return [process for process in result.scalars() if process]


async def process_gone(
    db: Database, processes: Collection[str], *, deadline: dt.datetime
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Patients of processes taken for dead: reconnecting, with the grace period from now.

    Their connection stays named: a process that was only stalled takes them back (`reclaim`).
    """
    if not processes:
        return []
    return await _presences_moved(
        db,
        [
            Appointment.patient_process.in_(list(processes)),
            Appointment.patient_presence == CONNECTED,
        ],
        {"patient_presence": RECONNECTING, "presence_deadline": deadline},
    )


async def _presences_moved(
    db: Database, where: Sequence[ColumnElement[bool]], values: dict[str, Any]
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """One statement over the rows of patients in the room: (appointment, clinician) of each."""
    async with db.session(write=True) as session:
        result = await session.execute(
            update(Appointment)
            .where(*where, _IN_ROOM)
            .values(**values)
            .returning(Appointment.id, Appointment.clinician_id)
        )
        return [(row[0], row[1]) for row in result]


@dataclass(frozen=True, slots=True)
class Presence:
    """What the database says of a patient this process holds (or held) a socket for."""

    appointment_id: uuid.UUID
    clinician_id: uuid.UUID
    status: str
    presence: str | None
    process: str | None
    connection: str | None
    end_reason: str | None


async def presences(
    db: Database, *, process: str, appointment_ids: Collection[uuid.UUID]
) -> list[Presence]:
    """Rows naming a connection of this process, and the rows of these appointments."""
    named = and_(
        Appointment.patient_process == process,
        Appointment.patient_connection.is_not(None),
        _IN_ROOM,
    )
    where = or_(named, Appointment.id.in_(list(appointment_ids))) if appointment_ids else named
    async with db.session(write=False) as session:
        result = await session.execute(
            select(
                Appointment.id,
                Appointment.clinician_id,
                Appointment.status,
                Appointment.patient_presence,
                Appointment.patient_process,
                Appointment.patient_connection,
                Appointment.end_reason,
            ).where(where)
        )
        return [Presence(*row) for row in result]


async def reclaim(
    db: Database, connections: Collection[str], *, process: str
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """These live connections were marked reconnecting (their process was taken for dead, or
    a lapse): connected again. Only rows still naming one of them."""
    if not connections:
        return []
    return await _presences_moved(
        db,
        [
            Appointment.patient_connection.in_(list(connections)),
            Appointment.patient_presence == RECONNECTING,
        ],
        {"patient_presence": CONNECTED, "patient_process": process, "presence_deadline": None},
    )


async def release(
    db: Database, connections: Collection[str], *, deadline: dt.datetime
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Connections named on rows that their process no longer holds (the socket's own close
    could not be written): gone, their grace from `deadline` unless it already runs."""
    if not connections:
        return []
    return await _presences_moved(
        db,
        [Appointment.patient_connection.in_(list(connections))],
        {
            "patient_presence": RECONNECTING,
            "patient_connection": None,
            "presence_deadline": func.coalesce(Appointment.presence_deadline, deadline),
        },
    )


async def set_connection_check(db: Database, appointment_id: uuid.UUID, verdict: str) -> None:
    await _update(db, appointment_id, [], {"connection_check": verdict})


async def keep_summary(db: Database, appointment_id: uuid.UUID, summary: dict[str, Any]) -> None:
    """The call's quality summary (duration, per-participant averages), kept with the visit."""
    await _update(db, appointment_id, [], {"call_summary": summary})


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


async def queue_rows(
    db: Database, clinician_id: uuid.UUID, *, day: tuple[dt.datetime, dt.datetime]
) -> list[QueueRow]:
    """The clinician's patients in a call, and those waiting for a visit of `day` (a slot
    that overlaps [start, end)), in queue order (appointment time, then arrival).

    A call under way is listed whatever day its visit was (one that started late yesterday
    goes on past midnight).
    """
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
                    Appointment.status == Status.IN_CALL.value,
                    and_(
                        Appointment.status == Status.WAITING.value,
                        Appointment.end_at > day[0],
                        Appointment.start_at < day[1],
                    ),
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
