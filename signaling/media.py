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
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from app.participants import CLINICIAN, PATIENT
from signaling.errors import SignalingError

# The server messages the relay emits, built as signaling builds them (the contract's shapes):
# an error, a `video` pause or resume, and the two ways to say "negotiate a new connection".
from signaling.messages import admitted, call, error, video

__all__ = [
    "NOTHING",
    "Consent",
    "ConsentGuard",
    "Emit",
    "GuestConsent",
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
class GuestConsent:
    """What one guest's standing decisions allow the relay to carry of them."""

    video_visit: bool
    recording: bool
    # The `seq` of that guest's latest consent record (0: not known), as for the patient.
    seq: int = 0


_NO_GUESTS: Mapping[str, GuestConsent] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Consent:
    """What the standing decisions allow the relay to carry: the patient's, and each guest's.

    `guests` maps a guest's participant key ("<role>:<id>") to that guest's decisions. A guest
    not in it is allowed nothing (nothing of theirs is forwarded or recorded); the patient and
    the clinician are never in it. A reading (ConsentGuard.read_consent) lists every guest of
    the call with standing consent; an announcement (MediaPlane.consent) names only what it
    changes (see Relay.consent).
    """

    video_visit: bool
    recording: bool
    # The `seq` of the call's latest consent record (0: not known). Of two readings the one
    # with the higher `seq` is the newer; a different `seq` means a decision came in between.
    seq: int = 0
    guests: Mapping[str, GuestConsent] = field(default_factory=lambda: _NO_GUESTS, hash=False)

    def __post_init__(self) -> None:
        # Frozen all the way down: a read-only copy, whatever mapping the caller passed.
        if not isinstance(self.guests, MappingProxyType):
            object.__setattr__(self, "guests", MappingProxyType(dict(self.guests)))

    def guest(self, key: str) -> GuestConsent | None:
        return self.guests.get(key)

    def may_record(self, key: str) -> bool:
        """Whether this person's recording consent stands (the clinician's is not asked for)."""
        if key == PATIENT:
            return self.recording
        if key == CLINICIAN:
            return True
        standing = self.guest(key)
        return standing is not None and standing.recording

    def takes_part(self, key: str) -> bool:
        """Whether this person's media may be carried at all: the patient and the clinician
        (the patient's own consent is the call's), a guest while their video-visit consent
        stands. A guest who withdrew it, or was removed (no longer named), is on their way out:
        nothing of theirs is forwarded or recorded, whether or not their peer has gone yet."""
        if key in (PATIENT, CLINICIAN):
            return True
        standing = self.guest(key)
        return standing is not None and standing.video_visit

    def recording_stands(self, present: Iterable[str]) -> bool:
        """The rule for `record start` (and for a recording to go on): the patient's recording
        consent stands, and that of everyone present who takes part. Both the relay (with who
        has media in its room) and signaling (with who is in the call) apply it."""
        return self.recording and all(
            self.may_record(key) for key in present if self.takes_part(key)
        )


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

    async def consent(self, call_id: uuid.UUID, consent: Consent) -> None:
        """The patient's decision as announced (the `guests` it names, if any, are applied
        too; guests it does not name keep what the relay knows of them)."""
        ...

    async def guest_consent(self, call_id: uuid.UUID, key: str, consent: GuestConsent) -> None:
        """One guest's decision as announced: their media stops at once on a withdrawal."""
        ...

    async def record(self, call_id: uuid.UUID, action: str) -> None: ...

    async def video(self, call_id: uuid.UUID, role: str, *, enabled: bool) -> None:
        """`role` asks for sound only (False) or for video again (True)."""
        ...

    async def screen(self, call_id: uuid.UUID, role: str, *, enabled: bool) -> None:
        """`role` shares their screen (True: their second sending video is forwarded to
        everyone as `source` "screen") or stops sharing it (False)."""
        ...

    async def close_call(self, call_id: uuid.UUID) -> None: ...

    async def shutdown(self) -> None: ...
