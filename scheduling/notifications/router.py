"""`GET /api/v1/appointments/{id}/notifications`: what was sent to the patient (and to the
visit's guests: `participant_id`), and how."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.deps import CurrentUser, SessionDep, read_only
from scheduling import service
from scheduling.notifications import outbox
from scheduling.notifications.models import Kind, State
from scheduling.notifications.schemas import NotificationList, NotificationOut

router = APIRouter(tags=["scheduling"])

# A notification claimed or being sent is still "queued" to the reader.
_SHOWN = {
    State.QUEUED.value: "queued",
    State.CLAIMED.value: "queued",
    State.SENDING.value: "queued",
    State.SENT.value: "sent",
    State.FAILED.value: "failed",
}


@router.get("/appointments/{appointment_id}/notifications", response_model=NotificationList)
@read_only
async def appointment_notifications(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> NotificationList:
    """Staff who may see the appointment; 404 for anyone else. Not audited: it shows no
    patient data (no address, no text), so the scheduler's page may read it freely."""
    await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    rows = await outbox.of_appointment(session, appointment_id)
    return NotificationList(
        items=[
            NotificationOut(
                kind=row.kind,  # type: ignore[arg-type]  # the table's CHECK holds it to these
                channel=row.channel,  # type: ignore[arg-type]  # likewise
                status=_SHOWN[row.status],  # type: ignore[arg-type]  # the values above
                attempts=row.attempts,
                sent_at=row.sent_at,
                due_at=row.due_at,
                hours=row.hours if row.kind == Kind.REMINDER.value else None,
                participant_id=row.participant_id,
            )
            for row in rows
        ]
    )
