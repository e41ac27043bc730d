"""Queueing notifications, in the transaction of the change they announce.

Booking, rescheduling and cancelling call these inside their own transaction: the notice is
queued if and only if the change commits, and the unique key of `Notification` makes queueing
one twice impossible. Nothing is queued for a patient without the channel's contact, nor for a
channel the practice has not configured.

A guest of the visit (scheduling.guests) with an email or a phone gets their own invitation
(`guest_invitation`, with their own link) and the notices of a reschedule and a cancellation;
their rows carry `participant_id`. Guests get no reminders.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from scheduling.models import Appointment, VisitGuest
from scheduling.notifications.models import PENDING, Channel, Kind, Notification, State


@dataclass(frozen=True)
class Plan:
    """What the practice sends: its channels, and reminders these many hours before a visit."""

    email: bool = False
    sms: bool = False
    reminder_hours: tuple[int, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Plan:
        return cls(
            email=settings.smtp_url is not None,
            sms=settings.sms_webhook_url is not None,
            reminder_hours=settings.reminder_hours,
        )

    def channels(self, appointment: Appointment) -> list[Channel]:
        """The channels this patient can be reached on."""
        found = []
        if self.email and appointment.patient_email:
            found.append(Channel.EMAIL)
        if self.sms and appointment.patient_phone:
            found.append(Channel.SMS)
        return found

    def guest_channels(self, guest: VisitGuest) -> list[Channel]:
        """The channels this guest can be reached on."""
        found = []
        if self.email and guest.email:
            found.append(Channel.EMAIL)
        if self.sms and guest.phone:
            found.append(Channel.SMS)
        return found


NOTHING = Plan()


def _row(
    appointment: Appointment,
    kind: Kind,
    channel: Channel,
    due: dt.datetime,
    *,
    now: dt.datetime,
    hours: int = 0,
    guest: VisitGuest | None = None,
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "appointment_id": appointment.id,
        "participant_id": None if guest is None else guest.id,
        "kind": kind.value,
        "channel": channel.value,
        "hours": hours,
        "sequence": appointment.sequence,
        "status": State.QUEUED.value,
        "due_at": due,
        "attempts": 0,
        "created_at": now,
    }


def _reminders(
    plan: Plan, appointment: Appointment, channel: Channel, now: dt.datetime, skip: set[int]
) -> list[dict[str, Any]]:
    """Reminders still ahead (a reminder due before now is not worth sending)."""
    rows = []
    for hours in plan.reminder_hours:
        due = appointment.start_at - dt.timedelta(hours=hours)
        if hours not in skip and due > now:
            rows.append(_row(appointment, Kind.REMINDER, channel, due, now=now, hours=hours))
    return rows


async def _insert(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(Notification), list(rows))


async def _active_guests(session: AsyncSession, appointment_id: uuid.UUID) -> list[VisitGuest]:
    result = await session.execute(
        select(VisitGuest).where(
            VisitGuest.appointment_id == appointment_id, VisitGuest.removed_at.is_(None)
        )
    )
    return list(result.scalars())


async def _to_guests(
    session: AsyncSession, plan: Plan, appointment: Appointment, kind: Kind, now: dt.datetime
) -> list[dict[str, Any]]:
    """`kind`, now, to each active guest of the appointment on each of their channels."""
    if not (plan.email or plan.sms):
        return []
    return [
        _row(appointment, kind, channel, now, now=now, guest=guest)
        for guest in await _active_guests(session, appointment.id)
        for channel in plan.guest_channels(guest)
    ]


async def guest_invited(
    session: AsyncSession,
    plan: Plan,
    appointment: Appointment,
    guest: VisitGuest,
    *,
    now: dt.datetime,
) -> None:
    """The guest's invitation (their own link), now, to the guest's own email and phone."""
    await _insert(
        session,
        [
            _row(appointment, Kind.GUEST_INVITATION, channel, now, now=now, guest=guest)
            for channel in plan.guest_channels(guest)
        ],
    )


async def guest_removed(session: AsyncSession, guest_id: uuid.UUID) -> None:
    """What was queued for the guest and not sent is cancelled: their link no longer opens."""
    await session.execute(
        update(Notification)
        .where(Notification.participant_id == guest_id, Notification.status.in_(PENDING))
        .values(status=State.CANCELLED.value, claimed_by=None, lease_until=None)
    )


async def booked(
    session: AsyncSession, plan: Plan, appointment: Appointment, *, now: dt.datetime
) -> None:
    """The invitation, now, and the reminders."""
    rows: list[dict[str, Any]] = []
    for channel in plan.channels(appointment):
        rows.append(_row(appointment, Kind.INVITATION, channel, now, now=now))
        rows += _reminders(plan, appointment, channel, now, set())
    await _insert(session, rows)


async def rescheduled(
    session: AsyncSession, plan: Plan, appointment: Appointment, *, now: dt.datetime
) -> None:
    """The notice, now; reminders not yet sent move with the visit (one ahead of the new time
    is queued again even if it went out for the old one)."""
    pending = (
        await session.execute(
            select(Notification.id, Notification.channel, Notification.hours).where(
                Notification.appointment_id == appointment.id,
                Notification.kind == Kind.REMINDER.value,
                Notification.status.in_(PENDING),
            )
        )
    ).all()
    moved: dict[str, set[int]] = {}
    for row_id, channel, hours in pending:
        due = appointment.start_at - dt.timedelta(hours=hours)
        values: dict[str, Any] = (
            {"due_at": due, "sequence": appointment.sequence, "status": State.QUEUED.value}
            if due > now
            else {"status": State.CANCELLED.value}
        )
        # A claimed one goes back to the queue: its worker's claim no longer holds.
        await session.execute(
            update(Notification)
            .where(Notification.id == row_id, Notification.status.in_(PENDING))
            .values(claimed_by=None, lease_until=None, **values)
        )
        if due > now:
            moved.setdefault(channel, set()).add(hours)
    rows: list[dict[str, Any]] = []
    for channel in plan.channels(appointment):
        rows.append(_row(appointment, Kind.RESCHEDULED, channel, now, now=now))
        rows += _reminders(plan, appointment, channel, now, moved.get(channel.value, set()))
    rows += await _to_guests(session, plan, appointment, Kind.RESCHEDULED, now)
    await _insert(session, rows)


async def cancelled(
    session: AsyncSession, plan: Plan, appointment: Appointment, *, now: dt.datetime
) -> None:
    """Everything not yet sent is cancelled; the notice goes now."""
    await session.execute(
        update(Notification)
        .where(
            Notification.appointment_id == appointment.id,
            Notification.status.in_(PENDING),
        )
        .values(status=State.CANCELLED.value, claimed_by=None, lease_until=None)
    )
    rows = [
        _row(appointment, Kind.CANCELLED, channel, now, now=now)
        for channel in plan.channels(appointment)
    ]
    rows += await _to_guests(session, plan, appointment, Kind.CANCELLED, now)
    await _insert(session, rows)


async def of_appointment(
    session: AsyncSession, appointment_id: uuid.UUID
) -> Sequence[Notification]:
    """What was queued for this appointment and not cancelled, in the order it is due."""
    result = await session.execute(
        select(Notification)
        .where(
            Notification.appointment_id == appointment_id,
            Notification.status != State.CANCELLED.value,
        )
        .order_by(Notification.due_at, Notification.kind, Notification.channel)
    )
    return result.scalars().all()
