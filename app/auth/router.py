from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import accounts, otp, service, sessions, tokens
from app.auth.accounts import audit_as
from app.auth.models import RefreshToken, StaffSession, User
from app.auth.schemas import LogoutIn, MeOut, RefreshIn, TokenOut, UserCreate, UserOut
from app.auth.sessions import Refused
from app.deps import (
    AdminUser,
    CurrentUser,
    DatabaseDep,
    SessionDep,
    SettingsDep,
    client_address,
    enrolment_allowed,
    must_enrol,
    read_only,
)
from app.errors import NotAuthenticated
from app.validation import Text

router = APIRouter(tags=["auth"])
_bearer = HTTPBearer(auto_error=False)

_REFUSED = {
    Refused.UNKNOWN: ("not_authenticated", "That refresh token is not valid."),
    Refused.REUSED: (
        "refresh_token_reused",
        "That refresh token was used already; the session has ended. Sign in again.",
    ),
    Refused.ENDED: ("session_ended", "The session has ended. Sign in again."),
}


def token_pair(request: Request, renewed: sessions.Renewed) -> TokenOut:
    settings = request.app.state.settings
    lifetime = dt.timedelta(minutes=settings.access_token_minutes)
    token = tokens.issue(
        key=request.app.state.jwt_key,
        user_id=renewed.user.id,
        role=renewed.user.role,
        session_id=renewed.session_id,
        lifetime=lifetime,
    )
    return TokenOut(
        access_token=token,
        expires_in=max(1, int(lifetime.total_seconds())),
        refresh_token=renewed.refresh_token,
    )


async def start_session(request: Request, user: User, otp_step: int | None = None) -> TokenOut:
    """A new session for a user who has just proved who they are, audited; `otp_step`, the
    TOTP step of their code, is consumed in the same transaction (a replay is refused)."""
    async with request.app.state.db.session(write=True) as session:
        if otp_step is not None and not await otp.consume(session, user.id, otp_step):
            raise NotAuthenticated(service.OTP_INVALID, code="otp_invalid")
        renewed = await sessions.start(
            session, user_id=user.id, settings=request.app.state.settings
        )
        audit = audit_as(request, user.id, user.role)
        audit.expect("session.start", "session", renewed.session_id)
        await audit.write(session, "success")
    return token_pair(request, renewed)


@router.post("/auth/token", response_model=TokenOut)
@read_only
async def login(
    request: Request,
    session: SessionDep,
    username: Annotated[Text, Form(max_length=320)],
    password: Annotated[Text, Form(max_length=256)],
    code: Annotated[Text | None, Form(alias="otp", max_length=16)] = None,
) -> TokenOut:
    user, step = await service.authenticate(
        session,
        throttle=request.app.state.login_throttle,
        slots=request.app.state.password_slots,
        email=username,
        password=password,
        address=client_address(request),
        code=code,
        otp_key=request.app.state.otp_key,
    )
    return await start_session(request, user, step)


@router.post("/auth/refresh", response_model=TokenOut)
async def refresh(
    request: Request, body: RefreshIn, db: DatabaseDep, settings: SettingsDep
) -> TokenOut:
    """Spend a refresh token for a new access and refresh token (a replay ends the session)."""
    async with db.session(write=True) as session:
        outcome = await sessions.rotate(
            session, refresh_token=body.refresh_token, settings=settings
        )
        if not isinstance(outcome, sessions.Renewed) and outcome[0] is Refused.REUSED:
            audit = audit_as(request, *await _session_owner(session, outcome[1]))
            event = audit.expect("session.revoke", "session", outcome[1])
            event.details = {"reason": sessions.EndReason.REFRESH_REUSED.value}
            await audit.write(session, "success")
    if isinstance(outcome, sessions.Renewed):
        return token_pair(request, outcome)
    refused, session_id = outcome
    if session_id is not None:
        request.app.state.principals.forget(session_id)
    code, message = _REFUSED[refused]
    raise NotAuthenticated(message, code=code)


async def _session_owner(
    session: AsyncSession, session_id: uuid.UUID | None
) -> tuple[uuid.UUID | None, str]:
    """The id and role of a session's user, for the audit trail."""
    row = (
        await session.execute(
            select(User.id, User.role)
            .join(StaffSession, StaffSession.user_id == User.id)
            .where(StaffSession.id == session_id)
        )
    ).one_or_none()
    return (row[0], row[1]) if row is not None else (None, "unknown")


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    request: Request,
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    body: LogoutIn | None = None,
) -> Response:
    """End the session named by the bearer token (even an expired one's) or the refresh token."""
    session_id: uuid.UUID | None = None
    if credentials is not None:
        claims = tokens.verify(
            credentials.credentials, key=request.app.state.jwt_key, check_expiry=False
        )
        session_id = claims.session_id if claims is not None else None
    async with db.session(write=True) as session:
        if session_id is None and body is not None and body.refresh_token:
            session_id = await session.scalar(
                select(RefreshToken.session_id).where(
                    RefreshToken.token_hash == sessions.digest(body.refresh_token)
                )
            )
        if session_id is None:
            raise NotAuthenticated()
        if await sessions.end(session, session_id, sessions.EndReason.LOGOUT):
            audit = audit_as(request, *await _session_owner(session, session_id))
            audit.expect("session.end", "session", session_id)
            await audit.write(session, "success")
    request.app.state.principals.forget(session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
async def create_user(
    request: Request, body: UserCreate, session: SessionDep, _admin: AdminUser
) -> UserOut:
    user = await service.create_user(
        session,
        slots=request.app.state.password_slots,
        email=body.email,
        password=body.password,
        role=body.role,
        name=body.name,
        timezone=body.timezone,
    )
    return UserOut.model_validate(user)


@router.get("/me", response_model=MeOut)
@read_only
@enrolment_allowed
async def me(user: CurrentUser, settings: SettingsDep) -> MeOut:
    return MeOut.model_validate(
        {**dataclasses.asdict(user), "otp_enrolment_required": must_enrol(user, settings)}
    )


router.include_router(accounts.router)
