"""Telehealth consent: versioned texts and per-call decisions in an append-only hash chain.

A decision belongs to one appointment's call and one participant. For each scope
(`video_visit`, `recording`) the participant's latest decision naming it is what stands: a
`granted` record grants it, a `declined` or `withdrawn` one does not.

Every record carries `seq` (its place in the installation's chain), `prev_hash` (the hash of
record `seq - 1`) and `hash` = SHA-256 of its canonical fields with `prev_hash`. The chain's
head (`consent_chain`, one row) is locked by each append, so appends are serial and the chain
never forks. `verify_chain` walks it and names the first record that was altered, removed or
reordered; the head catches records cut from the end. A hash chain without an outside anchor
cannot stop a complete rewrite: `televisit audit verify` prints the head to be kept elsewhere.

Each decision also rewrites, in its transaction, the appointment's `patient_consent` (the scopes
the patient's decisions grant) and `consent_seq` (the latest record's `seq`); a guest's
(participant `<role>:<id>`, app.participants) rewrites that guest's row's `consent` and
`consent_seq` instead of `patient_consent`. The appointment's transitions check that column in
their own statement (scheduling.lifecycle), and the relay re-reads both, the call's and its
guests', several times a second (`of_calls`, one query): a committed withdrawal reaches the
call's media whatever becomes of the event announcing it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Select, and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import participants
from app.errors import Conflict
from scheduling import calls, guests
from scheduling.models import Appointment, ConsentChain, ConsentRecord, ConsentText, VisitGuest

SCOPES = ("video_visit", "recording")
GENESIS = "0" * 64
PATIENT = participants.PATIENT


def _guest_id(participant: str) -> uuid.UUID:
    guest_id = participants.parse_key(participant)[1]
    if guest_id is None:
        raise ValueError("consent is the patient's or a guest's")
    return guest_id


class ConsentVersionMismatch(Conflict):
    code = "consent_version_mismatch"
    message = "That consent text is not the current one; read the current text first."


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def current_text(session: AsyncSession) -> ConsentText:
    result = await session.execute(
        select(ConsentText).order_by(ConsentText.version.desc()).limit(1)
    )
    return result.scalar_one()


async def publish_text(
    session: AsyncSession, *, text: str, by: uuid.UUID, now: dt.datetime
) -> ConsentText:
    """A new current version; records made under earlier versions keep theirs."""
    current = await current_text(session)
    published = ConsentText(
        version=current.version + 1,
        text=text,
        sha256=text_hash(text),
        published_at=now,
        published_by_id=by,
    )
    session.add(published)
    await session.flush()
    return published


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()


def record_hash(record: ConsentRecord) -> str:
    fields = {
        "id": str(record.id),
        "seq": record.seq,
        "appointment_id": str(record.appointment_id),
        "participant": record.participant,
        "decision": record.decision,
        "scopes": record.scopes,
        "version": record.version,
        "text_sha256": record.text_sha256,
        "recorded_at": record.recorded_at.astimezone(dt.UTC).isoformat(),
        "ip": record.ip,
        "user_agent": record.user_agent,
        "prev_hash": record.prev_hash,
    }
    return hashlib.sha256(_canonical(fields)).hexdigest()


def scope_text(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


async def record(
    session: AsyncSession,
    *,
    appointment_id: uuid.UUID,
    participant: str,
    decision: str,
    scopes: Sequence[str],
    version: int,
    ip: str | None,
    user_agent: str | None,
    now: dt.datetime,
) -> ConsentRecord:
    """Append a decision made on the current text; 409 if `version` is not the current one."""
    text = await current_text(session)
    if version != text.version:
        raise ConsentVersionMismatch()
    head = (
        await session.execute(select(ConsentChain).where(ConsentChain.id == 1).with_for_update())
    ).scalar_one()
    entry = ConsentRecord(
        id=uuid.uuid4(),
        seq=head.seq + 1,
        appointment_id=appointment_id,
        participant=participant,
        decision=decision,
        scopes=scope_text(scopes),
        version=text.version,
        text_sha256=text.sha256,
        # Stored at microsecond precision on both databases; hashed as stored.
        recorded_at=now,
        ip=ip,
        user_agent=user_agent,
        prev_hash=head.hash,
    )
    entry.hash = record_hash(entry)
    head.seq, head.hash = entry.seq, entry.hash
    session.add(entry)
    await session.flush()
    values: dict[str, Any] = {"consent_seq": entry.seq}
    granted = scope_text((await standing(session, appointment_id, participant)).granted)
    if participant == PATIENT:
        values["patient_consent"] = granted
    else:
        # A guest's decision: their own row's standing consent, in the same transaction.
        await guests.set_consent(session, _guest_id(participant), granted=granted, seq=entry.seq)
    # This also locks the appointment's row until the decision commits: a transition racing
    # it waits, then re-checks its conditions against the row as the decision left it.
    await session.execute(
        update(Appointment).where(Appointment.id == appointment_id).values(**values)
    )
    return entry


@dataclass(frozen=True, slots=True)
class Decision:
    record: ConsentRecord
    standing: Standing
    withdrawal: calls.Withdrawal | None = None  # the patient's video consent no longer stands
    # A guest's video consent no longer stands and they were waiting or in the call: they are
    # out (status `invited`; they must consent and be admitted again).
    guest_left: bool = False


async def take_effect(session: AsyncSession, entry: ConsentRecord, *, now: dt.datetime) -> Decision:
    """What a decision just recorded does, in its transaction: when the patient's consent to
    the video visit no longer stands, their call ends (`completed`) or they leave the waiting
    room (`booked`), before anyone hears of it. A guest's takes only that guest out."""
    after = await standing(session, entry.appointment_id, entry.participant)
    if after.video_visit:
        return Decision(entry, after)
    if entry.participant != PATIENT:
        left = await guests.withdraw(session, _guest_id(entry.participant))
        return Decision(entry, after, guest_left=left)
    return Decision(entry, after, await calls.withdraw(session, entry.appointment_id, now=now))


async def records_of(session: AsyncSession, appointment_id: uuid.UUID) -> Sequence[ConsentRecord]:
    result = await session.execute(
        select(ConsentRecord)
        .where(ConsentRecord.appointment_id == appointment_id)
        .order_by(ConsentRecord.seq)
    )
    return result.scalars().all()


@dataclass(frozen=True, slots=True)
class Standing:
    """Which scopes a participant's latest decisions grant."""

    granted: frozenset[str]

    @property
    def video_visit(self) -> bool:
        return "video_visit" in self.granted

    @property
    def recording(self) -> bool:
        return "recording" in self.granted


def standing_of(records: Iterable[ConsentRecord], participant: str = PATIENT) -> Standing:
    granted: set[str] = set()
    for entry in records:  # oldest first: later decisions override earlier ones
        if entry.participant != participant:
            continue
        for scope in entry.scopes.split():
            if entry.decision == "granted":
                granted.add(scope)
            else:
                granted.discard(scope)
    return Standing(frozenset(granted))


async def standing(
    session: AsyncSession, appointment_id: uuid.UUID, participant: str = PATIENT
) -> Standing:
    return standing_of(await records_of(session, appointment_id), participant)


@dataclass(frozen=True, slots=True)
class CallConsent:
    """What the appointment's row says: its status, the patient's standing, the latest `seq`;
    and what each of its guests' rows says (every guest not removed, by participant key)."""

    status: str
    standing: Standing
    seq: int
    guests: dict[str, guests.GuestConsent] = field(default_factory=dict)


async def of_calls(
    session: AsyncSession | AsyncConnection, appointment_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, CallConsent]:
    """The standing consent of these appointments and of their guests: one query by primary key
    (the appointments, left-joined to their guests not removed), cheap enough to ask often."""
    if not appointment_ids:
        return {}
    return calls_consent(await session.execute(calls_consent_query(appointment_ids)))


# One row of `calls_consent_query`: the appointment's, then a guest's (all None: no guest).
_Row = tuple[uuid.UUID, str, str, int, uuid.UUID | None, str | None, str | None, str | None, int]


def calls_consent_query(appointment_ids: Collection[uuid.UUID]) -> Select[*_Row]:
    """`of_calls`'s one statement, for a caller that runs it on a connection of its own."""
    return (
        select(
            Appointment.id,
            Appointment.status,
            Appointment.patient_consent,
            Appointment.consent_seq,
            VisitGuest.id,
            VisitGuest.role,
            VisitGuest.status,
            VisitGuest.consent,
            VisitGuest.consent_seq,
        )
        .outerjoin(
            VisitGuest,
            and_(VisitGuest.appointment_id == Appointment.id, VisitGuest.removed_at.is_(None)),
        )
        .where(Appointment.id.in_(list(appointment_ids)))
    )


def calls_consent(rows: Iterable[Row[*_Row]]) -> dict[uuid.UUID, CallConsent]:
    """`calls_consent_query`'s rows, by appointment."""
    found: dict[uuid.UUID, CallConsent] = {}
    for row in rows:
        call_id, status, granted, seq, guest_id, role, guest_status, guest_granted, guest_seq = row
        call = found.get(call_id)
        if call is None:
            call = found[call_id] = CallConsent(status, Standing(frozenset(granted.split())), seq)
        if guest_id is not None:
            assert role is not None
            assert guest_status is not None
            assert guest_granted is not None
            key = participants.guest_key(role, guest_id)
            call.guests[key] = guests.GuestConsent(
                key, guest_status, frozenset(guest_granted.split()), guest_seq
            )
    return found


@dataclass(frozen=True, slots=True)
class ChainReport:
    records: int
    head_seq: int
    head_hash: str
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


async def verify_chain(session: AsyncSession, *, batch: int = 1000) -> ChainReport:
    """Walk every record in `seq` order; name the first one that does not fit."""
    head = (await session.execute(select(ConsentChain).where(ConsentChain.id == 1))).scalar_one()
    expected_seq, prev_hash, count = 1, GENESIS, 0
    last_seq = 0
    while True:
        rows = (
            await session.execute(
                select(ConsentRecord)
                .where(ConsentRecord.seq > last_seq)
                .order_by(ConsentRecord.seq)
                .limit(batch)
            )
        ).scalars()
        page = list(rows)
        if not page:
            break
        for entry in page:
            count += 1
            if entry.seq != expected_seq:
                problem = (
                    f"record seq {expected_seq} is missing (next found: seq {entry.seq}, "
                    f"id {entry.id})"
                )
                return ChainReport(count, head.seq, head.hash, problem)
            if entry.prev_hash != prev_hash:
                problem = (
                    f"record seq {entry.seq} (id {entry.id}) does not follow record "
                    f"seq {entry.seq - 1}: removed, reordered or altered before it"
                )
                return ChainReport(count, head.seq, head.hash, problem)
            if record_hash(entry) != entry.hash:
                problem = f"record seq {entry.seq} (id {entry.id}) was altered"
                return ChainReport(count, head.seq, head.hash, problem)
            prev_hash, expected_seq, last_seq = entry.hash, entry.seq + 1, entry.seq
    if head.seq != last_seq or head.hash != prev_hash:
        problem = (
            f"the chain ends at seq {last_seq} but its head says seq {head.seq}: "
            "records were removed from the end, or the head was altered"
        )
        return ChainReport(count, head.seq, head.hash, problem)
    return ChainReport(count, head.seq, head.hash)
