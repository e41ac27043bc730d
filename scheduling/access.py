"""Who reaches a visit over HTTP: the patient or a guest by their link, staff by role (shared by
routers)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import Audit
from app.auth.models import Role
from app.auth.principal import Principal
from app.errors import Forbidden
from app.ratelimit import RateLimiter
from scheduling import service
from scheduling.guests import VisitLink
from scheduling.models import Appointment

# The patient's second factor, once given (POST /visits/{token}/verify).
Verification = Annotated[str | None, Header(alias="X-Visit-Verification", max_length=200)]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rate_limits(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limits
    return limiter


async def link_of(
    request: Request, session: AsyncSession, token: str, verification: str | None
) -> VisitLink:
    """What a visit link opens (the patient's or a guest's), once the patient's second factor
    (if any) is given."""
    settings = request.app.state.settings
    return await service.open_link(
        session,
        token=token,
        now=now(),
        hours_after=settings.visit_link_hours_after,
        birth_date_check=settings.visit_birth_date_check,
        link_key=request.app.state.link_key,
        verification=verification,
    )


async def clinical_access(
    session: AsyncSession, user: Principal, appointment_id: uuid.UUID
) -> Appointment:
    """Consents and recordings: admins and the appointment's clinician; schedulers never."""
    if user.role == Role.SCHEDULER:
        raise Forbidden()
    return await service.appointment_for(session, viewer=user, appointment_id=appointment_id)


async def clinical_listing(
    session: AsyncSession, user: Principal, audit: Audit, action: str, appointment_id: uuid.UUID
) -> Appointment:
    """A list of the appointment's clinical records (`action`, audited with what it returns)."""
    audit.expect(action, "appointment", appointment_id)
    return await clinical_access(session, user, appointment_id)
