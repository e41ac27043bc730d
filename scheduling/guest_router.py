"""Guests of a visit over HTTP: `POST/GET /appointments/{id}/participants`, `DELETE …/{guest}`.

The scheduler, admins and the appointment's clinician (anyone else: 404, as for the appointment
itself). Every read and change is audited; a removal closes the guest's link at once (the event
`guest.removed` tells the live side to close their socket).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.audit import PendingEvent
from app.deps import AuditDep, CurrentUser, OutboxDep, SessionDep, SettingsDep
from scheduling import guests, service, visits
from scheduling.access import now
from scheduling.models import GuestStatus, VisitGuest
from scheduling.notifications import outbox as notifications
from scheduling.schemas import GuestCreate, GuestList, GuestOut

router = APIRouter(tags=["guests"])


def guest_out(request: Request, guest: VisitGuest) -> GuestOut:
    url = None
    if guest.removed_at is None:
        token = guests.token_of(guest, request.app.state.link_key)
        url = visits.visit_url(request.app.state.settings.public_base, token)
    return GuestOut(
        id=guest.id,
        appointment_id=guest.appointment_id,
        role=guest.role,  # type: ignore[arg-type]  # the table's CHECK holds it to these
        name=guest.name,
        email=guest.email,
        phone=guest.phone,
        status=guest.status,
        visit_url=url,
        created_at=guest.created_at,
        admitted_at=guest.admitted_at,
        removed_at=guest.removed_at,
    )


def _about(event: PendingEvent, appointment_id: uuid.UUID, role: str) -> None:
    """The audit event names the appointment and the guest's role (never their name)."""
    event.details = {"appointment_id": str(appointment_id), "role": role}


@router.post(
    "/appointments/{appointment_id}/participants",
    response_model=GuestOut,
    status_code=status.HTTP_201_CREATED,
)
async def add_participant(
    request: Request,
    appointment_id: uuid.UUID,
    body: GuestCreate,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    settings: SettingsDep,
    events: OutboxDep,
) -> GuestOut:
    """A guest with a link of their own; 409 `participant_limit` past two, 409 `visit_closed`
    once the visit is cancelled, completed, a no-show or its link window has passed."""
    event = audit.expect("guest.add", "visit_guest")
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    at = now()
    guests.check_open(
        appointment,
        now=at,
        link_closes_at=service.link_closes_at(appointment, settings.visit_link_hours_after),
    )
    guest = await guests.add(
        session,
        appointment=appointment,
        role=body.role,
        name=body.name,
        email=body.email,
        phone=body.phone,
        actor_id=user.id,
        link_key=request.app.state.link_key,
        now=at,
    )
    await notifications.guest_invited(
        session, request.app.state.notices, appointment, guest, now=at
    )
    event.resource_id = str(guest.id)
    _about(event, appointment.id, guest.role)
    events.add(
        "guest.added",
        appointment.id,
        participant_id=str(guest.id),
        participant=guests.key_of(guest),
        clinician_id=str(appointment.clinician_id),
    )
    return guest_out(request, guest)


@router.get("/appointments/{appointment_id}/participants", response_model=GuestList)
async def list_participants(
    request: Request,
    appointment_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    include_removed: Annotated[bool, Query()] = False,
) -> GuestList:
    """The appointment's guests in the order they were added (removed ones only if asked)."""
    event = audit.expect("guest.list", "appointment", appointment_id)
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    found = await guests.list_guests(session, appointment.id, include_removed=include_removed)
    audit.listed(event, [g.id for g in found])
    return GuestList(items=[guest_out(request, g) for g in found])


@router.delete(
    "/appointments/{appointment_id}/participants/{participant_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
async def remove_participant(
    appointment_id: uuid.UUID,
    participant_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    events: OutboxDep,
) -> Response:
    """The guest's link closes at once (410 `visit_closed`; their socket is closed, 4410)."""
    event = audit.expect("guest.remove", "visit_guest", participant_id)
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    before = await guests.get(session, appointment_id=appointment.id, guest_id=participant_id)
    # Whether the others in the call are to be told they left (read before the removal).
    was_in_call = before is not None and before.status == GuestStatus.IN_CALL.value
    guest = await guests.remove(
        session, appointment_id=appointment.id, guest_id=participant_id, now=now()
    )
    await notifications.guest_removed(session, guest.id)
    _about(event, appointment.id, guest.role)
    events.add(
        "guest.removed",
        appointment.id,
        participant_id=str(guest.id),
        participant=guests.key_of(guest),
        clinician_id=str(appointment.clinician_id),
        was_in_call=was_in_call,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
