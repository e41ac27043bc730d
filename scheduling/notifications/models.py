"""The outbox: one row per notification a patient (or a guest of the visit) is to get.

A row is keyed by (appointment, kind, channel, reminder hour, the appointment's sequence), a
guest's by (guest, kind, channel, hour, sequence): the unique indexes make queueing one
notification twice impossible, whatever retries a request makes. Its status moves only forward,
each step a conditional UPDATE:

    queued -> claimed -> sending -> sent | failed        (claimed -> queued when a lease ends;
    queued | claimed -> cancelled                          sending -> queued only by its owner,
                                                           when nothing was handed over)
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Kind(enum.StrEnum):
    INVITATION = "invitation"
    RESCHEDULED = "rescheduled"
    CANCELLED = "cancelled"
    REMINDER = "reminder"
    GUEST_INVITATION = "guest_invitation"  # a guest's link, sent to the guest


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"


class State(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"  # taken by a worker, nothing attempted yet
    SENDING = "sending"  # handed to the transport: from here it is never sent again
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # superseded (the visit cancelled or moved) before it was sent


PENDING = (State.QUEUED.value, State.CLAIMED.value)


def _one_of(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(_one_of("kind", Kind), name="kind"),
        CheckConstraint(_one_of("channel", Channel), name="channel"),
        CheckConstraint(_one_of("status", State), name="status"),
        # The patient's (participant_id NULL) and each guest's apart: NULLs never collide.
        Index(
            "uq_notifications_once",
            "appointment_id",
            "kind",
            "channel",
            "hours",
            "sequence",
            unique=True,
            postgresql_where=text("participant_id IS NULL"),
            sqlite_where=text("participant_id IS NULL"),
        ),
        Index(
            "uq_notifications_guest_once",
            "participant_id",
            "kind",
            "channel",
            "hours",
            "sequence",
            unique=True,
            postgresql_where=text("participant_id IS NOT NULL"),
            sqlite_where=text("participant_id IS NOT NULL"),
        ),
        Index("ix_notifications_due", "status", "due_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    appointment_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("appointments.id", ondelete="CASCADE"), index=True
    )
    # A guest's notification (scheduling.guests); NULL: the patient's.
    participant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("visit_guests.id"))
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(8))
    # A reminder's hours before the start; 0 for the other kinds.
    hours: Mapped[int] = mapped_column(Integer, default=0)
    # The appointment's sequence the notice is about (a second reschedule is a second notice).
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=State.QUEUED.value)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Who holds it ("<pid>.<worker>.<claim>", new for every claim) and until when.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What went wrong last: an error's type or an SMTP/HTTP status, never a message's text.
    last_error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
