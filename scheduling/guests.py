"""Guests of a visit: adding, listing and removing them, and what their links open.

A guest (an interpreter, a caregiver, a second clinician) has a link of their own, derived as
the patient's is (scheduling.visits: only the salt and the token's hash are stored), their own
consent, and one of the appointment's MAX_GUESTS slots. The slot is picked here, but the
database decides: its partial unique index over (appointment, slot) of the guests not removed
refuses a third active guest whatever requests race (409 `participant_limit`).

Services never commit; the request (or the socket's short transaction) is the unit of work.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import participants
from app.audit import record_event
from app.errors import Conflict, NotFound
from scheduling import visits
from scheduling.models import Appointment, GuestStatus, Status, VisitGuest

# An appointment over (or called off) takes no guests: its visit is closed to newcomers.
CLOSED_STATUSES = (Status.CANCELLED.value, Status.COMPLETED.value, Status.NO_SHOW.value)
# A guest may wait or be in the call only while their consent to the video visit stands.
PRESENT_STATUSES = (GuestStatus.WAITING.value, GuestStatus.IN_CALL.value, GuestStatus.LEFT.value)


class ParticipantLimit(Conflict):
    code = "participant_limit"
    message = "This visit already has the most guests it may have (2)."


class VisitOver(Conflict):
    code = "visit_closed"
    message = "This visit is cancelled or over; it takes no guests."


class GuestNotFound(NotFound):
    message = "No such guest of this appointment."


@dataclass(frozen=True, slots=True)
class VisitLink:
    """What a visit link opened: the appointment, and the guest whose link it is (None for the
    patient's own)."""

    appointment: Appointment
    guest: VisitGuest | None = None

    @property
    def is_guest(self) -> bool:
        return self.guest is not None

    @property
    def participant(self) -> str:
        """`"patient"` or the guest's `"<role>:<id>"` (app.participants)."""
        if self.guest is None:
            return participants.PATIENT
        return participants.guest_key(self.guest.role, self.guest.id)

    @property
    def link_hash(self) -> str:
        return self.appointment.link_hash if self.guest is None else self.guest.link_hash


def key_of(guest: VisitGuest) -> str:
    return participants.guest_key(guest.role, guest.id)


def token_of(guest: VisitGuest, link_key: bytes) -> str:
    """The guest's link token, derived again (it is never stored)."""
    return visits.token_for(link_key, guest.link_salt)


async def by_link_hash(session: AsyncSession, link_hash: str) -> VisitGuest | None:
    result = await session.execute(select(VisitGuest).where(VisitGuest.link_hash == link_hash))
    return result.scalar_one_or_none()


async def get(
    session: AsyncSession, *, appointment_id: uuid.UUID, guest_id: uuid.UUID
) -> VisitGuest | None:
    """The guest of this appointment (removed or not); None if it is not theirs."""
    result = await session.execute(
        select(VisitGuest).where(
            VisitGuest.id == guest_id, VisitGuest.appointment_id == appointment_id
        )
    )
    return result.scalar_one_or_none()


async def list_guests(
    session: AsyncSession, appointment_id: uuid.UUID, *, include_removed: bool = False
) -> Sequence[VisitGuest]:
    """The appointment's guests in the order they were added; active ones unless asked."""
    query = select(VisitGuest).where(VisitGuest.appointment_id == appointment_id)
    if not include_removed:
        query = query.where(VisitGuest.removed_at.is_(None))
    result = await session.execute(query.order_by(VisitGuest.created_at, VisitGuest.slot))
    return result.scalars().all()


async def of_appointments(
    session: AsyncSession, appointment_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[VisitGuest]]:
    """Active guests of these appointments (for queue items), by appointment."""
    found: dict[uuid.UUID, list[VisitGuest]] = {a: [] for a in appointment_ids}
    if not appointment_ids:
        return found
    result = await session.execute(
        select(VisitGuest)
        .where(
            VisitGuest.appointment_id.in_(list(appointment_ids)),
            VisitGuest.removed_at.is_(None),
        )
        .order_by(VisitGuest.created_at, VisitGuest.slot)
    )
    for guest in result.scalars():
        found[guest.appointment_id].append(guest)
    return found


async def _free_slot(session: AsyncSession, appointment_id: uuid.UUID) -> int | None:
    taken = set(
        (
            await session.execute(
                select(VisitGuest.slot).where(
                    VisitGuest.appointment_id == appointment_id, VisitGuest.removed_at.is_(None)
                )
            )
        ).scalars()
    )
    return next((n for n in range(1, participants.MAX_GUESTS + 1) if n not in taken), None)


def check_open(appointment: Appointment, *, now: dt.datetime, link_closes_at: dt.datetime) -> None:
    """409 `visit_closed` when the visit takes no guests any more."""
    if appointment.status in CLOSED_STATUSES or now >= link_closes_at:
        raise VisitOver()


async def add(
    session: AsyncSession,
    *,
    appointment: Appointment,
    role: str,
    name: str,
    email: str | None,
    phone: str | None,
    actor_id: uuid.UUID,
    link_key: bytes,
    now: dt.datetime,
) -> VisitGuest:
    """A new guest in a free slot; 409 `participant_limit` when both are taken.

    Each attempt runs in a savepoint: two requests racing for the last free slot both insert
    into it, the database lets one through, and the other (its savepoint undone) reads the
    slots again and finds none left (or, when both raced for the first of two, the other).
    """
    if role not in participants.GUEST_ROLES:
        raise ValueError(f"not a guest role: {role!r}")
    for _ in range(participants.MAX_GUESTS):
        slot = await _free_slot(session, appointment.id)
        if slot is None:
            break
        salt = visits.new_salt()
        guest = VisitGuest(
            id=uuid.uuid4(),
            appointment_id=appointment.id,
            role=role,
            name=name,
            email=email,
            phone=phone,
            link_salt=salt,
            link_hash=visits.token_hash(visits.token_for(link_key, salt)),
            slot=slot,
            status=GuestStatus.INVITED.value,
            consent="",
            consent_seq=0,
            created_by_id=actor_id,
            created_at=now,
        )
        try:
            async with session.begin_nested():
                session.add(guest)
                await session.flush()
        except IntegrityError:
            continue  # the savepoint's rollback took the new row out of the session too
        return guest
    raise ParticipantLimit()


async def remove(
    session: AsyncSession, *, appointment_id: uuid.UUID, guest_id: uuid.UUID, now: dt.datetime
) -> VisitGuest:
    """Close the guest's link for good (status `removed`); 404 unless an active guest of this
    appointment. A conditional update: two removals cannot both succeed."""
    result = await session.execute(
        update(VisitGuest)
        .where(
            VisitGuest.id == guest_id,
            VisitGuest.appointment_id == appointment_id,
            VisitGuest.removed_at.is_(None),
        )
        .values(
            status=GuestStatus.REMOVED.value,
            removed_at=now,
            presence=None,
            process=None,
            connection=None,
            presence_deadline=None,
        )
        .returning(VisitGuest.id)
        .execution_options(synchronize_session=False)
    )
    if result.scalar_one_or_none() is None:
        raise GuestNotFound()
    guest = await get(session, appointment_id=appointment_id, guest_id=guest_id)
    assert guest is not None
    await session.refresh(guest)
    return guest


async def set_status(
    session: AsyncSession,
    guest_id: uuid.UUID,
    *,
    to: GuestStatus,
    among: Collection[str],
    **values: Any,
) -> bool:
    """Move a guest not removed to `to` if their status is one of `among` (a conditional
    update: of two racing moves one wins); other columns as given. True if it moved."""
    result = await session.execute(
        update(VisitGuest)
        .where(
            VisitGuest.id == guest_id,
            VisitGuest.removed_at.is_(None),
            VisitGuest.status.in_(list(among)),
        )
        .values(status=to.value, **values)
        .returning(VisitGuest.id)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none() is not None


async def admit(session: AsyncSession, guest_id: uuid.UUID, *, now: dt.datetime) -> bool:
    """A waiting guest into the call (`in_call`, admitted_at); False unless they were waiting."""
    return await set_status(
        session,
        guest_id,
        to=GuestStatus.IN_CALL,
        among=(GuestStatus.WAITING.value, GuestStatus.LEFT.value),
        admitted_at=now,
    )


async def withdraw(session: AsyncSession, guest_id: uuid.UUID) -> bool:
    """The guest's consent to the video visit no longer stands: out of the waiting room or the
    call (back to `invited`: they must consent and be admitted again). True if they were in."""
    return await set_status(
        session,
        guest_id,
        to=GuestStatus.INVITED,
        among=PRESENT_STATUSES,
        presence=None,
        process=None,
        connection=None,
        presence_deadline=None,
        waiting_since=None,
    )


async def set_consent(
    session: AsyncSession, guest_id: uuid.UUID, *, granted: str, seq: int
) -> None:
    """The guest's standing consent, rewritten by each of their decisions (scheduling.consent)."""
    await session.execute(
        update(VisitGuest)
        .where(VisitGuest.id == guest_id)
        .values(consent=granted, consent_seq=seq)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True, slots=True)
class GuestConsent:
    """What a guest's row says: who they are, their status and their standing scopes."""

    key: str
    status: str
    granted: frozenset[str]  # the scopes that stand: "video_visit", "recording"
    seq: int = 0  # the `seq` of the guest's latest consent record (0: none)


async def record_admitted(
    session: AsyncSession,
    *,
    actor_id: uuid.UUID,
    actor_role: str,
    appointment_id: uuid.UUID,
    guest_id: uuid.UUID,
    role: str,
) -> None:
    """The audit event of a guest admitted into the call (by a socket: no HTTP request)."""
    await record_event(
        session,
        actor_id=actor_id,
        actor_role=actor_role,
        action="guest.admit",
        resource_type="visit_guest",
        resource_id=guest_id,
        details={"appointment_id": str(appointment_id), "role": role},
    )
