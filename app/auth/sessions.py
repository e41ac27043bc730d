"""Staff sessions: one per sign-in, renewed by single-use refresh tokens.

A refresh token is 256 random bits, handed out once and stored only as its SHA-256 (a dump of
the database yields no working token; the bits are too many to guess, so an unkeyed digest is
enough). Every refresh spends the presented token and issues the next one. Spending is one
conditional statement:

    UPDATE refresh_tokens SET used_at = :now
    WHERE token_hash = :digest AND used_at IS NULL
      AND session_id IN (SELECT id FROM staff_sessions WHERE <open, not expired, not idle>)

so of two refreshes racing with one token exactly one changes the row (PostgreSQL re-checks
`used_at IS NULL` after the winner commits; SQLite runs write transactions one at a time). The
loser, like anyone presenting a spent token later, finds it spent: that is a replay, and the
whole session ends (`refresh_reused`), so a thief and the owner both lose it and the owner
signs in again. A session also ends at logout, `TELEVISIT_SESSION_HOURS` after sign-in, after
`TELEVISIT_SESSION_IDLE_MINUTES` without a refresh, when its user is deactivated or their
password is reset or changed.

Access tokens name their session; `standing` is what a request checks (through the short cache
in app.auth.principal).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import RefreshToken, StaffSession, User
from app.auth.principal import Principal, Standing
from app.config import Settings
from app.db import utcnow

REFRESH_TOKEN_BYTES = 32
# Longest refresh token accepted (token_urlsafe(32) is 43 characters).
MAX_REFRESH_TOKEN_LENGTH = 128
# Rows of sessions ended or expired this long ago are deleted when their user next signs in.
KEEP_ENDED = dt.timedelta(days=7)


class EndReason(enum.StrEnum):
    LOGOUT = "logout"
    REFRESH_REUSED = "refresh_reused"
    DEACTIVATED = "deactivated"
    PASSWORD_RESET = "password_reset"  # noqa: S105 (a reason, not a password)
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 (a reason, not a password)
    OTP_RESET = "otp_reset"  # an admin turned two-factor off (a lost authenticator)


class Refused(enum.StrEnum):
    """Why a refresh token was not honoured."""

    UNKNOWN = "unknown"  # never issued (or malformed)
    REUSED = "reused"  # spent already: the session is ended now
    ENDED = "ended"  # its session ended, expired or idled out


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


@dataclass(frozen=True, slots=True)
class Renewed:
    session_id: uuid.UUID
    user: User
    refresh_token: str


def _open(now: dt.datetime, settings: Settings):  # type: ignore[no-untyped-def]  # a clause
    idle = dt.timedelta(minutes=settings.session_idle_minutes)
    return and_(
        StaffSession.ended_at.is_(None),
        StaffSession.expires_at > now,
        StaffSession.refreshed_at > now - idle,
    )


async def start(session: AsyncSession, *, user_id: uuid.UUID, settings: Settings) -> Renewed:
    """A new session for a user who just proved who they are, with its first refresh token.

    Also forgets this user's sessions that ended or expired over `KEEP_ENDED` ago.
    """
    now = utcnow()
    await session.execute(
        delete(StaffSession).where(
            StaffSession.user_id == user_id,
            (StaffSession.expires_at < now - KEEP_ENDED)
            | (StaffSession.ended_at < now - KEEP_ENDED),
        )
    )
    staff_session = StaffSession(
        id=uuid.uuid4(),
        user_id=user_id,
        created_at=now,
        expires_at=now + dt.timedelta(hours=settings.session_hours),
        refreshed_at=now,
    )
    session.add(staff_session)
    await session.flush()
    token = new_refresh_token()
    session.add(RefreshToken(token_hash=digest(token), session_id=staff_session.id, issued_at=now))
    await session.flush()
    user = await session.get(User, user_id)
    assert user is not None
    return Renewed(staff_session.id, user, token)


async def rotate(
    session: AsyncSession, *, refresh_token: str, settings: Settings
) -> Renewed | tuple[Refused, uuid.UUID | None]:
    """Spend a refresh token and issue the next; or say why not (a replay ends the session).

    Runs in the caller's write transaction, which must be committed whatever the outcome (a
    replay's revocation is a write too).
    """
    now = utcnow()
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        return Refused.UNKNOWN, None
    token_hash = digest(refresh_token)
    open_sessions = select(StaffSession.id).where(_open(now, settings))
    spent = await session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.used_at.is_(None),
            RefreshToken.session_id.in_(open_sessions.scalar_subquery()),
        )
        .values(used_at=now)
        .returning(RefreshToken.session_id)
    )
    session_id = spent.scalar_one_or_none()
    if session_id is None:
        return await _refused(session, token_hash, now)
    row = (
        await session.execute(
            select(User)
            .join(StaffSession, StaffSession.user_id == User.id)
            .where(StaffSession.id == session_id)
        )
    ).scalar_one()
    if not row.is_active:
        await end(session, session_id, EndReason.DEACTIVATED)
        return Refused.ENDED, session_id
    await session.execute(
        update(StaffSession).where(StaffSession.id == session_id).values(refreshed_at=now)
    )
    token = new_refresh_token()
    session.add(RefreshToken(token_hash=digest(token), session_id=session_id, issued_at=now))
    await session.flush()
    return Renewed(session_id, row, token)


async def _refused(
    session: AsyncSession, token_hash: str, now: dt.datetime
) -> tuple[Refused, uuid.UUID | None]:
    found = (
        await session.execute(
            select(RefreshToken.session_id, RefreshToken.used_at).where(
                RefreshToken.token_hash == token_hash
            )
        )
    ).one_or_none()
    if found is None:
        return Refused.UNKNOWN, None
    session_id, used_at = found
    if used_at is None:
        return Refused.ENDED, session_id
    ended = await end(session, session_id, EndReason.REFRESH_REUSED)
    return (Refused.REUSED if ended else Refused.ENDED), session_id


async def end(session: AsyncSession, session_id: uuid.UUID, reason: EndReason) -> bool:
    """End one session (if still open); True when this call ended it."""
    result = await session.execute(
        update(StaffSession)
        .where(StaffSession.id == session_id, StaffSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason.value)
        .returning(StaffSession.id)
    )
    return result.scalar_one_or_none() is not None


async def end_all(
    session: AsyncSession,
    user_id: uuid.UUID,
    reason: EndReason,
    *,
    keep: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """End every open session of a user (but `keep`); the ids of those ended."""
    where = [StaffSession.user_id == user_id, StaffSession.ended_at.is_(None)]
    if keep is not None:
        where.append(StaffSession.id != keep)
    result = await session.execute(
        update(StaffSession)
        .where(*where)
        .values(ended_at=utcnow(), end_reason=reason.value)
        .returning(StaffSession.id)
    )
    return list(result.scalars())


async def standing(session: AsyncSession, session_id: uuid.UUID, settings: Settings) -> Standing:
    """What a session allows: its active user, until its absolute or idle end."""
    row = (
        await session.execute(
            select(StaffSession, User)
            .join(User, User.id == StaffSession.user_id)
            .where(StaffSession.id == session_id)
        )
    ).one_or_none()
    if row is None:
        return Standing(None, 0.0)
    staff_session, user = row
    if staff_session.ended_at is not None or not user.is_active:
        return Standing(None, 0.0)
    idle_end = staff_session.refreshed_at + dt.timedelta(minutes=settings.session_idle_minutes)
    until = min(staff_session.expires_at, idle_end)
    return Standing(Principal.of(user), until.timestamp())
