"""Consent over HTTP for staff: an appointment's consent records and the consent texts."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.deps import AdminUser, AuditDep, CurrentUser, SessionDep, read_only
from scheduling import consent
from scheduling.access import clinical_listing, now
from scheduling.visit_schemas import (
    ConsentRecordDetail,
    ConsentRecordList,
    ConsentTextBody,
    ConsentTextOut,
    scopes_of,
)

router = APIRouter(tags=["consent"])


@router.get("/appointments/{appointment_id}/consents", response_model=ConsentRecordList)
async def list_consents(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> ConsentRecordList:
    """Oldest first. Admins and the appointment's clinician; schedulers see no consent records."""
    appointment = await clinical_listing(session, user, audit, "consent.list", appointment_id)
    records = await consent.records_of(session, appointment.id)
    return ConsentRecordList(
        items=[
            ConsentRecordDetail(
                id=entry.id,
                participant=entry.participant,
                decision=entry.decision,  # type: ignore[arg-type]  # checked by the database
                scopes=scopes_of(entry),
                version=entry.version,
                text_sha256=entry.text_sha256,
                recorded_at=entry.recorded_at,
                ip=entry.ip,
                user_agent=entry.user_agent,
            )
            for entry in records
        ]
    )


@router.get("/consent-texts/current", response_model=ConsentTextOut)
@read_only
async def current_consent_text(session: SessionDep, _user: CurrentUser) -> ConsentTextOut:
    text = await consent.current_text(session)
    return ConsentTextOut(
        version=text.version, text=text.text, sha256=text.sha256, published_at=text.published_at
    )


@router.post("/consent-texts", response_model=ConsentTextOut, status_code=status.HTTP_201_CREATED)
async def publish_consent_text(
    body: ConsentTextBody, session: SessionDep, admin: AdminUser, audit: AuditDep
) -> ConsentTextOut:
    """A new version becomes current; decisions made under earlier versions keep theirs."""
    event = audit.expect("consent_text.publish", "consent_text")
    text = await consent.publish_text(session, text=body.text, by=admin.id, now=now())
    event.resource_id = str(text.version)
    return ConsentTextOut(
        version=text.version, text=text.text, sha256=text.sha256, published_at=text.published_at
    )
