"""The visit over HTTP: the link, the second factor, consent decisions; for the patient and for
each guest of the visit (their own link: scheduling.guests)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.deps import OutboxDep, SessionDep, SettingsDep, client_address, read_only
from app.ice import ice_servers
from app.ratelimit import Policy
from scheduling import consent, service, visits
from scheduling.access import Verification, link_of, now, rate_limits
from scheduling.guests import VisitLink
from scheduling.models import GuestStatus
from scheduling.notifications.messages import role_phrase
from scheduling.visit_schemas import (
    ClinicianName,
    ConsentBody,
    ConsentOut,
    ConsentRecordOut,
    ParticipantOut,
    VerifyBody,
    VerifyOut,
    VisitOut,
    record_out,
)

router = APIRouter(tags=["visits"])

# Per visit link, whatever the address (docs/reliability.md, "Abuse"). Date-of-birth guesses:
# the link is what is attacked, so its guesses are counted from every address together, and
# the right date forgives them. Consent writes: a patient needs a handful.
VERIFY_GUESSES = Policy("visit-verify", "5/15 minutes;20/day")
CONSENT_WRITES = Policy("visit-consent", "10/minute;60/hour")


def participant_of(link: VisitLink) -> ParticipantOut:
    if link.guest is None:
        return ParticipantOut(role=link.participant)
    return ParticipantOut(id=link.guest.id, role=link.guest.role, name=link.guest.name)


def consent_text(link: VisitLink, text: str) -> str:
    """The published text; a guest's page opens with a line naming the role they join as (the
    records keep the published text's version and hash: the line follows from the role)."""
    if link.guest is None:
        return text
    return f"You are joining this visit as {role_phrase(link.guest.role)}.\n\n{text}"


@router.get("/visits/{token}", response_model=VisitOut)
@read_only
async def get_visit(
    request: Request, token: str, session: SessionDep, verification: Verification = None
) -> VisitOut:
    """What the patient's (or a guest's) page shows. Changes nothing: mail scanners prefetch
    links."""
    link = await link_of(request, session, token, verification)
    appointment = link.appointment
    text = await consent.current_text(session)
    standing = await consent.standing(session, appointment.id, link.participant)
    return VisitOut(
        appointment_id=appointment.id,
        clinician=ClinicianName(
            name=await service.clinician_name(session, appointment.clinician_id)
        ),
        start=appointment.start_at,
        end=appointment.end_at,
        status=appointment.status,
        consent=ConsentOut(
            version=text.version,
            text=consent_text(link, text.text),
            scopes=list(consent.SCOPES),  # type: ignore[arg-type]  # the two scope names
        ),
        consented=standing.video_visit,
        consented_recording=standing.recording,
        birth_date_check=not link.is_guest
        and service.needs_verification(
            appointment, birth_date_check=request.app.state.settings.visit_birth_date_check
        ),
        ice_servers=ice_servers(
            request.app.state.settings, visit_end=appointment.end_at, now=now()
        ),
        participant=participant_of(link),
    )


@router.post("/visits/{token}/verify", response_model=VerifyOut)
@read_only
async def verify_visit(
    request: Request, token: str, body: VerifyBody, session: SessionDep, settings: SettingsDep
) -> VerifyOut:
    """The practice's second factor: the patient's date of birth, throttled per link."""
    at = now()
    appointment = await service.find_visit(
        session, token=token, now=at, hours_after=settings.visit_link_hours_after
    )
    limiter, link = rate_limits(request), visits.token_hash(token)
    await limiter.enforce(VERIFY_GUESSES, link)
    if (
        appointment.patient_birth_date is not None
        and appointment.patient_birth_date != body.birth_date
    ):
        raise service.VerificationRequired(
            "That date of birth does not match.", code="verification_failed"
        )
    await limiter.clear(VERIFY_GUESSES, link)
    proof = visits.proof_for(request.app.state.link_key, appointment.link_hash, at)
    return VerifyOut(verification=proof, expires_in=visits.PROOF_SECONDS)


@router.post(
    "/visits/{token}/consent",
    response_model=ConsentRecordOut,
    status_code=status.HTTP_201_CREATED,
)
async def record_consent(
    request: Request,
    token: str,
    body: ConsentBody,
    session: SessionDep,
    outbox: OutboxDep,
    verification: Verification = None,
) -> ConsentRecordOut:
    """The patient's (or a guest's) decision for this appointment's call. A withdrawal takes
    effect at once: the patient's ends the call, a guest's takes only that guest out."""
    link = await link_of(request, session, token, verification)
    appointment = link.appointment
    was_in_call = link.guest is not None and link.guest.status == GuestStatus.IN_CALL.value
    await rate_limits(request).enforce(CONSENT_WRITES, visits.token_hash(token))
    at = now()
    entry = await consent.record(
        session,
        appointment_id=appointment.id,
        participant=link.participant,
        decision=body.decision,
        scopes=body.scopes,
        version=body.version,
        ip=client_address(request),
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        now=at,
    )
    decided = await consent.take_effect(session, entry, now=at)
    standing, withdrawal = decided.standing, decided.withdrawal
    # Committed first: the call already ended, or the patient already left the queue (a guest:
    # is out of the call, `guest_left`). The event only hurries the news along; the relay
    # re-reads the consent itself (media.gate). A guest's decision is an event of its own kind,
    # so nothing that hears `consent.recorded` takes it for the patient's.
    outbox.add(
        "guest.consent.recorded" if link.is_guest else "consent.recorded",
        appointment.id,
        participant=link.participant,
        participant_id=str(link.guest.id) if link.guest is not None else None,
        guest_left=decided.guest_left,
        # Whether the others in the call are to be told this guest left it.
        was_in_call=was_in_call,
        decision=entry.decision,
        scopes=entry.scopes.split(),
        video_visit=standing.video_visit,
        recording=standing.recording,
        seq=entry.seq,
        clinician_id=str(appointment.clinician_id),
        ended=withdrawal is not None and withdrawal.ended is not None,
        left_queue=withdrawal is not None and withdrawal.left_queue is not None,
    )
    return record_out(entry)
