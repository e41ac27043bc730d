"""The `iceServers` a participant's browser gets: only what the settings name, never a default.

TURN credentials follow coturn's `use-auth-secret` scheme (the "TURN REST API"): the username is
`<expiry unix time>:<opaque id>` and the credential is base64(HMAC-SHA1(secret, username)). They
expire shortly after the visit's end and carry no patient data: the opaque id is random.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

from app.config import Settings

# How long after the visit's scheduled end a participant may still relay through TURN.
TURN_GRACE = dt.timedelta(minutes=30)
# Calls that run late still get at least this long from the moment of admission.
TURN_MINIMUM = dt.timedelta(minutes=20)


def turn_credentials(secret: bytes, *, expires: dt.datetime) -> tuple[str, str]:
    username = f"{int(expires.timestamp())}:{secrets.token_hex(8)}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(
    settings: Settings, *, visit_end: dt.datetime, now: dt.datetime
) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls and settings.turn_secret is not None:
        expires = max(visit_end + TURN_GRACE, now + TURN_MINIMUM)
        username, credential = turn_credentials(
            settings.turn_secret.get_secret_value().encode(), expires=expires
        )
        servers.append(
            {"urls": list(settings.turn_urls), "username": username, "credential": credential}
        )
    return servers
