"""The chat of a call, kept with its visit.

Each message is stored before anyone is sent it (signaling.chat), so what the participants saw
is what staff read afterwards (`GET /api/v1/appointments/{id}/chat`). A message is stored only
while the visit's call runs: a socket that still believes itself in a call that ended cannot add
to its chat. The text is patient data: it never reaches a log line.

Who in a running call may be shown what was said before (`visible_to`, for the pages that come
back into the call): the patient and the clinician all of it; a guest only what was said from
their latest admission on (what the patient and the clinician said before a caregiver or an
interpreter joined was not said in front of them); anyone not in the call (waiting, removed,
gone, or the call not running), nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, Uuid, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime
from app.participants import parse_key
from scheduling.models import Appointment, GuestStatus, Status, VisitGuest

# The contract's bounds on one message, in characters (the database checks them too).
MAX_TEXT = 2000


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        CheckConstraint(f"length(text) BETWEEN 1 AND {MAX_TEXT}", name="text_length"),
        Index("ix_chat_messages_appointment_sent", "appointment_id", "sent_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    appointment_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("appointments.id"))
    # The sender's participant key: "patient", "clinician", or "<role>:<id>" for a guest.
    sender: Mapped[str] = mapped_column(String(64))
    # The name shown with the message when it was sent (a later change of name keeps it).
    sender_name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class NotInCall(Exception):
    """The visit's call is not running: nothing is added to its chat."""


def sender_role(sender: str) -> str:
    """The role a participant key names ("interpreter:<id>" -> "interpreter")."""
    return sender.partition(":")[0]


async def add_message(
    session: AsyncSession,
    *,
    appointment_id: uuid.UUID,
    sender: str,
    sender_name: str,
    text: str,
    now: dt.datetime,
) -> ChatMessage:
    """Store one message of a running call; `NotInCall` when the call is not running."""
    status = await session.scalar(
        select(Appointment.status).where(Appointment.id == appointment_id)
    )
    if status != Status.IN_CALL.value:
        raise NotInCall()
    message = ChatMessage(
        id=uuid.uuid4(),
        appointment_id=appointment_id,
        sender=sender,
        sender_name=sender_name[:200],
        text=text,
        sent_at=now,
    )
    session.add(message)
    await session.flush()
    return message


async def messages_of(
    session: AsyncSession, appointment_id: uuid.UUID, *, since: dt.datetime | None = None
) -> Sequence[ChatMessage]:
    """The visit's chat (from `since` on), oldest first."""
    query = select(ChatMessage).where(ChatMessage.appointment_id == appointment_id)
    if since is not None:
        query = query.where(ChatMessage.sent_at >= since)
    result = await session.scalars(query.order_by(ChatMessage.sent_at, ChatMessage.id))
    return result.all()


async def count_of(session: AsyncSession, appointment_id: uuid.UUID) -> int:
    """How many messages the visit's chat has (the console's hint: signaling.chat.count)."""
    found = await session.scalar(
        select(func.count())
        .select_from(ChatMessage)
        .where(ChatMessage.appointment_id == appointment_id)
    )
    return int(found or 0)


async def visible_to(
    session: AsyncSession, *, appointment_id: uuid.UUID, participant: str
) -> Sequence[ChatMessage] | None:
    """What was said in the running call that this participant (their key) may be shown, oldest
    first; None when they are not in it now (or the call is not running)."""
    status = await session.scalar(
        select(Appointment.status).where(Appointment.id == appointment_id)
    )
    if status != Status.IN_CALL.value:
        return None
    try:
        _role, guest_id = parse_key(participant)
    except ValueError:
        return None
    if guest_id is None:
        return await messages_of(session, appointment_id)
    admitted_at = await session.scalar(
        select(VisitGuest.admitted_at).where(
            VisitGuest.id == guest_id,
            VisitGuest.appointment_id == appointment_id,
            VisitGuest.status == GuestStatus.IN_CALL.value,
        )
    )
    if admitted_at is None:
        return None
    return await messages_of(session, appointment_id, since=admitted_at)
