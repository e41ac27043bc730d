"""Chat in a call: a message is stored with the visit, then everyone in the call is sent it.

A participant's socket sends `{"type":"chat","text"}` (the console with `"appointment_id"`)
while in the call. The order of refusals: a malformed, empty (whitespace only) or over-long text
is `invalid_message` (signaling.messages); a socket not in the call, `not_in_call`; more than
`BURST` messages at once, or more than `PER_SECOND` a second over time, `rate_limited` (per
socket, on top of the socket's general limit; the socket stays); the database away,
`unavailable`. A refused message is neither stored nor delivered. Only then does everyone in the
call get `{"type":"chat","id","appointment_id","from":{"role","name","participant"},"text",
"sent_at"}` (`participant`: the sender's participant key; `id`: the stored message's, as the
history `GET /appointments/{id}/chat` gives it), the sender too (their page shows the message
once the server holds it).

A page that comes back into a running call (a reload, a new socket), or a guest admitted into it,
is sent `{"type":"chat_history","appointment_id","items"}` right after `admitted`: the call's
messages this person may see (scheduling.chat.visible_to: the patient all of them, a guest those
from their admission on), oldest first, each item the `chat` message it was sent as. Nobody
waiting or removed is sent it. The console reads the history over HTTP instead (staff reads are
audited there), only when it lacks some of it: the `call` it is sent on every take of a call
(an admission, its socket back after a reload or a reconnection) says how many messages the call
has (`chat_count`), and the console reads the history only when it shows fewer.

The text and the names are patient data: nothing here logs them, nor an exception's message
(which may quote a statement's parameters).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from app.db import Database, utcnow
from scheduling import chat
from signaling import messages
from signaling.errors import SignalingError

logger = logging.getLogger("televisit.signaling")

# A short exchange may come at once (a few lines typed ahead); a flood may not.
BURST = 5.0
PER_SECOND = 1.0

Deliver = Callable[[uuid.UUID, dict[str, Any]], Awaitable[None]]


class ChatLimit:
    """One socket's token bucket for chat messages."""

    def __init__(self, burst: float = BURST, per_second: float = PER_SECOND) -> None:
        self.burst, self.per_second = burst, per_second
        self._tokens, self._refilled = burst, time.monotonic()

    def take(self) -> None:
        """Spend a token, or refuse the message (`rate_limited`)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.per_second)
        self._refilled = now
        if self._tokens < 1:
            raise SignalingError("rate_limited", "Too many chat messages; wait a moment.")
        self._tokens -= 1


def _rfc3339(value: Any) -> str:
    text: str = value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text


async def send(
    db: Database,
    deliver: Deliver,
    call_id: uuid.UUID,
    *,
    sender: str,
    name: str,
    text: str,
    limit: ChatLimit,
) -> None:
    """Store a participant's message (within the sender's request), then deliver it to
    everyone in the call. `sender` is their participant key; `name` is shown with it."""
    limit.take()
    try:
        async with db.session(write=True) as session:
            stored = await chat.add_message(
                session,
                appointment_id=call_id,
                sender=sender,
                sender_name=name,
                text=text,
                now=utcnow(),
            )
    except chat.NotInCall:
        raise SignalingError("not_in_call", "The call is not running.") from None
    except Exception as exc:
        # By type only: a database error's text may quote the message.
        logger.warning(
            "chat message not stored",
            extra={"error_type": type(exc).__name__, "appointment_id": str(call_id)},
        )
        raise SignalingError("unavailable", "Could not send that just now; try again.") from None
    await deliver(call_id, _as_sent(stored))


def _as_sent(stored: chat.ChatMessage) -> dict[str, Any]:
    """A stored message as the call's `chat` message."""
    return messages.chat(
        stored.appointment_id,
        stored.sender,
        chat.sender_role(stored.sender),
        stored.sender_name,
        stored.text,
        _rfc3339(stored.sent_at),
        message_id=stored.id,
    )


async def count(db: Database, call_id: uuid.UUID) -> int | None:
    """How many messages the call's chat has; None when that cannot be read just now."""
    try:
        async with db.session(write=False) as session:
            return await chat.count_of(session, call_id)
    except Exception as exc:
        logger.warning(
            "chat count not read",
            extra={"error_type": type(exc).__name__, "appointment_id": str(call_id)},
        )
        return None


async def history(db: Database, call_id: uuid.UUID, participant: str) -> dict[str, Any] | None:
    """The `chat_history` for this participant of the running call; None when they are not in
    it, or when it cannot be read just now (the live messages go on without it)."""
    try:
        async with db.session(write=False) as session:
            found = await chat.visible_to(session, appointment_id=call_id, participant=participant)
            items = None if found is None else [_as_sent(message) for message in found]
    except Exception as exc:
        logger.warning(
            "chat history not read",
            extra={"error_type": type(exc).__name__, "appointment_id": str(call_id)},
        )
        return None
    return None if items is None else messages.chat_history(call_id, items)
