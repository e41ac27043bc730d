"""Short-lived staff access tokens (JWT, HS256) with audience, expiry and algorithm checked."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
AUDIENCE = "televisit:staff"
ISSUER = "televisit"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    role: str
    expires_at: float


def signing_key(secret: bytes) -> bytes:
    """A key for tokens alone, derived so no other use of the secret can forge one."""
    return hmac.new(secret, b"televisit/jwt/v1", hashlib.sha256).digest()


def issue(*, key: bytes, user_id: uuid.UUID, role: str, lifetime: dt.timedelta) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "role": role,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(token: str, *, key: bytes) -> TokenClaims | None:
    """The token's claims if it is ours, unexpired and for staff; otherwise None."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
        return TokenClaims(
            user_id=uuid.UUID(claims["sub"]),
            role=str(claims["role"]),
            expires_at=float(claims["exp"]),
        )
    except (jwt.PyJWTError, KeyError, ValueError):
        return None
