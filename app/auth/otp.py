"""Two-factor sign-in: TOTP (RFC 6238, 6 digits, 30 s steps) through pyotp.

The shared secret is stored sealed with AES-GCM under a key derived from the server's secret
(a dump of the database alone yields no secret), and never logged. A code is accepted for the
step it belongs to, one step either side of now (clock drift), and only for a step later than
the last one accepted: `consume` records the step in one conditional UPDATE, so the same code
(or an earlier one) is refused even by two sign-ins racing with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User

ISSUER = "Televisit"
DIGITS = 6
STEP_SECONDS = 30
# Steps either side of now a code may belong to.
DRIFT_STEPS = 1
_NONCE_BYTES = 12
_SEALED_PREFIX = "v1."
_AAD = b"televisit/otp-secret"


def sealing_key(secret: bytes) -> bytes:
    """A key for TOTP secrets alone, derived so that no other use of the secret can open one."""
    return hmac.new(secret, b"televisit/otp/v1", hashlib.sha256).digest()


def new_secret() -> str:
    return pyotp.random_base32()


def seal(key: bytes, otp_secret: str) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, otp_secret.encode(), _AAD)
    return _SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(key: bytes, stored: str) -> str | None:
    """The secret, or None when it was sealed under another key (the server's secret changed)."""
    if not stored.startswith(_SEALED_PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(stored[len(_SEALED_PREFIX) :])
        return AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _AAD).decode()
    except (InvalidTag, ValueError):
        return None


def provisioning_uri(otp_secret: str, email: str) -> str:
    return pyotp.TOTP(otp_secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=email, issuer_name=ISSUER
    )


def matching_step(otp_secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code this is (within the drift allowed), or None."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(otp_secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # Every candidate is compared, so the time taken says nothing about which matched.
        if hmac.compare_digest(totp.at(step * STEP_SECONDS), code):
            found = step
    return found


async def consume(session: AsyncSession, user_id: uuid.UUID, step: int) -> bool:
    """Record `step` as used; False when it (or a later one) was used already: a replay."""
    result = await session.execute(
        update(User)
        .where(
            User.id == user_id,
            or_(User.otp_last_step.is_(None), User.otp_last_step < step),
        )
        .values(otp_last_step=step)
        .returning(User.id)
    )
    return result.scalar_one_or_none() is not None
