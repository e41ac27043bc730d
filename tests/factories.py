"""Typed factories that write straight to the database (no HTTP, no Argon2 per user)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from app.auth import tokens
from app.auth.models import StaffSession, User
from app.auth.passwords import hash_password_sync
from app.db import Database
from scheduling.models import Availability

PASSWORD = "correct horse battery staple"
# A factory's session outlives any test; its idle limit is the settings' own.
SESSION_LIFE = dt.timedelta(hours=12)
WEEKDAY_HOURS = [{"weekday": d, "start": "09:00", "end": "17:00"} for d in range(5)]


@lru_cache(maxsize=1)
def password_hash() -> str:
    return hash_password_sync(PASSWORD)


@dataclass(frozen=True)
class Person:
    user: User
    token: str
    session_id: uuid.UUID

    @property
    def id(self) -> uuid.UUID:
        return self.user.id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Staff:
    admin: Person
    scheduler: Person
    clinician: Person  # America/New_York
    other_clinician: Person  # Europe/Berlin


def access_token(secret: bytes, user: User, session_id: uuid.UUID, minutes: float = 15) -> str:
    return tokens.issue(
        key=tokens.signing_key(secret),
        user_id=user.id,
        role=user.role,
        session_id=session_id,
        lifetime=dt.timedelta(minutes=minutes),
    )


async def make_user(
    db: Database,
    *,
    secret: bytes,
    role: str,
    name: str | None = None,
    timezone: str = "UTC",
    email: str | None = None,
) -> Person:
    user = User(
        id=uuid.uuid4(),
        email=email or f"{role}-{uuid.uuid4().hex[:10]}@clinic.example.org",
        password_hash=password_hash(),
        role=role,
        name=name or f"{role.title()} {uuid.uuid4().hex[:4]}",
        timezone=timezone,
        is_active=True,
        created_at=dt.datetime.now(dt.UTC),
    )
    # A signed-in session, as a login would open (without Argon2 or a refresh token).
    now = dt.datetime.now(dt.UTC)
    staff_session = StaffSession(
        id=uuid.uuid4(),
        user_id=user.id,
        created_at=now,
        expires_at=now + SESSION_LIFE,
        refreshed_at=now,
    )
    async with db.session(write=True) as session:
        session.add(user)
        await session.flush()
        session.add(staff_session)
    return Person(
        user=user, token=access_token(secret, user, staff_session.id), session_id=staff_session.id
    )


async def set_hours(
    db: Database,
    clinician_id: uuid.UUID,
    *,
    timezone: str,
    weekly: list[dict[str, Any]] | None = None,
    exceptions: list[dict[str, Any]] | None = None,
    slot_minutes: int = 20,
    min_notice_minutes: int = 0,
    horizon_days: int | None = None,
) -> None:
    async with db.session(write=True) as session:
        existing = await session.get(Availability, clinician_id)
        if existing is not None:
            await session.delete(existing)
            await session.flush()
        session.add(
            Availability(
                clinician_id=clinician_id,
                timezone=timezone,
                slot_minutes=slot_minutes,
                min_notice_minutes=min_notice_minutes,
                horizon_days=horizon_days,
                weekly=WEEKDAY_HOURS if weekly is None else weekly,
                exceptions=exceptions or [],
                updated_at=dt.datetime.now(dt.UTC),
            )
        )


async def make_staff(db: Database, *, secret: bytes) -> Staff:
    clinician = await make_user(
        db, secret=secret, role="clinician", name="Dr. Ada Test", timezone="America/New_York"
    )
    other = await make_user(
        db, secret=secret, role="clinician", name="Dr. Bo Test", timezone="Europe/Berlin"
    )
    await set_hours(db, clinician.id, timezone="America/New_York")
    await set_hours(db, other.id, timezone="Europe/Berlin")
    return Staff(
        admin=await make_user(db, secret=secret, role="admin"),
        scheduler=await make_user(db, secret=secret, role="scheduler"),
        clinician=clinician,
        other_clinician=other,
    )


def next_weekday(days_ahead: int = 7, weekday: int = 2) -> dt.date:
    """A date at least `days_ahead` days away falling on `weekday` (default Wednesday)."""
    day = dt.date.today() + dt.timedelta(days=days_ahead)
    while day.weekday() != weekday:
        day += dt.timedelta(days=1)
    return day


def local_instant(day: dt.date, clock: str, timezone: str) -> dt.datetime:
    hour, minute = (int(part) for part in clock.split(":"))
    local = dt.datetime.combine(day, dt.time(hour, minute), ZoneInfo(timezone))
    return local.astimezone(dt.UTC)


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def booking_body(
    clinician_id: uuid.UUID, start: dt.datetime, *, name: str = "Pat Example", **patient: Any
) -> dict[str, Any]:
    return {
        "clinician_id": str(clinician_id),
        "start": rfc3339(start),
        "patient": {"name": name, **patient},
        "reason": "Follow-up",
    }
