"""Visit links: a patient's only credential.

The token is HMAC-SHA256(key, salt) with a 256-bit random salt per appointment, so staff can be
shown the link again, while the database keeps only the salt and SHA-256(token): a dump of the
database without the server's secret yields no working link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SALT_BYTES = 32


def link_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"televisit/visit-link/v1", hashlib.sha256).digest()


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def token_for(key: bytes, salt: bytes) -> str:
    digest = hmac.new(key, salt, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def visit_url(public_base: str, token: str) -> str:
    return f"{public_base}/visit/{token}"
