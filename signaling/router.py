"""The WebSocket endpoints: the patient's visit and the clinician's console.

A patient checks in from `TELEVISIT_CHECKIN_MINUTES_BEFORE` the visit's start; earlier, the
socket gets `{"type":"error","code":"too_early","opens_at"}` and is closed with 4425.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app.auth.models import Role
from app.auth.principal import Principal
from app.auth.tokens import TokenClaims
from app.config import Settings
from app.db import Database
from app.deps import verified_claims
from app.errors import NotAuthenticated
from scheduling import calls, consent, guest_calls, lifecycle
from scheduling import service as scheduling
from scheduling.guests import VisitLink
from scheduling.models import Appointment, GuestStatus, Status
from signaling import messages
from signaling.hub import Signaling
from signaling.sockets import (
    ClinicSession,
    GuestSession,
    PatientSession,
    VisitorSession,
    close_with,
)

router = APIRouter()
CONSENT_REQUIRED = messages.error(
    "consent_required", "Accept the consent to the video visit first."
)
AUTH_SECONDS = 5.0
TOO_EARLY = 4425


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers send Origin; a page on another site must not open our sockets."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: apps and tests authenticate by token alone
    allowed = {settings.public_base, *settings.allowed_origins}
    parts = urlsplit(origin)
    normalized = f"{parts.scheme}://{parts.netloc}"
    host = websocket.headers.get("host")
    same_host = host is not None and parts.netloc == host
    return normalized in {a.rstrip("/") for a in allowed} or same_host


@router.websocket("/ws/visits/{token}")
async def patient_socket(websocket: WebSocket, token: str, verification: str | None = None) -> None:
    """The patient's socket, or a guest's: the same link rules, each with their own consent."""
    app = websocket.app
    settings: Settings = app.state.settings
    signaling: Signaling = app.state.signaling
    if not _origin_allowed(websocket, settings):
        await websocket.close(4403)
        return
    await websocket.accept()
    now = dt.datetime.now(dt.UTC)
    try:
        async with app.state.db.session(write=False) as session:
            link = await scheduling.open_link(
                session,
                token=token,
                now=now,
                hours_after=settings.visit_link_hours_after,
                birth_date_check=settings.visit_birth_date_check,
                link_key=app.state.link_key,
                verification=verification,
            )
            if link.guest is None:
                consented = (await consent.standing(session, link.appointment.id)).video_visit
            else:
                consented = lifecycle.VIDEO_VISIT in link.guest.consent.split()
    except scheduling.VisitNotFound as exc:
        await close_with(websocket, messages.error(exc.code, exc.message), 4404)
        return
    except scheduling.VisitClosed as exc:
        await close_with(websocket, messages.error(exc.code, exc.message), 4410)
        return
    except scheduling.VerificationRequired as exc:
        await close_with(websocket, messages.error(exc.code, exc.message), 4401)
        return
    if not consented:
        await close_with(websocket, CONSENT_REQUIRED, 4403)
        return
    window = dt.timedelta(minutes=settings.checkin_minutes_before)
    db: Database = app.state.db
    visit: VisitorSession
    if link.guest is None:
        visit = PatientSession(websocket, signaling, link.appointment)
        refuse = partial(_refuse_check_in, websocket, db, link.appointment, now=now, window=window)
    else:
        visit = GuestSession(websocket, signaling, link.appointment, link.guest)
        refuse = partial(_refuse_guest, websocket, db, link, now=now, window=window)
    # Known to this process before the row names it (see Signaling.reconcile).
    visit.here()
    try:
        checked_in = await visit.check_in(now=now, window=window)
    except BaseException:
        visit.gone()
        raise
    if not checked_in:
        visit.gone()
        await refuse()
        return
    try:
        await visit.attach()
        await visit.serve(visit.handle)
    finally:
        visit.gone()
        await visit.detach()
        if not visit.finished:
            await visit.dropped()


async def _refuse_guest(
    websocket: WebSocket,
    db: Database,
    link: VisitLink,
    *,
    now: dt.datetime,
    window: dt.timedelta,
) -> None:
    """Why a guest's check-in did not apply, read again: removed meanwhile, their consent
    withdrawn meanwhile, or the visit's own reasons (as the patient's)."""
    assert link.guest is not None
    current = await guest_calls.get(db, link.guest.id)
    if current is None or current.status == GuestStatus.REMOVED:
        removed = messages.error("participant_removed", "You were removed from this visit.")
        await close_with(websocket, removed, 4410)
    elif lifecycle.VIDEO_VISIT not in current.consent.split():
        await close_with(websocket, CONSENT_REQUIRED, 4403)
    else:
        await _refuse_check_in(websocket, db, link.appointment, now=now, window=window)


async def _refuse_check_in(
    websocket: WebSocket,
    db: Database,
    appointment: Appointment,
    *,
    now: dt.datetime,
    window: dt.timedelta,
) -> None:
    """Why the check-in did not apply, read again (the visit may have changed meanwhile)."""
    current = await calls.get(db, appointment.id) or appointment
    if current.status == Status.BOOKED:
        opens_at = current.start_at - window
        if now < opens_at:
            await close_with(
                websocket,
                {
                    **messages.error(
                        "too_early", "The waiting room opens shortly before the visit."
                    ),
                    "opens_at": _rfc3339(opens_at),
                },
                TOO_EARLY,
            )
            return
        # Booked, open, and still refused: the consent was withdrawn meanwhile.
        await close_with(websocket, CONSENT_REQUIRED, 4403)
        return
    await close_with(websocket, messages.ended(current.status), 1000)


async def _verify(state: Any, token: str) -> tuple[Principal, TokenClaims]:
    """The active staff member a token of an open session names, and the token's claims (its
    expiry, its session)."""
    return await verified_claims(state, token)


async def _authenticate(websocket: WebSocket) -> tuple[Principal, TokenClaims]:
    """The console's first message must be `auth` with a clinician's bearer token."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), AUTH_SECONDS)
        first = messages.parse_clinic(text)
    except (TimeoutError, WebSocketDisconnect, messages.InvalidMessage, KeyError, RuntimeError):
        raise NotAuthenticated('Send {"type": "auth", "token": ...} first.') from None
    if not isinstance(first, messages.Auth):
        raise NotAuthenticated('Send {"type": "auth", "token": ...} first.')
    return await _verify(websocket.app.state, first.token)


@router.websocket("/ws/clinic")
async def clinic_socket(websocket: WebSocket) -> None:
    app = websocket.app
    signaling: Signaling = app.state.signaling
    if not _origin_allowed(websocket, app.state.settings):
        await websocket.close(4403)
        return
    await websocket.accept()
    try:
        clinician, claims = await _authenticate(websocket)
    except NotAuthenticated as exc:
        await close_with(websocket, messages.error("not_authenticated", exc.message), 4401)
        return
    if clinician.role != Role.CLINICIAN:
        await close_with(
            websocket, messages.error("forbidden", "Only clinicians run a consult queue."), 4403
        )
        return
    console = ClinicSession(
        websocket,
        signaling,
        clinician,
        token_expires_at=claims.expires_at,
        session_id=claims.session_id,
        verify=lambda token: _verify(app.state, token),
    )
    try:
        await console.attach()
        await console.serve(console.handle)
    finally:
        await console.detach()
