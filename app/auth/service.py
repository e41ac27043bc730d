"""Staff accounts and login."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import otp, sessions
from app.auth.models import PasswordReset, Role, User
from app.auth.passwords import HashingSlots, hash_password, verify_password
from app.auth.throttle import LoginThrottle
from app.db import utcnow
from app.errors import Conflict, Gone, InvalidCredentials, NotAuthenticated, NotFound

RESET_LIFETIME = dt.timedelta(hours=1)
RESET_CLOSED = (
    "This reset link was used already or has expired; ask an administrator for a new one."
)
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


async def list_users(session: AsyncSession) -> list[User]:
    result = await session.execute(select(User).order_by(User.name, User.email, User.id))
    return list(result.scalars())


async def update_user(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    role: str | None = None,
    name: str | None = None,
    timezone: str | None = None,
    active: bool | None = None,
) -> tuple[User, list[uuid.UUID]]:
    """Change an account; the sessions it ended (a deactivation ends them all).

    The last active admin cannot be demoted or deactivated (409 `last_admin`): the active
    admins' rows are locked first, always in one order, so two admins demoting each other at
    once cannot both pass the check (PostgreSQL; SQLite runs writers one at a time).
    """
    if role is not None or active is not None:
        await session.execute(
            select(User.id)
            .where(User.role == Role.ADMIN.value, User.is_active.is_(True))
            .order_by(User.id)
            .with_for_update()
        )
    user = await session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound()
    demoted = role is not None and role != Role.ADMIN.value
    if user.role == Role.ADMIN.value and user.is_active and (demoted or active is False):
        others = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.ADMIN.value, User.is_active.is_(True), User.id != user.id)
        )
        if not others:
            raise Conflict(
                "This is the last active administrator: make someone else an administrator first.",
                code="last_admin",
            )
    if role is not None:
        user.role = role
    if name is not None:
        user.name = name
    if timezone is not None:
        user.timezone = timezone
    ended: list[uuid.UUID] = []
    if active is not None:
        if user.is_active and not active:
            ended = await sessions.end_all(session, user.id, sessions.EndReason.DEACTIVATED)
        user.is_active = active
    await session.flush()
    return user, ended


async def turn_off_otp(
    session: AsyncSession, *, user_id: uuid.UUID
) -> tuple[User, list[uuid.UUID]]:
    """Two-factor off for a user who lost their authenticator: the secret is dropped, and every
    session of theirs ends (whoever holds one may be who took the phone). They sign in with
    the password alone and may enrol again."""
    user = await session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound()
    user.otp_enabled = False
    user.otp_secret = None
    user.otp_last_step = None
    ended = await sessions.end_all(session, user.id, sessions.EndReason.OTP_RESET)
    await session.flush()
    return user, ended


def _reset_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_reset(
    session: AsyncSession, *, user_id: uuid.UUID, by: uuid.UUID | None, public_base: str
) -> str:
    """A single-use link to set a new password, valid RESET_LIFETIME; earlier ones close."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound()
    now = utcnow()
    await session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user_id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
    )
    token = secrets.token_urlsafe(32)
    session.add(
        PasswordReset(
            token_hash=_reset_digest(token),
            user_id=user_id,
            created_by_id=by,
            created_at=now,
            expires_at=now + RESET_LIFETIME,
        )
    )
    await session.flush()
    # In the fragment: browsers never send it, so no server or proxy log sees the token.
    return f"{public_base}/reset-password#{token}"


async def reset_target(session: AsyncSession, token: str) -> uuid.UUID:
    """The user a reset link is for, if it is still open; 404 unknown, 410 used or expired."""
    row = (
        await session.execute(
            select(PasswordReset).where(PasswordReset.token_hash == _reset_digest(token))
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("This reset link is not known.", code="reset_link_unknown")
    if row.used_at is not None or row.expires_at <= utcnow():
        raise Gone(RESET_CLOSED, code="reset_link_closed")
    return row.user_id


async def use_reset(
    session: AsyncSession, *, token: str, password_hash: str
) -> tuple[uuid.UUID, str, list[uuid.UUID]]:
    """Spend a reset link (one conditional UPDATE) and set the password; every session ends."""
    now = utcnow()
    spent = await session.execute(
        update(PasswordReset)
        .where(
            PasswordReset.token_hash == _reset_digest(token),
            PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > now,
        )
        .values(used_at=now)
        .returning(PasswordReset.user_id)
    )
    user_id = spent.scalar_one_or_none()
    if user_id is None:
        raise Gone(RESET_CLOSED, code="reset_link_closed")
    role = (
        await session.execute(
            update(User)
            .where(User.id == user_id)
            .values(password_hash=password_hash)
            .returning(User.role)
        )
    ).scalar_one()
    ended = await sessions.end_all(session, user_id, sessions.EndReason.PASSWORD_RESET)
    return user_id, role, ended


async def change_password(
    session: AsyncSession,
    *,
    throttle: LoginThrottle,
    slots: HashingSlots,
    user_id: uuid.UUID,
    current: str,
    new: str,
    address: str,
    keep_session: uuid.UUID | None,
) -> list[uuid.UUID]:
    """The caller's own password, given the current one (throttled as sign-ins are); their
    other sessions end."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound()
    await throttle.attempt(user.email, address)
    if not await slots.verify(user.password_hash, current):
        raise InvalidCredentials("The current password is not right.")
    await throttle.succeeded(user.email, address)
    user.password_hash = await slots.hash(new)
    return await sessions.end_all(
        session, user_id, sessions.EndReason.PASSWORD_CHANGED, keep=keep_session
    )
