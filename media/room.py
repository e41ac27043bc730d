"""A call's room: its participants, publishers, recording and consent, and what they share.

Only the room's owner (media.owner) changes a room, with one exception: the brake. Anyone
holding the room may close the patient's gate at once (`brake_withdrawal`, `brake_doubt`):
a consent withdrawal announced while steps wait, or the consent watch losing its readings,
must stop the patient's media within the contract's second whatever the owner is awaiting.
The brake only ever closes; only the owner releases it, when the step it waits for has run.
Everything else (`has_call`, the call's stats) is read from outside without awaiting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpSender

from app.config import Settings
from app.participants import CLINICIAN, PATIENT
from media.bandwidth import Downlink, LossMeter, Pacer, Uplink
from media.gate import ConsentWatch, set_gate
from media.owner import Owner, Step
from media.peers import Peer, PeerFilter, PeerRegistry
from media.recording import Recorder, RecordingLog
from media.stats import CallStats
from media.tracks import ForwardedTrack, Publisher
from media.transcode import TranscodedTrack
from signaling.media import Consent, ConsentGuard, Emit

KINDS = ("audio", "video")
# A participant's feeds: what each of their publishers carries. "screen" is the clinician's
# second video (a shared screen), a video publisher of its own.
FEEDS = ("audio", "video", "screen")


def kind_of(feed: str) -> str:
    return "audio" if feed == "audio" else "video"


Subscription = ForwardedTrack | TranscodedTrack


@dataclass(eq=False)
class Services:
    """What every room of a relay uses: its settings, its way out, its peer connections."""

    settings: Settings
    emit: Emit
    recordings: RecordingLog | None
    registry: PeerRegistry
    filter: PeerFilter
    guard: ConsentGuard | None = None
    watch: ConsentWatch | None = None
    background: set[asyncio.Future[Any]] = field(default_factory=set)

    def spawn(self, coroutine: Awaitable[None] | None) -> None:
        """Run beside the owner (a REMB, a keyframe ask, a note to signaling): never awaited."""
        if coroutine is None:
            return
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


@dataclass(eq=False)
class Participant:
    role: str
    peer: Peer | None = None
    remote_ufrag: str | None = None
    sources: list[Any] = field(default_factory=list)  # receivers feeding our publishers
    # (publisher role, feed) -> the track this participant's sender carries
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    relay_offer_pending: bool = False
    renegotiate: bool = False
    pending_candidates: list[dict[str, Any] | None] = field(default_factory=list)
    joined_at: float = field(default_factory=time.monotonic)
    media_seen: bool = False
    stalled: bool = False
    sound_only: bool = False  # asked for: no video to them, theirs to nobody
    screen: bool = False  # sharing their screen: their second video forwards
    left: bool = False  # said they leave (not a reconnect): not in anyone's `streams`
    streams_told: list[dict[str, str]] | None = None  # the last `streams` sent them
    downlink: Downlink = field(default_factory=Downlink)
    # Their own leg, as the relay receives their video: loss over the receiver's counters.
    uplink: Uplink = field(default_factory=Uplink)
    uplink_meter: tuple[object, LossMeter] | None = None  # (the receiver it counts, meter)
    pacer: Pacer | None = None
    senders: dict[tuple[str, str], RTCRtpSender] = field(default_factory=dict)
    described_at: float = 0.0  # the last debug line about their link


class Room:
    def __init__(
        self,
        call_id: uuid.UUID,
        *,
        consent: Consent,
        ice_servers: list[dict[str, Any]],
        services: Services,
    ) -> None:
        self.id = call_id
        self.consent = consent
        self.ice_servers = ice_servers
        self.services = services
        self.participants: dict[str, Participant] = {}
        self.publishers: dict[tuple[str, str], Publisher] = {}
        self.video_codec: str | None = None
        self.stats = CallStats()
        self.byte_marks: dict[str, tuple[int, float]] = {}
        self.recorder: Recorder | None = None
        self.opened_at = time.monotonic()
        # Consent (media.gate): when the latest reading the owner applied began, whether the
        # readings lapsed, whether signaling was told that the call is over.
        self.consent_read_at = self.opened_at
        self.in_doubt = False
        self.over_reported = False
        # The brake: withdrawals posted and not yet run; the reading that found the patient's
        # consent gone, not yet run (its number); since when readings lapsed.
        self.withdrawals_waiting = 0
        self.reading_brake: int | None = None
        # The same per guest: withdrawals posted and not yet run, readings that found them gone.
        self.guest_withdrawals: Counter[str] = Counter()
        self.guest_reading_brakes: dict[str, int] = {}
        self.doubt_since: float | None = None
        self._brakes = 0
        self.owner = Owner(f"relay-room-{call_id}", tell=self.tell)

    # Read from anywhere ------------------------------------------------------------------

    @property
    def patient_allowed(self) -> bool:
        return (
            self.consent.video_visit
            and not self.in_doubt
            and self.withdrawals_waiting == 0
            and self.reading_brake is None
            and self.doubt_since is None
        )

    def guest_allowed(self, key: str) -> bool:
        """A guest's media forwards only while their own video_visit consent stands, readings
        answer, and no withdrawal of theirs waits (a guest the consent does not name: never)."""
        standing = self.consent.guest(key)
        return (
            standing is not None
            and standing.video_visit
            and not self.in_doubt
            and self.doubt_since is None
            and not self.guest_withdrawals[key]
            and key not in self.guest_reading_brakes
        )

    def allowed(self, role: str) -> bool:
        """Whether `role`'s publishers may forward, as consent stands (the clinician's always)."""
        if role == PATIENT:
            return self.patient_allowed
        if role == CLINICIAN:
            return True
        return self.guest_allowed(role)

    def may_record(self, role: str) -> bool:
        """Whether `role`'s recording consent stands (the clinician's is not asked for)."""
        return self.consent.may_record(role)

    def present(self) -> list[str]:
        """Who is in the room now: has a peer connection."""
        return [role for role, p in self.participants.items() if p.peer is not None]

    @property
    def transcoding(self) -> bool:
        return any(
            isinstance(track, TranscodedTrack)
            for participant in self.participants.values()
            for track in participant.subscriptions.values()
        )

    # The brake: from anywhere, only ever closing -----------------------------------------

    def brake_withdrawal(self) -> None:
        """A withdrawal is on its way to the owner: nothing of the patient's until it has run."""
        self.withdrawals_waiting += 1
        self.gate()

    def brake_guest_withdrawal(self, key: str) -> None:
        """A guest's withdrawal is on its way: nothing of theirs until it has run."""
        self.guest_withdrawals[key] += 1
        self.gate()

    def brake_reading(self) -> int:
        """A reading found the consent gone: nothing of the patient's until the owner has
        applied it, or a later reading (which replaces it: media.owner's keyed steps)."""
        self._brakes += 1
        self.reading_brake = self._brakes
        self.gate()
        return self._brakes

    def brake_guests_reading(self, keys: Collection[str]) -> dict[str, int]:
        """A reading found these guests' consent gone: the same, per guest."""
        brakes = {}
        for key in keys:
            self._brakes += 1
            brakes[key] = self.guest_reading_brakes[key] = self._brakes
        if brakes:
            self.gate()
        return brakes

    def brake_doubt(self, now: float) -> None:
        """The readings lapsed: nothing of the patient's or any guest's until one begun after
        `now` is applied."""
        if self.doubt_since is None:
            self.doubt_since = now
        self.gate()

    def gate(self) -> None:
        """Each participant's publishers forward as the room's state says (owner's and brake's)."""
        allowed: dict[str, bool] = {}
        for (role, _feed), publisher in self.publishers.items():
            if role not in allowed:
                allowed[role] = self.allowed(role)
            set_gate(publisher, allowed[role])

    # The owner's ---------------------------------------------------------------------------

    def post(self, step: Step) -> bool:
        return self.owner.post(step)

    def participant(self, role: str) -> Participant:
        participant = self.participants.get(role)
        if participant is None:
            participant = self.participants[role] = Participant(role)
        return participant

    def publisher(self, role: str, feed: str) -> Publisher:
        key = (role, feed)
        publisher = self.publishers.get(key)
        if publisher is None:
            publisher = self.publishers[key] = Publisher(role, kind_of(feed), feed)
            publisher.allowed = self.allowed(role)
        return publisher

    async def tell(self, role: str, message: dict[str, Any]) -> None:
        await self.services.emit(self.id, role, message)

    async def announce(self, message: dict[str, Any]) -> None:
        for role in {*self.participants, CLINICIAN, PATIENT}:
            await self.services.emit(self.id, role, message)

    def relay_ice(self) -> list[dict[str, Any]]:
        # The relay itself needs STUN at most (to learn its public address), never TURN.
        return [s for s in self.ice_servers if "username" not in s]

    def bytes_from(self, role: str) -> int:
        """What `role` has sent the relay, all their publishers together."""
        return sum(p.bytes for (r, _k), p in self.publishers.items() if r == role)
