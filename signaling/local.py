"""The sockets of this process, as the reconciliation and the consoles' guard see them; and the
guard itself: consoles whose latest token expired too long ago, whose user was deactivated or
removed, or whose session ended, are closed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from typing import Protocol

from sqlalchemy import select

from app.auth.models import StaffSession, User
from app.db import Database, utcnow
from scheduling import calls, guest_calls


class PatientLink(Protocol):
    """A patient's socket in this process, as the reconciliation sees it."""

    @property
    def id(self) -> str: ...

    @property
    def appointment_id(self) -> uuid.UUID: ...

    @property
    def checked_in(self) -> bool: ...

    def on_presence(self, row: calls.Presence | None) -> None:
        """What the database says of this patient now: close the socket if it is not theirs
        any more (another socket took over, or the visit moved on)."""
        ...


class GuestLink(Protocol):
    """A guest's socket in this process, as the reconciliation sees it."""

    @property
    def id(self) -> str: ...

    @property
    def guest_id(self) -> uuid.UUID: ...

    @property
    def checked_in(self) -> bool: ...

    def on_presence(self, row: guest_calls.Presence | None) -> None:
        """What the database says of this guest now (as PatientLink.on_presence)."""
        ...


class ConsoleLink(Protocol):
    """A clinician's console in this process, as its guard and the reconciliation see it."""

    @property
    def clinician_id(self) -> uuid.UUID: ...

    @property
    def session_id(self) -> uuid.UUID:
        """The staff session of its latest token."""
        ...

    def held_calls(self) -> Collection[uuid.UUID]: ...

    def check_token(self, now: float) -> None:
        """Close the console if its latest token has been expired for too long."""
        ...

    def account_disabled(self) -> None: ...

    async def call_gone(self, call_id: uuid.UUID, reason: str) -> None:
        """A call it holds ended without the console being told (the message was lost)."""
        ...


class LocalSockets:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.patients: dict[str, PatientLink] = {}
        self.guests: dict[str, GuestLink] = {}
        self.consoles: set[ConsoleLink] = set()

    def patient_here(self, link: PatientLink) -> None:
        """Before its check-in is written: the heartbeat must not take its row for a socket
        this process does not hold."""
        self.patients[link.id] = link

    def patient_gone(self, link: PatientLink) -> None:
        """Before its close is written (`patient_dropped`)."""
        self.patients.pop(link.id, None)

    def guest_here(self, link: GuestLink) -> None:
        """Before its check-in is written (as `patient_here`)."""
        self.guests[link.id] = link

    def guest_gone(self, link: GuestLink) -> None:
        self.guests.pop(link.id, None)

    def console_here(self, link: ConsoleLink) -> None:
        self.consoles.add(link)

    def console_gone(self, link: ConsoleLink) -> None:
        self.consoles.discard(link)

    def check_tokens(self) -> None:
        now = time.time()
        for console in list(self.consoles):
            console.check_token(now)

    async def check_accounts(self) -> None:
        """Consoles of users deactivated (or removed) since they authenticated, or whose latest
        token's session ended (logout, a replayed refresh token, a password reset, its absolute
        limit), are closed."""
        sessions = {console.session_id for console in self.consoles}
        if not sessions:
            return
        async with self.db.session(write=False) as session:
            standing = set(
                (
                    await session.execute(
                        select(StaffSession.id)
                        .join(User, User.id == StaffSession.user_id)
                        .where(
                            StaffSession.id.in_(sessions),
                            StaffSession.ended_at.is_(None),
                            StaffSession.expires_at > utcnow(),
                            User.is_active.is_(True),
                        )
                    )
                ).scalars()
            )
        for console in list(self.consoles):
            if console.session_id not in standing:
                console.account_disabled()
