"""Every scheduling query."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, Row, bindparam, cast, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Role, User
from scheduling.models import ACTIVE_STATUSES, Appointment, Availability


async def clinician_with_availability(
    session: AsyncSession, clinician_id: uuid.UUID
) -> tuple[User, Availability | None] | None:
    """The active clinician and their availability in one round trip."""
    result = await session.execute(
        select(User, Availability)
        .outerjoin(Availability, Availability.clinician_id == User.id)
        .where(User.id == clinician_id, User.role == Role.CLINICIAN, User.is_active.is_(True))
    )
    row = result.one_or_none()
    return None if row is None else (row[0], row[1])


@dataclass(frozen=True, slots=True)
class Hours:
    """An availability's rules, as the booking path reads them (no ORM object)."""

    timezone: str
    slot_minutes: int
    min_notice_minutes: int
    horizon_days: int | None
    weekly: list[dict[str, Any]]
    exceptions: list[dict[str, Any]]
    updated_at: dt.datetime
    bookings_version: int


# Built once: the booking path runs these on every request, and building a statement costs more
# than SQLAlchemy's compiled cache saves.
_HOURS = (
    select(
        User.name,
        Availability.timezone,
        Availability.slot_minutes,
        Availability.min_notice_minutes,
        Availability.horizon_days,
        Availability.weekly,
        Availability.exceptions,
        Availability.updated_at,
        Availability.bookings_version,
    )
    .outerjoin(Availability, Availability.clinician_id == User.id)
    .where(
        User.id == bindparam("clinician_id"),
        User.role == Role.CLINICIAN,
        User.is_active.is_(True),
    )
)
# FOR NO KEY UPDATE OF users: does not block the key-share locks that foreign keys take.
_HOURS_LOCKED = _HOURS.with_for_update(of=User, key_share=True)


async def clinician_hours(
    session: AsyncSession, clinician_id: uuid.UUID, *, lock: bool = False
) -> tuple[str, Hours | None] | None:
    """The active clinician's name and availability rules, in one lean round trip.

    With `lock`, the clinician's row is locked until the transaction ends (PostgreSQL; SQLite's
    write transactions are serial anyway). Bookings for one clinician then queue here instead of
    meeting inside the exclusion constraint, where two concurrent overlapping inserts each wait
    for the other: a deadlock PostgreSQL breaks only after `deadlock_timeout` by failing one.
    """
    query = _HOURS_LOCKED if lock else _HOURS
    row = (await session.execute(query, {"clinician_id": clinician_id})).one_or_none()
    if row is None:
        return None
    if row[1] is None:
        return row[0], None
    return row[0], Hours(*row[1:])


_INSERT_APPOINTMENT = insert(Appointment.__table__)  # type: ignore[arg-type]  # a Table


async def insert_appointment(session: AsyncSession, values: dict[str, Any]) -> None:
    """A Core insert, compiled once: the booking path needs no unit of work for one row."""
    await session.execute(_INSERT_APPOINTMENT, values)


async def list_clinicians(session: AsyncSession) -> Sequence[User]:
    result = await session.execute(
        select(User)
        .where(User.role == Role.CLINICIAN, User.is_active.is_(True))
        .order_by(User.name, User.id)
    )
    return result.scalars().all()


def _epoch(column: Any, dialect: str) -> Any:
    """Whole seconds since the epoch, computed by the database (slot boundaries are whole)."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return cast(func.extract("epoch", column), BigInteger)


async def busy_intervals(
    session: AsyncSession, clinician_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> Sequence[Row[int, int]]:
    """[start, end) in epoch seconds of every appointment holding the clinician's time in range.

    Epoch integers straight from the database: a listing reads a thousand of these per request.
    """
    dialect = session.get_bind().dialect.name
    result = await session.execute(
        select(_epoch(Appointment.start_at, dialect), _epoch(Appointment.end_at, dialect)).where(
            Appointment.clinician_id == clinician_id,
            Appointment.status.in_(ACTIVE_STATUSES),
            Appointment.start_at < end,
            Appointment.end_at > start,
        )
    )
    return result.all()


async def get_appointment(session: AsyncSession, appointment_id: uuid.UUID) -> Appointment | None:
    return await session.get(Appointment, appointment_id)


_BY_IDEMPOTENCY_KEY = select(Appointment).where(
    Appointment.created_by_id == bindparam("user_id"),
    Appointment.idempotency_key == bindparam("key"),
)


async def by_idempotency_key(
    session: AsyncSession, user_id: uuid.UUID, key: str
) -> Appointment | None:
    result = await session.execute(_BY_IDEMPOTENCY_KEY, {"user_id": user_id, "key": key})
    return result.scalar_one_or_none()


async def by_link_hash(session: AsyncSession, link_hash: str) -> Appointment | None:
    result = await session.execute(select(Appointment).where(Appointment.link_hash == link_hash))
    return result.scalar_one_or_none()


async def list_appointments(
    session: AsyncSession,
    *,
    clinician_id: uuid.UUID | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    status: str | None,
    limit: int,
) -> Sequence[Appointment]:
    query = select(Appointment).order_by(Appointment.start_at, Appointment.id).limit(limit)
    if clinician_id is not None:
        query = query.where(Appointment.clinician_id == clinician_id)
    if start is not None:
        query = query.where(Appointment.end_at > start)
    if end is not None:
        query = query.where(Appointment.start_at < end)
    if status is not None:
        query = query.where(Appointment.status == status)
    result = await session.execute(query)
    return result.scalars().all()


async def conditional_update(
    session: AsyncSession,
    appointment_id: uuid.UUID,
    *,
    from_statuses: Sequence[str],
    values: dict[str, Any],
) -> bool:
    """Apply `values` only if the status is still one of `from_statuses`; True if it was."""
    result = await session.execute(
        update(Appointment)
        .where(Appointment.id == appointment_id, Appointment.status.in_(from_statuses))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)
