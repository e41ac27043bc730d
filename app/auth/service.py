"""Staff accounts and login."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User
from app.auth.passwords import hash_password, verify_password
from app.auth.throttle import LoginThrottle
from app.errors import Conflict, InvalidCredentials, TooManyRequests


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email.strip().lower()))
    return result.scalar_one_or_none()


async def authenticate(
    session: AsyncSession, *, throttle: LoginThrottle, email: str, password: str, address: str
) -> User:
    """The active user with these credentials; the same failure for every wrong guess."""
    wait = await throttle.retry_after(email, address)
    if wait:
        raise TooManyRequests(headers={"Retry-After": str(wait)})
    user = await get_by_email(session, email)
    stored = user.password_hash if user is not None and user.is_active else None
    if not await verify_password(stored, password):
        await throttle.failed(email, address)
        raise InvalidCredentials()
    assert user is not None
    await throttle.succeeded(email, address)
    return user


async def create_user(
    session: AsyncSession, *, email: str, password: str, role: str, name: str, timezone: str
) -> User:
    user = User(
        id=uuid.uuid4(),
        email=email.strip().lower(),
        password_hash=await hash_password(password),
        role=role,
        name=name,
        timezone=timezone,
        is_active=True,
    )
    try:
        async with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise Conflict("A user with this email exists.", code="email_taken") from None
    return user
