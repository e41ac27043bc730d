"""Staff accounts and login."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import otp
from app.auth.models import User
from app.auth.passwords import HashingSlots, hash_password, verify_password
from app.auth.throttle import LoginThrottle
from app.errors import Conflict, InvalidCredentials, NotAuthenticated

OTP_INVALID = "That code is not right, or was used already. Enter the current one."


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email.strip().lower()))
    return result.scalar_one_or_none()


async def authenticate(
    session: AsyncSession,
    *,
    throttle: LoginThrottle,
    slots: HashingSlots,
    email: str,
    password: str,
    address: str,
    code: str | None = None,
    otp_key: bytes | None = None,
) -> tuple[User, int | None]:
    """The active user with these credentials, and the TOTP step their code belongs to (None
    without two-factor); the same failure for every wrong password.

    The attempt is counted before anything is looked up, so the throttle answers alike for
    every email, and concurrent guesses cannot all pass it while Argon2 runs. A user with
    two-factor needs a code (401 `otp_required`, else `otp_invalid`); the earlier attempts from
    this address are forgiven only once the code is right too, so codes are guessed no faster
    than passwords. The step must still be consumed (`otp.consume`) to refuse a replay.
    """
    await throttle.attempt(email, address)
    async with slots.slot():
        user = await get_by_email(session, email)
        stored = user.password_hash if user is not None and user.is_active else None
        verified = await verify_password(stored, password)
    if not verified:
        raise InvalidCredentials()
    assert user is not None
    step = None
    if user.otp_enabled:
        if not code:
            raise NotAuthenticated(
                "Enter the code from your authenticator app.", code="otp_required"
            )
        secret = otp.unseal(otp_key or b"", user.otp_secret or "")
        step = otp.matching_step(secret, code) if secret is not None else None
        if step is None:
            raise NotAuthenticated(OTP_INVALID, code="otp_invalid")
    await throttle.succeeded(email, address)
    return user, step


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    role: str,
    name: str,
    timezone: str,
    slots: HashingSlots | None = None,
) -> User:
    """A new active account; `slots` bounds the hashing when requests create accounts."""
    password_hash = await (slots.hash(password) if slots is not None else hash_password(password))
    user = User(
        id=uuid.uuid4(),
        email=email.strip().lower(),
        password_hash=password_hash,
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
