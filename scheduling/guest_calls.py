"""A guest's live state: their presence in the waiting room and their place in the call.

Signaling's service for guests, as scheduling.calls is the patient's, by the same rules: every
change is one conditional UPDATE ... RETURNING that applies only while the row is as the caller
saw it; presence is per connection (only a statement naming the guest's current socket marks
them gone); a socket that closed keeps the guest's place for the grace period; a process taken
for dead hands its guests their grace period and, if it was only stalled, takes them back.

A guest's status (scheduling.models.GuestStatus): `invited` (no socket yet, or their consent to
the video visit withdrawn), `waiting` (their socket is in the waiting room), `in_call` (admitted
by the clinician into the running call), `left` (out of the room: they left, their grace period
ran out, or the call ended; connecting again makes them `waiting`), `removed` (their link closed
for good by scheduling.guests; never changed here).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.orm import aliased

from app.db import Database
from app.participants import MAX_GUESTS, guest_key
from scheduling.calls import CONNECTED, RECONNECTING
from scheduling.lifecycle import VIDEO_VISIT, names_scope
from scheduling.models import Appointment, GuestStatus, Status, VisitGuest

INVITED, WAITING = GuestStatus.INVITED.value, GuestStatus.WAITING.value
IN_CALL, LEFT = GuestStatus.IN_CALL.value, GuestStatus.LEFT.value
REMOVED = GuestStatus.REMOVED.value
IN_ROOM = (WAITING, IN_CALL)
# What a guest out of the room (or never coming back) clears, beside the status.
_NO_PRESENCE: dict[str, Any] = {
    "presence": None,
    "process": None,
    "connection": None,
    "presence_deadline": None,
    "waiting_since": None,
}


def key_of(guest: VisitGuest) -> str:
    """The guest's participant key (`"<role>:<id>"`)."""
    return guest_key(guest.role, guest.id)


def _consent_stands() -> ColumnElement[bool]:
    return names_scope(VisitGuest.consent, VIDEO_VISIT)


def _visit(*where: ColumnElement[bool]) -> ColumnElement[bool]:
    """The guest's appointment is as `where` says (a subquery of the same statement)."""
    return (
        select(Appointment.id).where(Appointment.id == VisitGuest.appointment_id, *where).exists()
    )


async def _moved(
    db: Database, where: Sequence[ColumnElement[bool]], values: dict[str, Any]
) -> list[VisitGuest]:
    async with db.session(write=True) as session:
        result = await session.execute(
            update(VisitGuest)
            .where(*where)
            .values(**values)
            .returning(VisitGuest)
            .execution_options(populate_existing=True)
        )
        return list(result.scalars())


async def _one(
    db: Database, guest_id: uuid.UUID, where: Sequence[ColumnElement[bool]], values: dict[str, Any]
) -> VisitGuest | None:
    moved = await _moved(db, [VisitGuest.id == guest_id, *where], values)
    return moved[0] if moved else None


async def get(db: Database, guest_id: uuid.UUID) -> VisitGuest | None:
    async with db.session(write=False) as session:
        return await session.get(VisitGuest, guest_id)


async def check_in(
    db: Database,
    guest_id: uuid.UUID,
    *,
    process: str,
    connection: str,
    now: dt.datetime,
    opens_before: dt.timedelta,
) -> VisitGuest | None:
    """The guest's socket is here: `invited` or `left` becomes `waiting`; waiting, or in the
    call that still runs: back. Only while their consent to the video visit stands and their
    visit is open (booked, waiting or in its call; its waiting room open). None otherwise."""
    call_runs = _visit(Appointment.status == Status.IN_CALL.value)
    return await _one(
        db,
        guest_id,
        [
            VisitGuest.status.in_([INVITED, WAITING, IN_CALL, LEFT]),
            _consent_stands(),
            _visit(
                Appointment.status.in_(
                    [Status.BOOKED.value, Status.WAITING.value, Status.IN_CALL.value]
                ),
                Appointment.start_at <= now + opens_before,
            ),
        ],
        {
            "status": case((and_(VisitGuest.status == IN_CALL, call_runs), IN_CALL), else_=WAITING),
            "waiting_since": case(
                (VisitGuest.status.in_(IN_ROOM), func.coalesce(VisitGuest.waiting_since, now)),
                else_=now,
            ),
            "presence": CONNECTED,
            "process": process,
            "connection": connection,
            "presence_deadline": None,
        },
    )


async def dropped(
    db: Database, guest_id: uuid.UUID, *, connection: str, deadline: dt.datetime
) -> VisitGuest | None:
    """This connection closed: if it is still the guest's, their place waits until `deadline`."""
    return await _one(
        db,
        guest_id,
        [VisitGuest.connection == connection, VisitGuest.status.in_(IN_ROOM)],
        {"presence": RECONNECTING, "connection": None, "presence_deadline": deadline},
    )


@dataclass(frozen=True, slots=True)
class Out:
    """A guest taken out of the room, and whether they were in the call."""

    guest: VisitGuest
    was_in_call: bool

    @property
    def key(self) -> str:
        return key_of(self.guest)


async def _taken_out(
    db: Database,
    where: Sequence[ColumnElement[bool]],
    status: str,
    *,
    sources: Sequence[str] = IN_ROOM,
) -> list[Out]:
    """Guests (as `where` selects) in one of `sources` moved to `status`, their presence
    cleared; one statement per source, in one transaction, so each says where it came from."""
    found: list[Out] = []
    async with db.session(write=True) as session:
        for source in sources:
            result = await session.execute(
                update(VisitGuest)
                .where(*where, VisitGuest.status == source)
                .values(status=status, **_NO_PRESENCE)
                .returning(VisitGuest)
                .execution_options(populate_existing=True)
            )
            found += [Out(guest, source == IN_CALL) for guest in result.scalars()]
    return found


async def leave(db: Database, guest_id: uuid.UUID, *, connection: str) -> Out | None:
    """The guest's `leave` from this connection (still theirs): out of the room, `left`."""
    out = await _taken_out(
        db, [VisitGuest.id == guest_id, VisitGuest.connection == connection], LEFT
    )
    return out[0] if out else None


async def call_over(db: Database, appointment_id: uuid.UUID) -> list[Out]:
    """The visit's call ended (or the visit closed): every guest in the room is out of it."""
    return await _taken_out(db, [VisitGuest.appointment_id == appointment_id], LEFT)


async def admit(
    db: Database, guest_id: uuid.UUID, *, appointment_id: uuid.UUID, now: dt.datetime
) -> VisitGuest | None:
    """`waiting` becomes `in_call`, in the one statement only for a connected guest of this
    appointment whose consent stands, while its call runs and has room for one more person."""
    others = aliased(VisitGuest)
    in_call = (
        select(func.count())
        .select_from(others)
        .where(others.appointment_id == appointment_id, others.status == IN_CALL)
        .scalar_subquery()
    )
    return await _one(
        db,
        guest_id,
        [
            VisitGuest.appointment_id == appointment_id,
            VisitGuest.status == WAITING,
            VisitGuest.presence == CONNECTED,
            _consent_stands(),
            _visit(Appointment.status == Status.IN_CALL.value),
            # Room for one more guest. The slots index caps a visit's active guests at
            # MAX_GUESTS too, and this guest, waiting, holds one of them: so today this always
            # holds, and an admission past the limit is refused earlier, as adding a third guest
            # (409 `participant_limit`). It stays in the statement, from the same constant, so
            # that the call's size is decided where the admission is, whatever the slots become
            # (signaling.guests says `call_full` when it does not hold).
            in_call < MAX_GUESTS,
        ],
        {"status": IN_CALL, "admitted_at": now},
    )


async def unadmit(db: Database, guest_id: uuid.UUID, *, admitted_at: dt.datetime) -> None:
    """Undo an admission the guest's socket could not be told of: `waiting` again."""
    await _one(
        db,
        guest_id,
        [VisitGuest.status == IN_CALL, VisitGuest.admitted_at == admitted_at],
        {"status": WAITING},
    )


async def in_call(db: Database, appointment_id: uuid.UUID) -> list[VisitGuest]:
    """The guests in the appointment's call now, in the order they were invited."""
    async with db.session(write=False) as session:
        result = await session.execute(
            select(VisitGuest)
            .where(VisitGuest.appointment_id == appointment_id, VisitGuest.status == IN_CALL)
            .order_by(VisitGuest.created_at, VisitGuest.id)
        )
        return list(result.scalars())


# Grace periods and processes, as scheduling.calls does them for the patient -----------------


def _gone(now: dt.datetime, live_processes: Collection[str]) -> ColumnElement[bool]:
    return and_(
        VisitGuest.presence == RECONNECTING,
        VisitGuest.presence_deadline <= now,
        or_(
            VisitGuest.connection.is_(None),
            VisitGuest.process.is_(None),
            VisitGuest.process.not_in(list(live_processes)),
        ),
    )


async def expire_grace(
    db: Database, *, now: dt.datetime, live_processes: Collection[str] = ()
) -> list[Out]:
    """Guests whose grace period ran out (their connection really gone): `left`."""
    gone = _gone(now, live_processes)
    async with db.session(write=False) as session:
        if await session.scalar(select(VisitGuest.id).where(gone).limit(1)) is None:
            return []
    return await _taken_out(db, [gone], LEFT)


@dataclass(frozen=True, slots=True)
class Presence:
    """What the database says of a guest this process holds (or held) a socket for."""

    guest_id: uuid.UUID
    appointment_id: uuid.UUID
    status: str
    presence: str | None
    process: str | None
    connection: str | None


async def presences(
    db: Database, *, process: str, guest_ids: Collection[uuid.UUID]
) -> list[Presence]:
    """Rows naming a connection of this process, and the rows of these guests."""
    named = and_(
        VisitGuest.process == process,
        VisitGuest.connection.is_not(None),
        VisitGuest.status.in_(IN_ROOM),
    )
    where = or_(named, VisitGuest.id.in_(list(guest_ids))) if guest_ids else named
    async with db.session(write=False) as session:
        result = await session.execute(
            select(
                VisitGuest.id,
                VisitGuest.appointment_id,
                VisitGuest.status,
                VisitGuest.presence,
                VisitGuest.process,
                VisitGuest.connection,
            ).where(where)
        )
        return [Presence(*row) for row in result]


async def _presences_moved(
    db: Database, where: Sequence[ColumnElement[bool]], values: dict[str, Any]
) -> list[uuid.UUID]:
    """The appointments of the guests in the room whose presence changed."""
    moved = await _moved(db, [*where, VisitGuest.status.in_(IN_ROOM)], values)
    return sorted({guest.appointment_id for guest in moved})


async def process_gone(
    db: Database, processes: Collection[str], *, deadline: dt.datetime
) -> list[uuid.UUID]:
    """Guests of processes taken for dead: reconnecting, their grace from now (their connection
    stays named: a process that was only stalled takes them back)."""
    if not processes:
        return []
    return await _presences_moved(
        db,
        [VisitGuest.process.in_(list(processes)), VisitGuest.presence == CONNECTED],
        {"presence": RECONNECTING, "presence_deadline": deadline},
    )


async def reclaim(db: Database, connections: Collection[str], *, process: str) -> list[uuid.UUID]:
    """These live connections were marked reconnecting: connected again."""
    if not connections:
        return []
    return await _presences_moved(
        db,
        [VisitGuest.connection.in_(list(connections)), VisitGuest.presence == RECONNECTING],
        {"presence": CONNECTED, "process": process, "presence_deadline": None},
    )


async def release(
    db: Database, connections: Collection[str], *, deadline: dt.datetime
) -> list[uuid.UUID]:
    """Connections named on rows their process no longer holds: gone, with their grace."""
    if not connections:
        return []
    return await _presences_moved(
        db,
        [VisitGuest.connection.in_(list(connections))],
        {
            "presence": RECONNECTING,
            "connection": None,
            "presence_deadline": func.coalesce(VisitGuest.presence_deadline, deadline),
        },
    )


async def processes_with_guests(db: Database) -> list[str]:
    """Every process named as holding a connected guest (a scan: run it rarely)."""
    async with db.session(write=False) as session:
        result = await session.execute(
            select(VisitGuest.process)
            .where(VisitGuest.presence == CONNECTED, VisitGuest.status.in_(IN_ROOM))
            .distinct()
        )
        return [process for process in result.scalars() if process]


async def clinicians_of(db: Database, appointment_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """The clinicians whose queues show these appointments."""
    if not appointment_ids:
        return set()
    async with db.session(write=False) as session:
        result = await session.execute(
            select(Appointment.clinician_id).where(Appointment.id.in_(list(appointment_ids)))
        )
        return set(result.scalars())
