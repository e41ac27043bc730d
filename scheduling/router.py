from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import StringConstraints

from app.deps import (
    AuditDep,
    CurrentUser,
    OutboxDep,
    SchedulingStaff,
    SessionDep,
    SettingsDep,
    read_only,
)
from app.metrics import BOOKING_SECONDS, BOOKINGS
from app.validation import UTCInstant
from scheduling import calendar, service, visits
from scheduling.models import Appointment
from scheduling.schemas import (
    AppointmentCreate,
    AppointmentList,
    AppointmentOut,
    AvailabilityBody,
    CancelBody,
    ClinicianList,
    ClinicianOut,
    PatientOut,
    RescheduleBody,
)

router = APIRouter(tags=["scheduling"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
]
StatusFilter = Annotated[
    str | None,
    StringConstraints(pattern=r"^(booked|waiting|in_call|completed|cancelled|no_show)$"),
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def appointment_out(request: Request, appointment: Appointment) -> AppointmentOut:
    token = visits.token_for(request.app.state.link_key, appointment.link_salt)
    return AppointmentOut(
        id=appointment.id,
        status=appointment.status,
        clinician_id=appointment.clinician_id,
        start=appointment.start_at,
        end=appointment.end_at,
        patient=PatientOut(
            name=appointment.patient_name,
            email=appointment.patient_email,
            phone=appointment.patient_phone,
            birth_date=appointment.patient_birth_date,
            timezone=appointment.patient_timezone,
        ),
        reason=appointment.reason,
        visit_url=visits.visit_url(request.app.state.settings.public_base, token),
        cancel_reason=appointment.cancel_reason,
        call_summary=appointment.call_summary,
        created_at=appointment.created_at,
        updated_at=appointment.updated_at,
    )


# Clinicians and availability ---------------------------------------------------------------


@router.get("/clinicians", response_model=ClinicianList)
@read_only
async def list_clinicians(session: SessionDep, _user: CurrentUser) -> ClinicianList:
    clinicians = await service.list_clinicians(session)
    return ClinicianList(items=[ClinicianOut.model_validate(c) for c in clinicians])


@router.get("/clinicians/{clinician_id}/availability", response_model=AvailabilityBody)
@read_only
async def get_availability(
    clinician_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    clinician, availability = await service.clinician_for(
        session, viewer=user, clinician_id=clinician_id
    )
    return service.availability_document(clinician, availability)


@router.put("/clinicians/{clinician_id}/availability", response_model=AvailabilityBody)
async def put_availability(
    clinician_id: uuid.UUID,
    body: AvailabilityBody,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
) -> dict[str, Any]:
    audit.expect("availability.update", "clinician", clinician_id)
    clinician, existing = await service.clinician_for(
        session, viewer=user, clinician_id=clinician_id
    )
    availability = await service.set_availability(
        session, clinician_id=clinician.id, existing=existing, body=body
    )
    return service.availability_document(clinician, availability)


@router.get(
    "/clinicians/{clinician_id}/slots",
    responses={200: {"description": '{"slots": [{"start": ..., "end": ...}]}'}},
)
@read_only
async def list_slots(
    request: Request,
    clinician_id: uuid.UUID,
    start: Annotated[UTCInstant, Query()],
    end: Annotated[UTCInstant, Query()],
    session: SessionDep,
    user: CurrentUser,
) -> Response:
    body = await service.free_slots_json(
        session,
        viewer=user,
        clinician_id=clinician_id,
        start=start,
        end=end,
        now=_now(),
        cache=request.app.state.slot_cache,
    )
    return Response(content=body, media_type="application/json")


# Appointments ------------------------------------------------------------------------------


@router.post(
    "/appointments",
    response_model=AppointmentOut,
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
)
async def create_appointment(
    request: Request,
    body: AppointmentCreate,
    session: SessionDep,
    user: SchedulingStaff,
    audit: AuditDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    started = time.perf_counter()
    event = audit.expect("appointment.create", "appointment")
    try:
        appointment = await service.book(
            session,
            actor=user,
            clinician_id=body.clinician_id,
            start=body.start,
            patient=body.patient,
            reason=body.reason,
            idempotency_key=idempotency_key,
            body_fingerprint=service.fingerprint(body.model_dump(mode="json")),
            link_key=request.app.state.link_key,
            now=_now(),
            notices=request.app.state.notices,
        )
    except Exception as exc:
        BOOKINGS.labels(outcome=getattr(exc, "code", "error")).inc()
        raise
    event.resource_id = str(appointment.id)
    BOOKINGS.labels(outcome="booked").inc()
    BOOKING_SECONDS.observe(time.perf_counter() - started)
    # Serialized here, once: the model is ours, so FastAPI's re-validation would be pure cost.
    return Response(
        appointment_out(request, appointment).model_dump_json(),
        status_code=status.HTTP_201_CREATED,
        media_type="application/json",
    )


@router.get("/appointments", response_model=AppointmentList)
async def list_appointments(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    clinician_id: uuid.UUID | None = None,
    start: Annotated[UTCInstant | None, Query()] = None,
    end: Annotated[UTCInstant | None, Query()] = None,
    status_filter: Annotated[StatusFilter, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> AppointmentList:
    event = audit.expect("appointment.list", "appointment")
    appointments = await service.list_appointments(
        session,
        viewer=user,
        clinician_id=clinician_id,
        start=start,
        end=end,
        status=status_filter,
        limit=limit,
    )
    audit.listed(event, [a.id for a in appointments])
    return AppointmentList(items=[appointment_out(request, a) for a in appointments])


@router.get("/appointments/{appointment_id}", response_model=AppointmentOut)
async def get_appointment(
    request: Request,
    appointment_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
) -> AppointmentOut:
    audit.expect("appointment.read", "appointment", appointment_id)
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    return appointment_out(request, appointment)


@router.post("/appointments/{appointment_id}/cancel", response_model=AppointmentOut)
async def cancel_appointment(
    request: Request,
    appointment_id: uuid.UUID,
    session: SessionDep,
    user: SchedulingStaff,
    audit: AuditDep,
    outbox: OutboxDep,
    body: CancelBody | None = None,
) -> AppointmentOut:
    audit.expect("appointment.cancel", "appointment", appointment_id)
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    cancelled = await service.cancel(
        session, appointment, body.reason if body else None, notices=request.app.state.notices
    )
    # A patient in the waiting room is told at once, once the cancellation is committed.
    outbox.add("appointment.cancelled", cancelled.id, clinician_id=str(cancelled.clinician_id))
    return appointment_out(request, cancelled)


@router.post("/appointments/{appointment_id}/reschedule", response_model=AppointmentOut)
async def reschedule_appointment(
    request: Request,
    appointment_id: uuid.UUID,
    body: RescheduleBody,
    session: SessionDep,
    user: SchedulingStaff,
    audit: AuditDep,
) -> AppointmentOut:
    audit.expect("appointment.reschedule", "appointment", appointment_id)
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    moved = await service.reschedule(
        session, appointment, start=body.start, now=_now(), notices=request.app.state.notices
    )
    return appointment_out(request, moved)


@router.get(
    "/appointments/{appointment_id}/calendar.ics",
    response_class=Response,
    responses={200: {"content": {"text/calendar": {}}}},
)
async def appointment_calendar(
    request: Request,
    appointment_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    settings: SettingsDep,
) -> Response:
    audit.expect("appointment.calendar", "appointment", appointment_id)
    appointment = await service.appointment_for(session, viewer=user, appointment_id=appointment_id)
    clinician = await service.clinician_name(session, appointment.clinician_id)
    token = visits.token_for(request.app.state.link_key, appointment.link_salt)
    body = calendar.invitation(
        appointment,
        clinician_name=clinician,
        visit_url=visits.visit_url(settings.public_base, token),
        domain=settings.public_url.host or "televisit",
    )
    return Response(
        content=body,
        media_type="text/calendar; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="visit-{appointment.id}.ics"'},
    )
