"""What signaling needs from the media relay; `media/` implements it.

Signaling routes each call's negotiation (offers, answers, candidates), departures and consent
changes to the one process that hosts the call's relay; the relay answers through `Emit`, which
delivers to the participant wherever their socket is.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

# (call, role, message): deliver a server message to a participant of a call.
Emit = Callable[[uuid.UUID, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Consent:
    """What the patient's standing decisions allow the relay to carry."""

    video_visit: bool
    recording: bool


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
