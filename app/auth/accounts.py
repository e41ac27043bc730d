"""Accounts: an admin's list and changes of every account, password-reset links, and the
caller's own password and two-factor enrolment. Every change is audited; the audit trail keeps
a deactivated user (accounts are never deleted)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status

from app.audit import Audit
from app.auth import otp, service
from app.auth.models import User
from app.auth.schemas import (
    AccountList,
    AccountOut,
    AccountPatch,
    OtpConfirm,
    OtpEnrolment,
    OtpStatus,
    PasswordChange,
    ResetIn,
    ResetOut,
)
from app.auth.service import OTP_INVALID
from app.deps import (
    AdminUser,
    AuditDep,
    CurrentUser,
    SessionDep,
    SettingsDep,
    client_address,
    enrolment_allowed,
    read_only,
)
from app.errors import Conflict, NotFound, ValidationFailed

router = APIRouter(tags=["accounts"])


def audit_as(request: Request, actor_id: uuid.UUID | None, actor_role: str) -> Audit:
    """An audit context for a request whose actor is known without a bearer token."""
    return Audit(
        actor_id=actor_id,
        actor_role=actor_role,
        ip=client_address(request),
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        request_id=getattr(request.state, "request_id", None),
    )


def account_out(user: User) -> AccountOut:
    return AccountOut.model_validate(user)


@router.get("/users", response_model=AccountList)
@read_only
async def list_users(session: SessionDep, _admin: AdminUser, audit: AuditDep) -> AccountList:
    event = audit.expect("user.list", "user")
    users = await service.list_users(session)
    audit.listed(event, [user.id for user in users])
    return AccountList(items=[account_out(user) for user in users])


@router.patch("/users/{user_id}", response_model=AccountOut)
async def update_user(
    request: Request,
    user_id: uuid.UUID,
    body: AccountPatch,
    session: SessionDep,
    _admin: AdminUser,
    audit: AuditDep,
) -> AccountOut:
    """Role, name, time zone, active: any of them. Deactivating ends the user's sessions now
    (and their console sockets within seconds); the last active admin stays one."""
    event = audit.expect("user.update", "user", user_id)
    changes = body.model_dump(exclude_unset=True)
    event.details = {"fields": sorted(changes)} | {
        key: changes[key] for key in ("role", "active") if key in changes
    }
    user, ended = await service.update_user(session, user_id=user_id, **changes)
    if ended:
        event.details["sessions_ended"] = len(ended)
    request.app.state.principals.forget_user(user.id)
    return account_out(user)


@router.delete("/users/{user_id}/otp", response_model=OtpStatus)
async def reset_user_otp(
    request: Request,
    user_id: uuid.UUID,
    session: SessionDep,
    _admin: AdminUser,
    audit: AuditDep,
) -> OtpStatus:
    """Turn off a user's two-factor sign-in (their authenticator is lost); their sessions end."""
    event = audit.expect("user.otp_reset", "user", user_id)
    user, ended = await service.turn_off_otp(session, user_id=user_id)
    event.details = {"sessions_ended": len(ended)}
    request.app.state.principals.forget_user(user.id)
    return OtpStatus(otp_enabled=False)


@router.post("/users/{user_id}/password-reset", response_model=ResetOut)
async def issue_password_reset(
    user_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminUser,
    audit: AuditDep,
) -> ResetOut:
    """A single-use link (1 hour) for the user to set a new password; give it to them."""
    audit.expect("user.password_reset_issue", "user", user_id)
    url = await service.issue_reset(
        session, user_id=user_id, by=admin.id, public_base=settings.public_base
    )
    return ResetOut(reset_url=url)


@router.post("/auth/password-reset", status_code=status.HTTP_204_NO_CONTENT)
async def use_password_reset(request: Request, body: ResetIn, session: SessionDep) -> Response:
    """Set a new password with a reset link's token; every session of that user ends."""
    # The link is checked before Argon2 runs, so unknown tokens cost nothing.
    await service.reset_target(session, body.token)
    password_hash = await request.app.state.password_slots.hash(body.password)
    user_id, role, ended = await service.use_reset(
        session, token=body.token, password_hash=password_hash
    )
    audit = audit_as(request, user_id, role)
    event = audit.expect("user.password_reset", "user", user_id)
    event.details = {"sessions_ended": len(ended)}
    await audit.write(session, "success")
    request.app.state.principals.forget_user(user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT)
@enrolment_allowed
async def change_password(
    request: Request,
    body: PasswordChange,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
) -> Response:
    """The caller's own password, given the current one; their other sessions end."""
    event = audit.expect("user.password_change", "user", user.id)
    ended = await service.change_password(
        session,
        throttle=request.app.state.login_throttle,
        slots=request.app.state.password_slots,
        user_id=user.id,
        current=body.current,
        new=body.new,
        address=client_address(request),
        keep_session=getattr(request.state, "session_id", None),
    )
    event.details = {"sessions_ended": len(ended)}
    request.app.state.principals.forget_user(user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


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
