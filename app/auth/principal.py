"""Who is calling: a staff member's snapshot, and the caches that keep authentication cheap.

Every staff request needs the caller's id and role, and the check that the account is still
active and the token's session still open. Reading the rows each time cost most of a trivial
request, so verified tokens and each session's standing (with its user's snapshot) are kept
briefly in memory: a logout, a revoked session, a deactivation or role change takes effect
within `USER_TTL_SECONDS` in every process (and at once in the process that made it).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from app.auth import tokens
from app.auth.models import User

USER_TTL_SECONDS = 5.0
_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    id: uuid.UUID
    email: str
    role: str
    name: str
    timezone: str
    otp_enabled: bool = False

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(
            id=user.id,
            email=user.email,
            role=user.role,
            name=user.name,
            timezone=user.timezone,
            otp_enabled=bool(user.otp_enabled),
        )


class TokenCache:
    """Tokens whose signature and claims were verified, until they expire."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._verified: OrderedDict[str, tuple[tokens.TokenClaims, float]] = OrderedDict()

    def verify(self, token: str) -> tokens.TokenClaims | None:
        now = time.time()
        hit = self._verified.get(token)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._verified[token]
            return None
        claims = tokens.verify(token, key=self._key)
        if claims is not None:
            self._verified[token] = (claims, claims.expires_at)
            if len(self._verified) > _MAX_ENTRIES:
                self._verified.popitem(last=False)
        return claims


@dataclass(frozen=True, slots=True)
class Standing:
    """What a session allows now: its user (None: ended, or the user inactive) and until when."""

    principal: Principal | None
    # Epoch seconds: the session's absolute end or its idle end, whichever comes first.
    valid_until: float

    def allows(self, user_id: uuid.UUID, now: float) -> Principal | None:
        if self.principal is None or self.principal.id != user_id or now >= self.valid_until:
            return None
        return self.principal


class PrincipalCache:
    """Sessions' standing by session id, each kept for a few seconds.

    Ending a session or deactivating a user forgets its entries here at once; other processes
    learn within `USER_TTL_SECONDS`.
    """

    def __init__(self, ttl: float = USER_TTL_SECONDS) -> None:
        self._ttl = ttl
        self._entries: OrderedDict[uuid.UUID, tuple[Standing, float]] = OrderedDict()

    def get(self, session_id: uuid.UUID) -> Standing | None:
        """The cached standing, or None when the database must be asked."""
        hit = self._entries.get(session_id)
        if hit is None or hit[1] <= time.monotonic():
            return None
        return hit[0]

    def put(self, session_id: uuid.UUID, standing: Standing) -> None:
        if self._ttl <= 0:
            return
        self._entries[session_id] = (standing, time.monotonic() + self._ttl)
        self._entries.move_to_end(session_id)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)

    def forget(self, session_id: uuid.UUID) -> None:
        self._entries.pop(session_id, None)

    def forget_user(self, user_id: uuid.UUID) -> None:
        for session_id, (standing, _) in list(self._entries.items()):
            if standing.principal is not None and standing.principal.id == user_id:
                del self._entries[session_id]
