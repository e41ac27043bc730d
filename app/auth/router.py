from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Form, Request, status

from app.auth import service, tokens
from app.auth.schemas import TokenOut, UserCreate, UserOut
from app.deps import AdminUser, CurrentUser, SessionDep, SettingsDep, client_address, read_only
from app.validation import Text

router = APIRouter(tags=["auth"])


@router.post("/auth/token", response_model=TokenOut)
@read_only
async def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[Text, Form(max_length=320)],
    password: Annotated[Text, Form(max_length=256)],
) -> TokenOut:
    user = await service.authenticate(
        session,
        throttle=request.app.state.login_throttle,
        slots=request.app.state.password_slots,
        email=username,
        password=password,
        address=client_address(request),
    )
    lifetime = dt.timedelta(minutes=settings.access_token_minutes)
    token = tokens.issue(
        key=request.app.state.jwt_key, user_id=user.id, role=user.role, lifetime=lifetime
    )
    return TokenOut(access_token=token, expires_in=int(lifetime.total_seconds()))


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


@router.get("/me", response_model=UserOut)
@read_only
async def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)
