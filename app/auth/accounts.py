"""The caller's own account: two-factor enrolment (and, for admins, other accounts)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.auth import otp
from app.auth.models import User
from app.auth.schemas import OtpConfirm, OtpEnrolment, OtpStatus
from app.auth.service import OTP_INVALID
from app.deps import AuditDep, CurrentUser, SessionDep, enrolment_allowed
from app.errors import Conflict, NotFound, ValidationFailed

router = APIRouter(tags=["accounts"])


async def _own_row(session: SessionDep, user: CurrentUser) -> User:
    row = await session.get(User, user.id, with_for_update=True)
    if row is None:
        raise NotFound()
    return row


@router.post("/me/otp", response_model=OtpEnrolment)
@enrolment_allowed
async def enrol_otp(
    request: Request, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> OtpEnrolment:
    """A new TOTP secret for the caller, to be confirmed with a code before it counts."""
    audit.expect("user.otp_enrol", "user", user.id)
    row = await _own_row(session, user)
    if row.otp_enabled:
        raise Conflict("Two-factor sign-in is on already.", code="otp_already_enabled")
    secret = otp.new_secret()
    row.otp_secret = otp.seal(request.app.state.otp_key, secret)
    row.otp_last_step = None
    return OtpEnrolment(otpauth_uri=otp.provisioning_uri(secret, row.email))


@router.post("/me/otp/confirm", response_model=OtpStatus)
@enrolment_allowed
async def confirm_otp(
    request: Request, body: OtpConfirm, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> OtpStatus:
    """The first code from the authenticator app turns two-factor sign-in on."""
    audit.expect("user.otp_enable", "user", user.id)
    row = await _own_row(session, user)
    if row.otp_enabled:
        raise Conflict("Two-factor sign-in is on already.", code="otp_already_enabled")
    secret = otp.unseal(request.app.state.otp_key, row.otp_secret or "")
    if secret is None:
        raise Conflict("Start the enrolment first (POST /api/v1/me/otp).", code="otp_not_enrolled")
    step = otp.matching_step(secret, body.otp)
    if step is None or not await otp.consume(session, row.id, step):
        raise ValidationFailed(OTP_INVALID, code="otp_invalid")
    row.otp_enabled = True
    request.app.state.principals.forget_user(user.id)
    return OtpStatus(otp_enabled=True)
