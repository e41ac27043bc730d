"""Handing a notification over: mail to the practice's SMTP server, SMS to its webhook.

Every step is bounded (`timeout` per step, and the whole send by `deadline`). What matters
for "at most once" is where a send stopped, so each returns an `Outcome`:

- SENT: the server took it (SMTP 250 after DATA, HTTP 2xx).
- RETRY: certainly not handed over (no connection, refused before DATA, a 4xx answer to
  DATA, HTTP 429/503 or no connection): a later attempt cannot make a second copy.
- FAILED: refused for good (a 5xx answer, an HTTP 4xx).
- UNKNOWN: the message may have been handed over (the connection lost or timed out during
  DATA, or after the HTTP request was written): never tried again.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import parseaddr

import aiosmtplib
import httpx

from app.config import SmtpServer


class Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    # An error's type or a status code: never a server's text (it may echo an address).
    error: str | None = None


SENT = Result(Outcome.SENT)


def _answered(code: int, where: str) -> Result:
    """A server's refusal: 4xx is "not now", anything else is "no"."""
    outcome = Outcome.RETRY if 400 <= code < 500 else Outcome.FAILED
    return Result(outcome, f"{where}_{code}")


async def send_mail(
    server: SmtpServer, message: EmailMessage, *, step_seconds: float, deadline: float
) -> Result:
    sender = parseaddr(str(message["From"]))[1]
    recipient = parseaddr(str(message["To"]))[1]
    payload = message.as_bytes(policy=policy.SMTP)
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
        use_tls=server.implicit_tls,
        start_tls=server.starttls,
        timeout=step_seconds,
    )
    handed_over = False
    try:
        async with asyncio.timeout(deadline):
            # Connects, says EHLO, upgrades (STARTTLS) and logs in as the URL says.
            await client.connect()
            try:
                await client.mail(sender)
                await client.rcpt(recipient)
                handed_over = True
                await client.data(payload)
            finally:
                if client.is_connected:
                    client.close()
    except aiosmtplib.SMTPResponseException as exc:
        # An answer: whatever the step, the server said it did not take the message.
        return _answered(exc.code, "data" if handed_over else "smtp")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        if handed_over:
            return Result(Outcome.UNKNOWN, type(exc).__name__)
        return Result(Outcome.RETRY, type(exc).__name__)
    return SENT


async def send_sms(
    client: httpx.AsyncClient,
    *,
    url: str,
    token: str,
    to: str,
    text: str,
    key: uuid.UUID,
    deadline: float,
) -> Result:
    """POST {"to","text"} with the bearer token; `Idempotency-Key` lets a gateway that keeps
    them refuse a copy."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(key)}
    try:
        async with asyncio.timeout(deadline):
            response = await client.post(url, json={"to": to, "text": text}, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return Result(Outcome.RETRY, type(exc).__name__)
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        # The request may have reached the gateway.
        return Result(Outcome.UNKNOWN, type(exc).__name__)
    if response.is_success:
        return SENT
    if response.status_code in (429, 503):
        return Result(Outcome.RETRY, f"http_{response.status_code}")
    if response.status_code >= 500:
        return Result(Outcome.UNKNOWN, f"http_{response.status_code}")
    return Result(Outcome.FAILED, f"http_{response.status_code}")
