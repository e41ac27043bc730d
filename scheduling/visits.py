"""Visit links: a patient's only credential.

The token is HMAC-SHA256(key, salt) with a 256-bit random salt per appointment, so staff can be
shown the link again, while the database keeps only the salt and SHA-256(token): a dump of the
database without the server's secret yields no working link.
"""

from __future__ import annotations

import base64
import datetime as dt
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


# The second factor: a patient who confirmed their birth date gets a proof bound to their link.
PROOF_SECONDS = 12 * 3600


def _proof_mac(key: bytes, link_hash: str, expires: int) -> str:
    message = f"televisit/visit-proof/v1:{link_hash}:{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def proof_for(key: bytes, link_hash: str, now: dt.datetime) -> str:
    expires = int(now.timestamp()) + PROOF_SECONDS
    return f"{expires}.{_proof_mac(key, link_hash, expires)}"


def proof_valid(key: bytes, link_hash: str, proof: str, *, now: dt.datetime) -> bool:
    expires_text, _, mac = proof.partition(".")
    if not expires_text.isdigit() or int(expires_text) < now.timestamp():
        return False
    return hmac.compare_digest(mac, _proof_mac(key, link_hash, int(expires_text)))
