"""What signaling needs from the media relay; `media/` implements it.

Signaling routes each call's negotiation (offers, answers, candidates), departures and consent
changes to the one process that hosts the call's relay; the relay answers through `Emit`, which
delivers to the participant wherever their socket is.

Consent reaches the relay two ways: fast, as a `consent` call when a decision is announced, and
durably, through the `ConsentGuard` signaling gives the relay, which reads the standing consent
from the database itself. The first may be lost with a process or a connection; the second is
what the relay trusts, and when it cannot read it, nothing of the patient's goes anywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from signaling.errors import SignalingError

# The server messages the relay emits, built as signaling builds them (the contract's shapes):
# an error, a `video` pause or resume, and the two ways to say "negotiate a new connection".
from signaling.messages import admitted, call, error, video

__all__ = [
    "NOTHING",
    "Consent",
    "ConsentGuard",
    "Emit",
    "MediaPlane",
    "SignalingError",
    "admitted",
    "call",
    "error",
    "video",
]

# (call, role, message): deliver a server message to a participant of a call.
Emit = Callable[[uuid.UUID, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Consent:
    """What the patient's standing decisions allow the relay to carry."""

    video_visit: bool
    recording: bool
    # The `seq` of the call's latest consent record (0: not known). Of two readings the one
    # with the higher `seq` is the newer; a different `seq` means a decision came in between.
    seq: int = 0


# What stands for a call that is no longer under way, or that the database does not know.
NOTHING = Consent(video_visit=False, recording=False)


class ConsentGuard(Protocol):
    """The relay's own way to the standing consent: signaling reads it from the database."""

    async def read_consent(self, call_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Consent]:
        """Each call's standing consent as committed now; calls not under way are left out."""
        ...

    async def call_over(self, call_id: uuid.UUID) -> None:
        """The relay found the patient's consent gone or the call ended: see the call finished
        (its end announced once, the relay's room closed)."""
        ...

    async def recording_refused(self, call_id: uuid.UUID) -> None:
        """The relay refused to start a recording: the consent did not stand when it looked."""
        ...


class MediaPlane(Protocol):
    def has_call(self, call_id: uuid.UUID) -> bool: ...

    async def open_call(
        self, call_id: uuid.UUID, *, consent: Consent, ice_servers: list[dict[str, Any]]
    ) -> None: ...

    async def offer(self, call_id: uuid.UUID, role: str, sdp: str) -> None: ...

    async def answer(self, call_id: uuid.UUID, role: str, sdp: str) -> None: ...

    async def candidate(
        self, call_id: uuid.UUID, role: str, candidate: dict[str, Any] | None
    ) -> None: ...

    async def leave(self, call_id: uuid.UUID, role: str) -> None: ...

    async def consent(self, call_id: uuid.UUID, consent: Consent) -> None: ...

    async def record(self, call_id: uuid.UUID, action: str) -> None: ...

    async def video(self, call_id: uuid.UUID, role: str, *, enabled: bool) -> None:
        """`role` asks for sound only (False) or for video again (True)."""
        ...

    async def close_call(self, call_id: uuid.UUID) -> None: ...

    async def shutdown(self) -> None: ...
