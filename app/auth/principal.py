"""Who is calling: a staff member's snapshot, and the caches that keep authentication cheap.

Every staff request needs the caller's id and role, and the check that the account is still
active. Reading the user row each time cost most of a trivial request, so verified tokens and
user snapshots are kept briefly in memory: a deactivation or role change takes effect within
`USER_TTL_SECONDS` in every process (and at once in the process that made it).
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

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(
            id=user.id, email=user.email, role=user.role, name=user.name, timezone=user.timezone
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


class PrincipalCache:
    """Active users by id, each kept for a few seconds."""

    def __init__(self, ttl: float = USER_TTL_SECONDS) -> None:
        self._ttl = ttl
        self._entries: OrderedDict[uuid.UUID, tuple[Principal | None, float]] = OrderedDict()

    def get(self, user_id: uuid.UUID) -> tuple[bool, Principal | None]:
        """(known, principal): known is False when the database must be asked."""
        hit = self._entries.get(user_id)
        if hit is None or hit[1] <= time.monotonic():
            return False, None
        return True, hit[0]

    def put(self, user_id: uuid.UUID, principal: Principal | None) -> None:
        self._entries[user_id] = (principal, time.monotonic() + self._ttl)
        self._entries.move_to_end(user_id)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)

    def forget(self, user_id: uuid.UUID) -> None:
        self._entries.pop(user_id, None)
