"""The patient's visit over HTTP (the link, the second factor, consent) and consent records."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Header, Request, status
from fastapi.responses import FileResponse
from sqlalchemy import select

from app.auth.models import Role
from app.auth.principal import Principal
from app.deps import (
    AdminUser,
    AuditDep,
    CurrentUser,
    OutboxDep,
    SessionDep,
    SettingsDep,
    client_address,
    read_only,
)
from app.errors import Forbidden, NotFound, ServiceBusy, ValidationFailed
from app.ratelimit import Policy, RateLimiter
from scheduling import consent, service, visits
from scheduling.models import Appointment, ConsentRecord, Recording
from scheduling.visit_schemas import (
    ClinicianName,
    ConsentBody,
    ConsentOut,
    ConsentRecordDetail,
    ConsentRecordList,
    ConsentRecordOut,
    ConsentTextBody,
    ConsentTextOut,
    RecordingList,
    RecordingOut,
    Scope,
    Sdp,
    VerifyBody,
    VerifyOut,
    VisitOut,
)
from signaling.errors import SignalingError
from signaling.ice import ice_servers

router = APIRouter()
Verification = Annotated[str | None, Header(alias="X-Visit-Verification", max_length=200)]

# Per visit link, whatever the address (docs/reliability.md, "Abuse"). Date-of-birth guesses:
# the link is what is attacked, so its guesses are counted from every address together, and
# the right date forgives them. Consent writes and device checks: a patient needs a handful;
# a device check holds one of the relay's 50 probe slots for 20 s, so one link holds at most 5.
VERIFY_GUESSES = Policy("visit-verify", "5/15 minutes;20/day")
CONSENT_WRITES = Policy("visit-consent", "10/minute;60/hour")
CONNECTION_TESTS = Policy("visit-connection-test", "5/minute;30/hour")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _limits(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limits
    return limiter


async def _visit(
    request: Request, session: SessionDep, token: str, verification: str | None
) -> Appointment:
    settings = request.app.state.settings
    return await service.open_visit(
        session,
        token=token,
        now=_now(),
        hours_after=settings.visit_link_hours_after,
        birth_date_check=settings.visit_birth_date_check,
        link_key=request.app.state.link_key,
        verification=verification,
    )


@router.get("/visits/{token}", response_model=VisitOut, tags=["visits"])
@read_only
async def get_visit(
    request: Request, token: str, session: SessionDep, verification: Verification = None
) -> VisitOut:
    """What the patient's page shows. Changes nothing: mail scanners prefetch links."""
    appointment = await _visit(request, session, token, verification)
    text = await consent.current_text(session)
    standing = await consent.standing(session, appointment.id)
    return VisitOut(
        appointment_id=appointment.id,
        clinician=ClinicianName(
            name=await service.clinician_name(session, appointment.clinician_id)
        ),
        start=appointment.start_at,
        end=appointment.end_at,
        status=appointment.status,
        consent=ConsentOut(version=text.version, text=text.text, scopes=list(consent.SCOPES)),  # type: ignore[arg-type]  # the two scope names
        consented=standing.video_visit,
        consented_recording=standing.recording,
        birth_date_check=service.needs_verification(
            appointment, birth_date_check=request.app.state.settings.visit_birth_date_check
        ),
        ice_servers=ice_servers(
            request.app.state.settings, visit_end=appointment.end_at, now=_now()
        ),
    )


@router.post("/visits/{token}/connection-test", response_model=Sdp, tags=["visits"])
@read_only
async def connection_test(
    request: Request,
    token: str,
    body: Sdp,
    session: SessionDep,
    verification: Verification = None,
) -> Sdp:
    """The device check: a short-lived peer connection answers, so the page can tell whether
    media reaches the relay directly or only through TURN."""
    await _visit(request, session, token, verification)
    await _limits(request).enforce(CONNECTION_TESTS, visits.token_hash(token))
    relay = request.app.state.signaling.media
    if relay is None:
        raise ServiceBusy("No media relay runs here.")
    try:
        answer = await relay.connection_test(body.sdp)
    except SignalingError as exc:
        if exc.code == "busy":
            raise ServiceBusy(exc.message, headers={"Retry-After": "5"}) from None
        raise ValidationFailed(exc.message, code=exc.code) from None
    return Sdp(sdp=answer)


@router.post("/visits/{token}/verify", response_model=VerifyOut, tags=["visits"])
@read_only
async def verify_visit(
    request: Request, token: str, body: VerifyBody, session: SessionDep, settings: SettingsDep
) -> VerifyOut:
    """The practice's second factor: the patient's date of birth, throttled per link."""
    now = _now()
    appointment = await service.find_visit(
        session, token=token, now=now, hours_after=settings.visit_link_hours_after
    )
    limiter, link = _limits(request), visits.token_hash(token)
    await limiter.enforce(VERIFY_GUESSES, link)
    if (
        appointment.patient_birth_date is not None
        and appointment.patient_birth_date != body.birth_date
    ):
        raise service.VerificationRequired(
            "That date of birth does not match.", code="verification_failed"
        )
    await limiter.clear(VERIFY_GUESSES, link)
    proof = visits.proof_for(request.app.state.link_key, appointment.link_hash, now)
    return VerifyOut(verification=proof, expires_in=visits.PROOF_SECONDS)


@router.post(
    "/visits/{token}/consent",
    response_model=ConsentRecordOut,
    status_code=status.HTTP_201_CREATED,
    tags=["visits"],
)
async def record_consent(
    request: Request,
    token: str,
    body: ConsentBody,
    session: SessionDep,
    outbox: OutboxDep,
    verification: Verification = None,
) -> ConsentRecordOut:
    """The patient's decision for this appointment's call. A withdrawal takes effect at once."""
    appointment = await _visit(request, session, token, verification)
    await _limits(request).enforce(CONSENT_WRITES, visits.token_hash(token))
    now = _now()
    entry = await consent.record(
        session,
        appointment_id=appointment.id,
        participant=consent.PATIENT,
        decision=body.decision,
        scopes=body.scopes,
        version=body.version,
        ip=client_address(request),
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        now=now,
    )
    decided = await consent.take_effect(session, entry, now=now)
    standing, withdrawal = decided.standing, decided.withdrawal
    # Committed first: the call already ended, or the patient already left the queue. The event
    # only hurries the news along; the relay re-reads the consent itself (media.gate).
    outbox.add(
        "consent.recorded",
        appointment.id,
        participant=consent.PATIENT,
        decision=entry.decision,
        scopes=entry.scopes.split(),
        video_visit=standing.video_visit,
        recording=standing.recording,
        seq=entry.seq,
        clinician_id=str(appointment.clinician_id),
        ended=withdrawal is not None and withdrawal.ended is not None,
        left_queue=withdrawal is not None and withdrawal.left_queue is not None,
    )
    return _record_out(entry)


def _scopes(entry: ConsentRecord) -> list[Scope]:
    return cast(list[Scope], entry.scopes.split())


def _record_out(entry: ConsentRecord) -> ConsentRecordOut:
    return ConsentRecordOut(
        id=entry.id,
        decision=entry.decision,  # type: ignore[arg-type]  # checked by the database
        scopes=_scopes(entry),
        version=entry.version,
        recorded_at=entry.recorded_at,
    )


@router.get(
    "/appointments/{appointment_id}/consents", response_model=ConsentRecordList, tags=["consent"]
)
async def list_consents(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> ConsentRecordList:
    """Oldest first. Admins and the appointment's clinician; schedulers see no consent records."""
    audit.expect("consent.list", "appointment", appointment_id)
    appointment = await _clinical_access(session, user, appointment_id)
    records = await consent.records_of(session, appointment.id)
    return ConsentRecordList(
        items=[
            ConsentRecordDetail(
                id=entry.id,
                participant=entry.participant,
                decision=entry.decision,  # type: ignore[arg-type]  # checked by the database
                scopes=_scopes(entry),
                version=entry.version,
                text_sha256=entry.text_sha256,
                recorded_at=entry.recorded_at,
                ip=entry.ip,
                user_agent=entry.user_agent,
            )
            for entry in records
        ]
    )


@router.get("/consent-texts/current", response_model=ConsentTextOut, tags=["consent"])
@read_only
async def current_consent_text(session: SessionDep, _user: CurrentUser) -> ConsentTextOut:
    text = await consent.current_text(session)
    return ConsentTextOut(
        version=text.version, text=text.text, sha256=text.sha256, published_at=text.published_at
    )


@router.post(
    "/consent-texts",
    response_model=ConsentTextOut,
    status_code=status.HTTP_201_CREATED,
    tags=["consent"],
)
async def publish_consent_text(
    body: ConsentTextBody, session: SessionDep, admin: AdminUser, audit: AuditDep
) -> ConsentTextOut:
    """A new version becomes current; decisions made under earlier versions keep theirs."""
    event = audit.expect("consent_text.publish", "consent_text")
    text = await consent.publish_text(session, text=body.text, by=admin.id, now=_now())
    event.resource_id = str(text.version)
    return ConsentTextOut(
        version=text.version, text=text.text, sha256=text.sha256, published_at=text.published_at
    )


async def _clinical_access(
    session: SessionDep, user: Principal, appointment_id: uuid.UUID
) -> Appointment:
    """Consents and recordings: admins and the appointment's clinician; schedulers never."""
    if user.role == Role.SCHEDULER:
        raise Forbidden()
    return await service.appointment_for(session, viewer=user, appointment_id=appointment_id)


@router.get(
    "/appointments/{appointment_id}/recordings", response_model=RecordingList, tags=["recordings"]
)
async def list_recordings(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> RecordingList:
    audit.expect("recording.list", "appointment", appointment_id)
    appointment = await _clinical_access(session, user, appointment_id)
    result = await session.execute(
        select(Recording)
        .where(Recording.appointment_id == appointment.id)
        .order_by(Recording.started_at)
    )
    return RecordingList(items=[RecordingOut.model_validate(r) for r in result.scalars()])


@router.get("/appointments/{appointment_id}/recordings/{recording_id}/file", tags=["recordings"])
async def download_recording(
    appointment_id: uuid.UUID,
    recording_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    settings: SettingsDep,
) -> FileResponse:
    audit.expect("recording.download", "recording", recording_id)
    appointment = await _clinical_access(session, user, appointment_id)
    recording = await session.get(Recording, recording_id)
    if recording is None or recording.appointment_id != appointment.id:
        raise NotFound()
    path = settings.recordings_dir / recording.file_name
    if recording.ended_at is None or not path.is_file():
        raise NotFound("The recording is not available.")
    media_type = "video/webm" if path.suffix == ".webm" else "video/x-matroska"
    return FileResponse(path, media_type=media_type, filename=path.name)
