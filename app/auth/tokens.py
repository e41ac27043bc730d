"""Short-lived staff access tokens (JWT, HS256) with audience, expiry and algorithm checked.

Each names the session it was issued in (`sid`): a token is good only while that session lives
(app.auth.sessions), however long its own expiry.
"""

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
    session_id: uuid.UUID
    expires_at: float


def signing_key(secret: bytes) -> bytes:
    """A key for tokens alone, derived so no other use of the secret can forge one."""
    return hmac.new(secret, b"televisit/jwt/v1", hashlib.sha256).digest()


def issue(
    *,
    key: bytes,
    user_id: uuid.UUID,
    role: str,
    session_id: uuid.UUID,
    lifetime: dt.timedelta,
) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "sid": str(session_id),
        "role": role,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(token: str, *, key: bytes, check_expiry: bool = True) -> TokenClaims | None:
    """The token's claims if it is ours, unexpired (unless told) and for staff; else None."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require": ["exp", "iat", "sub", "sid", "aud", "iss"],
                "verify_exp": check_expiry,
            },
        )
        return TokenClaims(
            user_id=uuid.UUID(claims["sub"]),
            role=str(claims["role"]),
            session_id=uuid.UUID(claims["sid"]),
            expires_at=float(claims["exp"]),
        )
    except (jwt.PyJWTError, KeyError, ValueError, TypeError, AttributeError):
        return None
