"""Scheduling rules: who may see which clinician, which slots are free, booking and its lifecycle.

Services never commit: the request is the unit of work. Overlap is checked by the database
(see scheduling.models); here are the rules the database cannot know (hours, notice, horizon).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Role, User
from app.auth.principal import Principal
from app.errors import Conflict, Gone, NotAuthenticated, NotFound, ValidationFailed
from scheduling import guests, lifecycle, repository, slots, visits
from scheduling.models import Appointment, Availability, Status
from scheduling.notifications import outbox
from scheduling.schemas import AvailabilityBody, Patient
from scheduling.slot_cache import DAY, RenderedDay, SlotCache

MAX_RANGE = dt.timedelta(days=62)
DEFAULT_SLOT_MINUTES = 20


class SlotUnavailable(Conflict):
    code = "slot_unavailable"
    message = "That time is not a free slot of this clinician."


class InvalidTransition(Conflict):
    code = "invalid_transition"
    message = "The appointment's status does not allow this."


# Access ------------------------------------------------------------------------------------


def can_manage_clinician(viewer: Principal, clinician_id: uuid.UUID) -> bool:
    return viewer.role in (Role.ADMIN, Role.SCHEDULER) or viewer.id == clinician_id


def can_see_appointment(viewer: Principal, appointment: Appointment) -> bool:
    return can_manage_clinician(viewer, appointment.clinician_id)


async def clinician_for(
    session: AsyncSession, *, viewer: Principal, clinician_id: uuid.UUID
) -> tuple[User, Availability | None]:
    """The clinician and availability if the viewer may manage them; 404 otherwise."""
    if not can_manage_clinician(viewer, clinician_id):
        raise NotFound()
    found = await repository.clinician_with_availability(session, clinician_id)
    if found is None:
        raise NotFound()
    return found


async def appointment_for(
    session: AsyncSession, *, viewer: Principal, appointment_id: uuid.UUID
) -> Appointment:
    appointment = await repository.get_appointment(session, appointment_id)
    if appointment is None or not can_see_appointment(viewer, appointment):
        raise NotFound()
    return appointment


# Availability ------------------------------------------------------------------------------


def availability_document(clinician: User, availability: Availability | None) -> dict[str, Any]:
    if availability is None:
        return {
            "timezone": clinician.timezone,
            "slot_minutes": DEFAULT_SLOT_MINUTES,
            "weekly": [],
            "exceptions": [],
            "min_notice_minutes": 0,
            "horizon_days": None,
        }
    return {
        "timezone": availability.timezone,
        "slot_minutes": availability.slot_minutes,
        "weekly": availability.weekly,
        "exceptions": availability.exceptions,
        "min_notice_minutes": availability.min_notice_minutes,
        "horizon_days": availability.horizon_days,
    }


async def set_availability(
    session: AsyncSession,
    *,
    clinician_id: uuid.UUID,
    existing: Availability | None,
    body: AvailabilityBody,
) -> Availability:
    weekly = [w.model_dump(mode="json") for w in body.weekly]
    exceptions = [e.model_dump(mode="json") for e in body.exceptions]
    if existing is None:
        existing = Availability(clinician_id=clinician_id)
        session.add(existing)
    existing.timezone = body.timezone
    existing.slot_minutes = body.slot_minutes
    existing.min_notice_minutes = body.min_notice_minutes
    existing.horizon_days = body.horizon_days
    existing.weekly = weekly
    existing.exceptions = exceptions
    existing.updated_at = dt.datetime.now(dt.UTC)
    await session.flush()
    return existing


def _clock(value: str) -> dt.time | None:
    if value == "24:00":
        return None
    return dt.time.fromisoformat(value)


_SCHEDULES: OrderedDict[tuple[uuid.UUID, dt.datetime], slots.Schedule] = OrderedDict()
_MAX_SCHEDULES = 1000


def cached_schedule(clinician_id: uuid.UUID, hours: repository.Hours) -> slots.Schedule:
    """The parsed schedule, reused while the stored availability is unchanged."""
    key = (clinician_id, hours.updated_at)
    schedule = _SCHEDULES.get(key)
    if schedule is None:
        schedule = _SCHEDULES[key] = schedule_of(hours)
        if len(_SCHEDULES) > _MAX_SCHEDULES:
            _SCHEDULES.popitem(last=False)
    return schedule


def schedule_of(availability: repository.Hours) -> slots.Schedule:
    weekly: list[list[slots.Hours]] = [[] for _ in range(7)]
    for item in availability.weekly:
        start = _clock(item["start"])
        assert start is not None
        weekly[item["weekday"]].append(slots.Hours(start, _clock(item["end"])))
    exceptions: dict[dt.date, list[slots.Hours]] = {}
    for item in availability.exceptions:
        hours = exceptions.setdefault(dt.date.fromisoformat(item["date"]), [])
        if item.get("start") is not None:
            start = _clock(item["start"])
            assert start is not None
            hours.append(slots.Hours(start, _clock(item["end"])))
    return slots.Schedule(
        timezone=availability.timezone,
        slot_minutes=availability.slot_minutes,
        weekly=tuple(tuple(day) for day in weekly),
        exceptions={day: tuple(hours) for day, hours in exceptions.items()},
        min_notice_minutes=availability.min_notice_minutes,
        horizon_days=availability.horizon_days,
    )


# Slots -------------------------------------------------------------------------------------


def check_range(start: dt.datetime, end: dt.datetime) -> None:
    if end < start:
        raise ValidationFailed("end is before start.")
    if end - start > MAX_RANGE:
        raise ValidationFailed("The range may span at most 62 days.")


async def free_slots_json(
    session: AsyncSession,
    *,
    viewer: Principal,
    clinician_id: uuid.UUID,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    cache: SlotCache,
) -> bytes:
    """`{"slots": [...]}`: free slots wholly inside [start, end), offered at `now`, in order.

    404 unless the viewer may see this clinician. Days are rendered once per availability and
    bookings version (see scheduling.slot_cache); notice, horizon and the range apply here.
    """
    check_range(start, end)
    if not can_manage_clinician(viewer, clinician_id):
        raise NotFound()
    found = await repository.clinician_hours(session, clinician_id)
    if found is None:
        raise NotFound()
    hours = found[1]
    if hours is None or start == end:
        return b'{"slots":[]}'
    schedule = cached_schedule(clinician_id, hours)
    # Whole seconds inside the range: the start rounded up, the end rounded down.
    low = slots.to_instant(start) + (1 if start.microsecond else 0)
    high = slots.to_instant(end)
    earliest, latest = slots.bounds(schedule, slots.to_instant(now))
    first_start = max(low, earliest + 1)
    last_start = high - schedule.step
    if latest is not None:
        last_start = min(last_start, latest - 1)
    if first_start > last_start:
        return b'{"slots":[]}'
    first_day, last_day = first_start // DAY, last_start // DAY
    version = (hours.updated_at, hours.bookings_version)
    days = cache.get(clinician_id, version, first_day, last_day)
    if days is None:
        days = await _render_days(session, clinician_id, schedule, first_day, last_day)
        cache.put(clinician_id, version, dict(enumerate(days, start=first_day)))
    parts = [day.between(first_start, last_start) for day in days]
    return b'{"slots":[' + b",".join(part for part in parts if part) + b"]}"


async def _render_days(
    session: AsyncSession,
    clinician_id: uuid.UUID,
    schedule: slots.Schedule,
    first_day: int,
    last_day: int,
) -> list[RenderedDay]:
    """Every free slot starting on the UTC days [first_day, last_day], rendered per day."""
    begin = first_day * DAY
    # Slots starting on the last day may end on the next: look one day (and a slot) further.
    finish = (last_day + 2) * DAY + schedule.step
    busy = await repository.busy_intervals(
        session,
        clinician_id,
        dt.datetime.fromtimestamp(begin, dt.UTC),
        dt.datetime.fromtimestamp(finish, dt.UTC),
    )
    by_day: dict[int, list[tuple[int, int]]] = {}
    for slot in slots.iter_free(schedule, begin, finish, None, [(b[0], b[1]) for b in busy]):
        day = slot[0] // DAY
        if day > last_day:
            break
        by_day.setdefault(day, []).append(slot)
    formatted: dict[int, str] = {}
    return [
        RenderedDay.render(by_day.get(day, ()), formatted) for day in range(first_day, last_day + 1)
    ]


def offered_end(
    clinician_id: uuid.UUID,
    hours: repository.Hours | None,
    start: dt.datetime,
    now: dt.datetime,
) -> dt.datetime:
    """The end of the slot starting at `start` if it is offered now; else 409 slot_unavailable."""
    if hours is None or start.microsecond:
        raise SlotUnavailable()
    end = slots.offered_end(
        cached_schedule(clinician_id, hours), slots.to_instant(start), slots.to_instant(now)
    )
    if end is None:
        raise SlotUnavailable()
    return dt.datetime.fromtimestamp(end, dt.UTC)


# Booking -----------------------------------------------------------------------------------


def fingerprint(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was used with another request body."


def _replay(existing: Appointment, body_fingerprint: str) -> Appointment:
    if existing.idempotency_fingerprint != body_fingerprint:
        raise IdempotencyKeyReused()
    return existing


async def book(
    session: AsyncSession,
    *,
    actor: Principal,
    clinician_id: uuid.UUID,
    start: dt.datetime,
    patient: Patient,
    reason: str | None,
    idempotency_key: str | None,
    body_fingerprint: str,
    link_key: bytes,
    now: dt.datetime,
    notices: outbox.Plan,
) -> Appointment:
    """Book a free slot; with an Idempotency-Key already used by this actor, answer that booking.

    The invitation and reminders are queued in the same transaction (scheduling.notifications)."""
    if idempotency_key is not None:
        existing = await repository.by_idempotency_key(session, actor.id, idempotency_key)
        if existing is not None:
            return _replay(existing, body_fingerprint)
    found = await repository.clinician_hours(session, clinician_id, lock=True)
    if found is None:
        raise NotFound("No such clinician.")
    end = offered_end(clinician_id, found[1], start, now)
    salt = visits.new_salt()
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "clinician_id": clinician_id,
        "start_at": start,
        "end_at": end,
        "status": Status.BOOKED.value,
        "patient_name": patient.name,
        "patient_email": patient.email,
        "patient_phone": patient.phone,
        "patient_birth_date": patient.birth_date,
        "patient_timezone": patient.timezone,
        "reason": reason or None,
        "link_salt": salt,
        "link_hash": visits.token_hash(visits.token_for(link_key, salt)),
        "sequence": 0,
        "created_by_id": actor.id,
        "idempotency_key": idempotency_key,
        "idempotency_fingerprint": body_fingerprint if idempotency_key else None,
        "created_at": now,
        "updated_at": now,
        "cancelled_at": None,
        "cancel_reason": None,
    }
    booked = Appointment(**values)
    if idempotency_key is None:
        try:
            await repository.insert_appointment(session, values)
        except IntegrityError:
            raise SlotUnavailable() from None
        await outbox.booked(session, notices, booked, now=now)
        return booked
    try:
        # A savepoint, so a racing request with the same key can be answered from this one.
        async with session.begin_nested():
            await repository.insert_appointment(session, values)
            await outbox.booked(session, notices, booked, now=now)
    except IntegrityError:
        existing = await repository.by_idempotency_key(session, actor.id, idempotency_key)
        if existing is not None:
            return _replay(existing, body_fingerprint)
        raise SlotUnavailable() from None
    return booked


async def _move(
    session: AsyncSession,
    appointment: Appointment,
    move: lifecycle.Transition,
    values: dict[str, Any],
) -> Appointment:
    """A transition of the state machine (scheduling.lifecycle), applied only if the row still
    allows it; else 409."""
    moved = await lifecycle.move(
        session, move, appointment.id, updated_at=dt.datetime.now(dt.UTC), **values
    )
    if moved is None:
        raise InvalidTransition()
    return moved


async def transition(
    session: AsyncSession, appointment: Appointment, target: Status, **values: Any
) -> Appointment:
    """Move the appointment to `target` by the table's transition from its current status."""
    move = lifecycle.leading_to(target, Status(appointment.status))
    if move is None:
        raise InvalidTransition()
    return await _move(session, appointment, move, values)


async def cancel(
    session: AsyncSession, appointment: Appointment, reason: str | None, *, notices: outbox.Plan
) -> Appointment:
    """Cancel; what was queued for the patient and not sent is cancelled, the notice queued."""
    cancelled = await _move(
        session,
        appointment,
        lifecycle.CANCEL,
        {
            "cancelled_at": dt.datetime.now(dt.UTC),
            "cancel_reason": reason or None,
            "sequence": Appointment.sequence + 1,
        },
    )
    await outbox.cancelled(session, notices, cancelled, now=dt.datetime.now(dt.UTC))
    return cancelled


async def reschedule(
    session: AsyncSession,
    appointment: Appointment,
    *,
    start: dt.datetime,
    now: dt.datetime,
    notices: outbox.Plan,
) -> Appointment:
    """Move to another free slot; the notice is queued and pending reminders move along."""
    found = await repository.clinician_hours(session, appointment.clinician_id, lock=True)
    if found is None:
        raise SlotUnavailable()
    end = offered_end(appointment.clinician_id, found[1], start, now)
    try:
        moved = await _move(
            session,
            appointment,
            lifecycle.RESCHEDULE,
            {"start_at": start, "end_at": end, "sequence": Appointment.sequence + 1},
        )
    except IntegrityError:
        raise SlotUnavailable() from None
    await outbox.rescheduled(session, notices, moved, now=now)
    return moved


# Visit links -------------------------------------------------------------------------------


class VisitNotFound(NotFound):
    code = "visit_not_found"
    message = "This visit link is not valid."


class VisitClosed(Gone):
    code = "visit_closed"
    message = "This visit link is closed."


class VerificationRequired(NotAuthenticated):
    code = "verification_required"
    message = "Confirm the patient's date of birth first."


def link_closes_at(appointment: Appointment, hours_after: int) -> dt.datetime:
    return appointment.end_at + dt.timedelta(hours=hours_after)


async def find_link(
    session: AsyncSession, *, token: str, now: dt.datetime, hours_after: int
) -> guests.VisitLink:
    """The appointment behind an open visit link, the patient's or a guest's; 404 unknown, 410
    cancelled, expired or (a guest's) removed."""
    if not 20 <= len(token) <= 100:
        raise VisitNotFound()
    link_hash = visits.token_hash(token)
    appointment = await repository.by_link_hash(session, link_hash)
    guest = None
    if appointment is None:
        guest = await guests.by_link_hash(session, link_hash)
        if guest is None:
            raise VisitNotFound()
        appointment = await repository.get_appointment(session, guest.appointment_id)
        if appointment is None:
            raise VisitNotFound()
        if guest.removed_at is not None:
            raise VisitClosed()
    if appointment.status == Status.CANCELLED or now >= link_closes_at(appointment, hours_after):
        raise VisitClosed()
    return guests.VisitLink(appointment, guest)


async def find_visit(
    session: AsyncSession, *, token: str, now: dt.datetime, hours_after: int
) -> Appointment:
    """The appointment behind the patient's open link; a guest's link is not the patient's."""
    link = await find_link(session, token=token, now=now, hours_after=hours_after)
    if link.is_guest:
        raise VisitNotFound()
    return link.appointment


def needs_verification(appointment: Appointment, *, birth_date_check: bool) -> bool:
    """With the practice's birth-date check on, a link alone shows nothing."""
    return birth_date_check and appointment.patient_birth_date is not None


async def open_link(
    session: AsyncSession,
    *,
    token: str,
    now: dt.datetime,
    hours_after: int,
    birth_date_check: bool,
    link_key: bytes,
    verification: str | None,
) -> guests.VisitLink:
    """`find_link`, and the proof of the patient's second factor when the practice asks for one.

    A guest's link needs none: the birth date is the patient's, which a guest need not know."""
    link = await find_link(session, token=token, now=now, hours_after=hours_after)
    appointment = link.appointment
    if (
        not link.is_guest
        and needs_verification(appointment, birth_date_check=birth_date_check)
        and not (
            verification
            and visits.proof_valid(link_key, appointment.link_hash, verification, now=now)
        )
    ):
        raise VerificationRequired()
    return link


async def open_visit(
    session: AsyncSession,
    *,
    token: str,
    now: dt.datetime,
    hours_after: int,
    birth_date_check: bool,
    link_key: bytes,
    verification: str | None,
) -> Appointment:
    """`open_link` for the patient's own link only (a guest's answers 404)."""
    link = await open_link(
        session,
        token=token,
        now=now,
        hours_after=hours_after,
        birth_date_check=birth_date_check,
        link_key=link_key,
        verification=verification,
    )
    if link.is_guest:
        raise VisitNotFound()
    return link.appointment


async def list_clinicians(session: AsyncSession) -> Sequence[User]:
    return await repository.list_clinicians(session)


async def clinician_name(session: AsyncSession, clinician_id: uuid.UUID) -> str:
    clinician = await session.get(User, clinician_id)
    return clinician.name if clinician is not None else ""


async def list_appointments(
    session: AsyncSession,
    *,
    viewer: Principal,
    clinician_id: uuid.UUID | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    status: str | None,
    limit: int,
) -> Sequence[Appointment]:
    """Appointments the viewer may see; a clinician sees only their own."""
    if start is not None and end is not None and end < start:
        raise ValidationFailed("end is before start.")
    if viewer.role == Role.CLINICIAN:
        if clinician_id is not None and clinician_id != viewer.id:
            raise NotFound()
        clinician_id = viewer.id
    return await repository.list_appointments(
        session, clinician_id=clinician_id, start=start, end=end, status=status, limit=limit
    )
