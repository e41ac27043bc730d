"""The WebSocket endpoints: the patient's visit and the clinician's console."""

from __future__ import annotations

import asyncio
import datetime as dt
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app.auth.models import Role
from app.auth.principal import Principal
from app.config import Settings
from app.deps import principal_for_token
from app.errors import NotAuthenticated
from scheduling import calls, consent
from scheduling import service as scheduling
from signaling import messages
from signaling.hub import Signaling
from signaling.sockets import ClinicSession, PatientSession, close_with

router = APIRouter()
AUTH_SECONDS = 5.0


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
            appointment = await scheduling.open_visit(
                session,
                token=token,
                now=now,
                hours_after=settings.visit_link_hours_after,
                birth_date_check=settings.visit_birth_date_check,
                link_key=app.state.link_key,
                verification=verification,
            )
            standing = await consent.standing(session, appointment.id)
    except scheduling.VisitNotFound as exc:
        await close_with(websocket, messages.error(exc.code, exc.message), 4404)
        return
    except scheduling.VisitClosed as exc:
        await close_with(websocket, messages.error(exc.code, exc.message), 4410)
        return
    except scheduling.VerificationRequired as exc:
        await close_with(websocket, messages.error(exc.code, exc.message), 4401)
        return
    if not standing.video_visit:
        await close_with(
            websocket,
            messages.error("consent_required", "Accept the consent to the video visit first."),
            4403,
        )
        return
    checked_in = await calls.check_in(
        app.state.db, appointment.id, process=signaling.process_id, now=now
    )
    if checked_in is None:
        await close_with(websocket, messages.ended(appointment.status), 1000)
        return
    visit = PatientSession(websocket, signaling, checked_in)
    await visit.attach()
    try:
        await visit.serve(visit.handle)
    finally:
        await visit.detach()
        if not visit.finished:
            await signaling.patient_dropped(checked_in)


async def _authenticate(websocket: WebSocket) -> Principal:
    """The console's first message must be `auth` with a clinician's bearer token."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), AUTH_SECONDS)
        first = messages.parse_clinic(text)
    except (TimeoutError, WebSocketDisconnect, messages.InvalidMessage, KeyError, RuntimeError):
        raise NotAuthenticated('Send {"type": "auth", "token": ...} first.') from None
    if not isinstance(first, messages.Auth):
        raise NotAuthenticated('Send {"type": "auth", "token": ...} first.')
    return await principal_for_token(websocket.app.state, first.token)


@router.websocket("/ws/clinic")
async def clinic_socket(websocket: WebSocket) -> None:
    app = websocket.app
    signaling: Signaling = app.state.signaling
    if not _origin_allowed(websocket, app.state.settings):
        await websocket.close(4403)
        return
    await websocket.accept()
    try:
        clinician = await _authenticate(websocket)
    except NotAuthenticated as exc:
        await close_with(websocket, messages.error("not_authenticated", exc.message), 4401)
        return
    if clinician.role != Role.CLINICIAN:
        await close_with(
            websocket, messages.error("forbidden", "Only clinicians run a consult queue."), 4403
        )
        return
    console = ClinicSession(websocket, signaling, clinician)
    await console.attach()
    try:
        await console.serve(console.handle)
    finally:
        await console.detach()
