"""Availability, appointments and consent texts.

Double booking is refused by the database itself: on PostgreSQL an exclusion constraint over
(clinician, [start, end)) of every appointment not cancelled; on SQLite triggers doing the same
check inside the write transaction, which `BEGIN IMMEDIATE` makes the only one (see app.db).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow
from app.participants import GUEST_ROLES, MAX_GUESTS


class Status(enum.StrEnum):
    BOOKED = "booked"
    WAITING = "waiting"
    IN_CALL = "in_call"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


# The statuses whose appointment holds the clinician's time.
ACTIVE_STATUSES = tuple(s.value for s in Status if s is not Status.CANCELLED)
_STATUS_LIST = ", ".join(f"'{s.value}'" for s in Status)


class Availability(Base):
    """A clinician's weekly hours and date exceptions, as wall-clock times in `timezone`."""

    __tablename__ = "availabilities"
    __table_args__ = (
        CheckConstraint("slot_minutes BETWEEN 5 AND 480", name="slot_minutes"),
        CheckConstraint("min_notice_minutes >= 0", name="min_notice"),
        CheckConstraint("horizon_days IS NULL OR horizon_days >= 1", name="horizon"),
    )

    clinician_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    timezone: Mapped[str] = mapped_column(String(64))
    slot_minutes: Mapped[int] = mapped_column(Integer)
    min_notice_minutes: Mapped[int] = mapped_column(Integer, default=0)
    horizon_days: Mapped[int | None] = mapped_column(Integer)
    # [{"weekday": 0, "start": "09:00", "end": "12:00"}, ...], validated on the way in.
    weekly: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # [{"date": "2026-12-24", "start": null, "end": null}, ...]
    exceptions: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Raised by triggers on every appointment change of this clinician (migration 0002).
    bookings_version: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)


class Appointment(Base):
    __tablename__ = "appointments"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_LIST})", name="status"),
        CheckConstraint("end_at > start_at", name="positive_duration"),
        CheckConstraint(
            "patient_presence IS NULL OR patient_presence IN ('connected', 'reconnecting')",
            name="presence",
        ),
        UniqueConstraint("created_by_id", "idempotency_key", name="uq_appointments_idempotency"),
        Index("ix_appointments_clinician_start", "clinician_id", "start_at"),
        ExcludeConstraint(
            (text("clinician_id"), "="),
            (func.tstzrange(text("start_at"), text("end_at"), "[)"), "&&"),
            name="ex_appointments_no_overlap",
            using="gist",
            where=text("status <> 'cancelled'"),
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    clinician_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=Status.BOOKED.value)
    patient_name: Mapped[str] = mapped_column(String(200))
    patient_email: Mapped[str | None] = mapped_column(String(320))
    patient_phone: Mapped[str | None] = mapped_column(String(16))
    patient_birth_date: Mapped[dt.date | None] = mapped_column(Date)
    # The patient's own time zone, when the booking gave one: notifications show times in it.
    patient_timezone: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    # The visit link is derived from this salt and the server secret; only its hash is stored.
    link_salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    link_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # RFC 5545 SEQUENCE of the calendar event; raised on every reschedule and cancellation.
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    # The visit: check-in (waiting since), the call's start and end, and why it ended.
    checked_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    call_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    call_ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(32))
    # Where the patient's socket is: which process holds it, or until when they may come back.
    patient_presence: Mapped[str | None] = mapped_column(String(16))
    patient_process: Mapped[str | None] = mapped_column(String(32), index=True)
    # The one socket (connection id) that is the patient's presence: only it may mark them gone.
    patient_connection: Mapped[str | None] = mapped_column(String(32))
    presence_deadline: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    # The process whose relay carries this call's media.
    call_host: Mapped[str | None] = mapped_column(String(32))
    # The patient's device check: can media reach the relay "direct", only through "turn", ...
    connection_check: Mapped[str | None] = mapped_column(String(16))
    # The patient's standing consent (the scopes their latest decisions grant, space-separated)
    # and the chain `seq` of the appointment's latest consent record: rewritten by every decision
    # in its own transaction, so transitions and the relay can check consent on this row.
    patient_consent: Mapped[str] = mapped_column(String(64), default="", server_default="")
    consent_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Duration, per-participant quality averages, forwarding or transcoding (media.stats).
    call_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ConsentText(Base):
    """A published version of the telehealth consent; records keep the version they were shown."""

    __tablename__ = "consent_texts"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_by_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))


class ConsentRecord(Base):
    """One participant's decision on one appointment's call; append-only and hash-chained.

    `seq` orders every record of the installation; `hash` is SHA-256 over the record's fields
    and the previous record's hash, so altering, removing or reordering a record breaks the
    chain (`televisit audit verify`).
    """

    __tablename__ = "consent_records"
    __table_args__ = (
        CheckConstraint("decision IN ('granted', 'declined', 'withdrawn')", name="decision"),
        Index("ix_consent_records_appointment", "appointment_id", "seq"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    appointment_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("appointments.id"))
    # "patient", or a guest's "<role>:<id>" (app.participants).
    participant: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    # Space-separated, sorted: "recording video_visit".
    scopes: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, ForeignKey("consent_texts.version"))
    text_sha256: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ConsentChain(Base):
    """The head of the consent records' hash chain: one row, locked by every append."""

    __tablename__ = "consent_chain"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Recording(Base):
    """A recording of a call: the relay's forwarded packets in one WebM file."""

    __tablename__ = "recordings"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    appointment_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("appointments.id"), index=True
    )
    file_name: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    stop_reason: Mapped[str | None] = mapped_column(String(32))


class GuestStatus(enum.StrEnum):
    INVITED = "invited"  # link made; not in the waiting room
    WAITING = "waiting"  # socket connected with the video visit consent granted
    IN_CALL = "in_call"  # admitted into the running call by the clinician
    LEFT = "left"  # reserved for signaling (a guest out of the call who needs admitting again)
    REMOVED = "removed"  # link closed for good


_GUEST_ROLE_LIST = ", ".join(f"'{r}'" for r in GUEST_ROLES)
_GUEST_STATUS_LIST = ", ".join(f"'{s.value}'" for s in GuestStatus)
_GUEST_SLOTS = ", ".join(str(n) for n in range(1, MAX_GUESTS + 1))
# Partial: a removed guest frees their slot. PostgreSQL and SQLite both know partial indexes.
_ACTIVE_GUEST = text("removed_at IS NULL")


class VisitGuest(Base):
    """A guest of one appointment's visit (an interpreter, a caregiver, a colleague), with a
    link of their own (the patient's derivation: scheduling.visits) and their own consent.

    An active guest holds one of the appointment's MAX_GUESTS slots; the unique index over
    (appointment, slot) of the rows not removed makes the database refuse a third, whatever
    requests race.
    """

    __tablename__ = "visit_guests"
    __table_args__ = (
        CheckConstraint(f"role IN ({_GUEST_ROLE_LIST})", name="role"),
        CheckConstraint(f"status IN ({_GUEST_STATUS_LIST})", name="status"),
        CheckConstraint(f"slot IN ({_GUEST_SLOTS})", name="slot"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
        CheckConstraint(
            "(status = 'removed' AND removed_at IS NOT NULL)"
            " OR (status <> 'removed' AND removed_at IS NULL)",
            name="removed",
        ),
        CheckConstraint(
            "presence IS NULL OR presence IN ('connected', 'reconnecting')", name="presence"
        ),
        Index(
            "uq_visit_guests_active_slot",
            "appointment_id",
            "slot",
            unique=True,
            postgresql_where=_ACTIVE_GUEST,
            sqlite_where=_ACTIVE_GUEST,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    appointment_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("appointments.id"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(16))
    # As the appointment's: the link is derived from the salt and the server's secret.
    link_salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    link_hash: Mapped[str] = mapped_column(String(64), unique=True)
    slot: Mapped[int] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(16), default=GuestStatus.INVITED.value)
    # Where the guest's socket is (as the appointment's patient_* presence columns).
    presence: Mapped[str | None] = mapped_column(String(16))
    process: Mapped[str | None] = mapped_column(String(32), index=True)
    connection: Mapped[str | None] = mapped_column(String(32))
    presence_deadline: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    waiting_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The guest's standing consent (space-separated scopes their latest decisions grant) and
    # the `seq` of their latest record: rewritten by each of their decisions (scheduling.consent).
    consent: Mapped[str] = mapped_column(String(64), default="", server_default="")
    consent_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_by_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    admitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
