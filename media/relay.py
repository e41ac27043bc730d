"""The media relay: one peer connection per participant, encoded frames forwarded between them.

`Relay` is what signaling calls (signaling.media.MediaPlane). It holds a `Room` per call
(media.room), and each room has one owner (media.owner): a task with a bounded inbox that
performs every change to that room in the order it arrived. Every MediaPlane method posts a
step and returns at once (a slow SDP step never holds up the signaling that called it); the
relay's ticker (media.health) and its consent watch (media.gate) post theirs the same way.

Where the work is done:
- media.negotiation: offers, answers, candidates, the relay's own offers, codecs;
- media.forwarding: publishers, subscriptions, pacing, sound only;
- media.adaptation: the bandwidth round (pause and resume video, REMB caps);
- media.consent: consent announcements and readings, the patient's gate, recording;
- media.health: the ticker, stall checks, stats;
- media.probes: device checks' short-lived peer connections, in no room;
- media.peers: the registry that owns every peer connection.

Consent: nothing from the patient is forwarded (or recorded) while their `video_visit` consent
does not stand, or while the relay cannot read it. A withdrawal announced here, or readings
that lapse, also pull the room's brake at once (media.room): the patient's gate closes before
this returns, whatever the owner is busy with, and stays closed until the owner has run the
step in question. Each guest has a gate of their own (their own `video_visit`, in
`Consent.guests`), closed the same way by their withdrawal (`guest_consent`) or a reading that
no longer names them; a guest's decision never ends the call.

Calls of up to four: every publisher goes to every other participant, the clinician's shared
screen too (`screen`), and each participant is told which of their transceivers carries whom
(`streams`, media.forwarding).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from app.config import Settings
from app.participants import is_guest
from media import consent as consent_steps
from media import hooks, network
from media.forwarding import set_screen, set_video, unsubscribe_all
from media.gate import ConsentWatch
from media.health import ticker
from media.negotiation import leave, on_answer, on_candidate, on_offer
from media.owner import NEGOTIATION_FAILED, Step
from media.peers import PeerFilter, PeerRegistry
from media.probes import Probes
from media.recording import RecordingLog
from media.room import Room, Services
from signaling.media import Consent, ConsentGuard, Emit, GuestConsent, SignalingError
from signaling.media import error as error_message

__all__ = ["Relay", "Room"]


def _stands(standing: GuestConsent | None) -> bool:
    return standing is not None and standing.video_visit


class Relay:
    """Implements signaling.media.MediaPlane."""

    def __init__(
        self,
        *,
        settings: Settings,
        emit: Emit,
        recordings: RecordingLog | None = None,
        registry: PeerRegistry | None = None,
        guard: ConsentGuard | None = None,
    ) -> None:
        hooks.check()
        network.check()
        hooks.restrict_host_addresses(settings.media_ips or None)
        network.configure(settings.media_ports, settings.media_public_ip)
        self.settings = settings
        self.registry = registry or PeerRegistry()
        peer_filter = PeerFilter(settings.media_peer_allow)
        # Without a guard (a relay on its own, in tests) the consent is what signaling says.
        watch = (
            None
            if guard is None
            else ConsentWatch(
                guard,
                lambda: list(self.rooms.values()),
                on_reading=self._on_reading,
                on_doubt=self._on_doubt,
                on_unknown=self._on_unknown,
            )
        )
        self.services = Services(
            settings=settings,
            emit=emit,
            recordings=recordings,
            registry=self.registry,
            filter=peer_filter,
            guard=guard,
            watch=watch,
        )
        self.probes = Probes(settings, self.registry, peer_filter)
        self.rooms: dict[uuid.UUID, Room] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._consent_task: asyncio.Task[None] | None = None

    # MediaPlane ----------------------------------------------------------------------------

    def has_call(self, call_id: uuid.UUID) -> bool:
        return call_id in self.rooms

    async def open_call(
        self, call_id: uuid.UUID, *, consent: Consent, ice_servers: list[dict[str, Any]]
    ) -> None:
        if call_id not in self.rooms:
            self.rooms[call_id] = Room(
                call_id, consent=consent, ice_servers=ice_servers, services=self.services
            )
        if self._ticker is None:
            self._ticker = asyncio.create_task(
                ticker(lambda: self.rooms.values()), name="relay-ticker"
            )
        watch = self.services.watch
        if watch is not None and self._consent_task is None:
            self._consent_task = asyncio.create_task(watch.run(), name="relay-consent")

    async def offer(self, call_id: uuid.UUID, role: str, sdp: str) -> None:
        room = self._room(call_id)
        self._negotiate(room, role, partial(on_offer, room, role, sdp))

    async def answer(self, call_id: uuid.UUID, role: str, sdp: str) -> None:
        room = self._room(call_id)
        self._negotiate(room, role, partial(on_answer, room, role, sdp))

    async def candidate(
        self, call_id: uuid.UUID, role: str, candidate: dict[str, Any] | None
    ) -> None:
        room = self._room(call_id)
        self._negotiate(room, role, partial(on_candidate, room, role, candidate))

    async def leave(self, call_id: uuid.UUID, role: str) -> None:
        room = self._room(call_id)
        room.owner.leave(Step(partial(leave, room, role), role=role, failure=NEGOTIATION_FAILED))

    async def consent(self, call_id: uuid.UUID, consent: Consent) -> None:
        """A decision as announced, applied by the room's owner in its turn (before this
        returns); a withdrawal closes the patient's gate at once, whatever the owner is doing.
        A decision older than one the room already applied is ignored."""
        room = self.rooms.get(call_id)
        if room is None or (consent.seq and consent.seq < room.consent.seq):
            return
        braked = not consent.video_visit
        if braked:
            room.brake_withdrawal()
        done = room.owner.submit(
            Step(partial(consent_steps.announced, room, consent, braked=braked))
        )
        if done is None:
            if braked:  # refused (the room is ending, or flooded): braked until a reading
                room.withdrawals_waiting -= 1
                room.brake_doubt(time.monotonic())
            return
        with contextlib.suppress(SignalingError):  # dropped: the call ended meanwhile
            await done

    async def guest_consent(self, call_id: uuid.UUID, key: str, consent: GuestConsent) -> None:
        """A guest's decision as announced, applied in the owner's turn (before this returns);
        a withdrawal closes that guest's gate at once. Older than what the room has: ignored.
        The call goes on whatever a guest decides."""
        room = self.rooms.get(call_id)
        if room is None:
            return
        known = room.consent.guest(key)
        if known is not None and consent.seq and consent.seq < known.seq:
            return
        braked = not consent.video_visit
        if braked:
            room.brake_guest_withdrawal(key)
        done = room.owner.submit(
            Step(partial(consent_steps.guest_announced, room, key, consent, braked=braked))
        )
        if done is None:
            if braked:  # refused: braked until a reading
                room.guest_withdrawals[key] -= 1
                room.brake_doubt(time.monotonic())
            return
        with contextlib.suppress(SignalingError):
            await done

    async def video(self, call_id: uuid.UUID, role: str, *, enabled: bool) -> None:
        """`role` asks for sound only (False) or for video again (True); everyone is told
        before this returns."""
        room = self._room(call_id)
        await room.owner.run(Step(partial(set_video, room, role, enabled=enabled), role=role))

    async def screen(self, call_id: uuid.UUID, role: str, *, enabled: bool) -> None:
        """`role` shares their screen (their second sending video, forwarded to everyone as
        `source` "screen"), or stops; everyone's `streams` says so before this returns."""
        room = self._room(call_id)
        await room.owner.run(Step(partial(set_screen, room, role, enabled=enabled), role=role))

    async def record(self, call_id: uuid.UUID, action: str) -> None:
        """Start or stop the recording, in the owner's turn (done, or refused, on return)."""
        room = self._room(call_id)
        await room.owner.run(Step(partial(consent_steps.record, room, action), role="clinician"))

    async def close_call(self, call_id: uuid.UUID) -> None:
        """The room's last step: what waits is dropped; its peer connections are closed and its
        summary kept before this returns."""
        room = self.rooms.pop(call_id, None)
        if room is None:
            return
        room.owner.close(Step(partial(self._close, room)))
        await room.owner.closed()

    async def connection_test(self, sdp: str) -> str:
        """Answer a device check's offer on a short-lived peer connection of its own."""
        return await self.probes.answer(sdp)

    async def shutdown(self) -> None:
        for call_id in list(self.rooms):
            await self.close_call(call_id)
        for task in (self._ticker, self._consent_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.registry.close_all()

    # Posting -------------------------------------------------------------------------------

    def _room(self, call_id: uuid.UUID) -> Room:
        room = self.rooms.get(call_id)
        if room is None:
            raise SignalingError("not_in_call", "This call is not under way.")
        return room

    def _negotiate(self, room: Room, role: str, run: Callable[[], Awaitable[None]]) -> None:
        self._post(room, Step(run, role=role, negotiation=True, failure=NEGOTIATION_FAILED))

    def _post(self, room: Room, step: Step) -> None:
        if room.post(step) or step.role is None:
            return
        if room.owner.closing:
            raise SignalingError("not_in_call", "This call is not under way.")
        self.services.spawn(
            room.tell(
                step.role,
                error_message("media_busy", "Too many media messages at once; slow down."),
            )
        )

    def _on_reading(self, call_id: uuid.UUID, consent: Consent | None, started: float) -> None:
        room = self.rooms.get(call_id)
        if room is None:
            return
        # Found gone: the patient's gate closes now, not when the owner comes to it; so does
        # the gate of each guest found gone.
        gone = consent is None or not consent.video_visit
        brake = room.brake_reading() if gone else room.reading_brake
        guests_gone = [
            key
            for key in room.participants
            if is_guest(key) and not _stands(None if consent is None else consent.guest(key))
        ]
        room.brake_guests_reading(guests_gone)
        guest_brakes = dict(room.guest_reading_brakes)
        room.post(
            Step(
                partial(consent_steps.reading, room, consent, started, brake, guest_brakes),
                key="reading",
            )
        )

    def _on_doubt(self, call_id: uuid.UUID, since: float) -> None:
        room = self.rooms.get(call_id)
        if room is not None:
            room.brake_doubt(since)
            room.post(Step(partial(consent_steps.doubt, room, since), key="doubt"))

    def _on_unknown(self, call_id: uuid.UUID, since: float) -> None:
        room = self.rooms.get(call_id)
        if room is not None:
            room.brake_doubt(since)
            room.post(Step(partial(consent_steps.unknown, room, since), key="unknown"))

    # The last step -------------------------------------------------------------------------

    async def _close(self, room: Room) -> None:
        if room.recorder is not None:
            await consent_steps.stop_recording(room, reason="ended", announce=False)
        for participant in room.participants.values():
            unsubscribe_all(room, participant)
        for publisher in room.publishers.values():
            for track in list(publisher.subscribers):
                publisher.unsubscribe(track)
        await self.registry.close_call(room.id)
        recordings = self.services.recordings
        if recordings is not None:
            await recordings.summary(room.id, room.stats.summary(transcoding=room.transcoding))
