"""The appointment's state machine: one table, each transition one conditional statement.

Every status change, over HTTP (cancel, reschedule, a consent withdrawal), from a socket
(check-in, leaving the queue, admit, undoing an admission, end, no-show) or from the sweeper (a
patient's grace period run out), is a `Transition` of the table below, applied by `move` (or by
`statement`, for the sweeper's rows at once) as
``UPDATE appointments SET status = <target>, ... WHERE id = :id AND status IN (<sources>)
AND <what it depends on> RETURNING ...``. Of two racing changes one wins; the other finds the
row moved on and gets nothing back (409 `invalid_transition` over HTTP, an error message on a
socket).

What a transition depends on is a condition of that same statement. Check-in and admission
depend on the patient's consent to the video visit: the statement asks the appointment's own
`patient_consent` column, which every consent decision rewrites in its transaction (see
scheduling.consent). It is the row's own column, not a subquery over the consent records,
because of how PostgreSQL runs UPDATE under READ COMMITTED: a statement that waited for another
transaction's lock on the row re-checks its WHERE against the row's new version, but reads every
other table (a subquery over consent_records included) as of its own start. A withdrawal that
commits while an admission waits would be missed by a subquery; the column is re-read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, Update, literal, update
from sqlalchemy.ext.asyncio import AsyncSession

from scheduling.models import Appointment, Status

VIDEO_VISIT = "video_visit"


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    sources: frozenset[Status]
    target: Status
    # Applies only while the patient's latest `video_visit` decision is `granted`.
    needs_consent: bool = False


BOOKED, WAITING, IN_CALL = Status.BOOKED, Status.WAITING, Status.IN_CALL

CHECK_IN = Transition("check_in", frozenset({BOOKED}), WAITING, needs_consent=True)
# The patient's `leave`, a withdrawal of their consent, or their grace period run out.
LEAVE_QUEUE = Transition("leave_queue", frozenset({WAITING}), BOOKED)
ADMIT = Transition("admit", frozenset({WAITING}), IN_CALL, needs_consent=True)
# An admission whose call could not be set up is undone.
UNADMIT = Transition("unadmit", frozenset({IN_CALL}), WAITING)
# The clinician's end, a withdrawal, the relay's, or the patient's grace period run out.
END = Transition("end", frozenset({IN_CALL}), Status.COMPLETED)
NO_SHOW = Transition("no_show", frozenset({BOOKED, WAITING}), Status.NO_SHOW)
CANCEL = Transition("cancel", frozenset({BOOKED, WAITING}), Status.CANCELLED)
# Not a change of status: a booked appointment moves to another slot.
RESCHEDULE = Transition("reschedule", frozenset({BOOKED}), BOOKED)

TRANSITIONS: tuple[Transition, ...] = (
    CHECK_IN,
    LEAVE_QUEUE,
    ADMIT,
    UNADMIT,
    END,
    NO_SHOW,
    CANCEL,
    RESCHEDULE,
)


def targets(source: Status) -> frozenset[Status]:
    """Every status an appointment in `source` may move to (the table of docs/design.md)."""
    return frozenset(t.target for t in TRANSITIONS if source in t.sources and t.target != source)


def leading_to(target: Status, source: Status) -> Transition | None:
    """The transition that changes `source` into `target`, if the table has one."""
    return next(
        (t for t in TRANSITIONS if t.target == target != source and source in t.sources), None
    )


def names_scope(scopes: SQLColumnExpression[str], scope: str) -> ColumnElement[bool]:
    """`scopes` (space-separated names) holds `scope`."""
    return (literal(" ") + scopes + literal(" ")).like(f"% {scope} %")


def video_consent_stands() -> ColumnElement[bool]:
    return names_scope(Appointment.patient_consent, VIDEO_VISIT)


def allows(transition: Transition) -> list[ColumnElement[bool]]:
    """The conditions under which `transition` applies to a row (for bulk statements too)."""
    where: list[ColumnElement[bool]] = [
        Appointment.status.in_(sorted(s.value for s in transition.sources))
    ]
    if transition.needs_consent:
        where.append(video_consent_stands())
    return where


class NotInTable(ValueError):
    """A status change that is not one of the table's transitions: never applied."""


def statement(transition: Transition, *where: ColumnElement[bool], **values: Any) -> Update:
    """The conditional UPDATE of `transition` over the rows `where` selects."""
    if transition not in TRANSITIONS:
        raise NotInTable(f"{transition.name} is not a transition of the appointment's table")
    if "status" in values:
        raise NotInTable("the status is the transition's target, never a value of its own")
    return (
        update(Appointment)
        .where(*allows(transition), *where)
        .values(status=transition.target.value, **values)
    )


async def move(
    session: AsyncSession,
    transition: Transition,
    appointment_id: uuid.UUID,
    *where: ColumnElement[bool],
    **values: Any,
) -> Appointment | None:
    """Apply `transition` to one appointment; None when its row does not allow it (any more)."""
    result = await session.execute(
        statement(transition, Appointment.id == appointment_id, *where, **values)
        .returning(Appointment)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()
