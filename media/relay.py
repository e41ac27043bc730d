"""The media relay: one peer connection per participant, encoded frames forwarded between them.

Each call is a `Room`. A participant's client offers; the relay answers on a peer connection of
its own whose transceivers prefer the call's codec, so both legs of every path agree and frames
pass through without being decoded: the receiver's complete encoded frames (media.frames) go to
the participant's `Publisher`, which pushes them to a `ForwardedTrack` for each subscriber, which
the subscriber's `RTCRtpSender` packetizes as they are. Only where two legs could not agree on a
codec is a subscriber fed decoded frames (aiortc then encodes), and the call's stats say so.

Keyframes: a subscriber that joins, reconnects, falls behind or reports loss (PLI/FIR) gets one
from its publisher within a round trip, asked again while it has not come. Consent: nothing from
the patient is forwarded (or recorded) while their `video_visit` consent does not stand, or
while the relay cannot read it: given a `ConsentGuard`, the relay re-reads every call's consent
from the database several times a second and fails closed (media.gate); a recording starts
only on a fresh reading and keeps only what later readings confirm (media.recording). Peer
connections are owned by a `PeerRegistry`.

Bandwidth, sound first (media.bandwidth): each participant's `Downlink` estimates what the
relay can send them, their `Pacer` sends their audio at once and their video at that pace, and
every CONTROL_SECONDS the relay pauses or resumes video to them (telling everyone with a `video`
message) and tells each publisher, by REMB, to send no more than the least its active
subscribers can take, never more than its own leg carries. A participant may ask for sound only
(`video`): nothing video goes to them, and theirs goes to nobody.

Every public method returns at once: work for one participant runs in order on that
participant's own task, so a slow SDP step never holds up the signaling that called it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from app.config import Settings
from media import hooks, network
from media.bandwidth import MIN_BPS, Downlink, LossMeter, Pacer, Uplink
from media.frames import FrameAssembler
from media.gate import ConsentWatch, set_gate
from media.peers import Peer, PeerFilter, PeerRegistry, ice_configuration, ice_ufrag
from media.recording import Recorder, RecordingLog
from media.stats import CallStats, participant_stats
from media.tracks import ForwardedTrack, Publisher
from media.transcode import TranscodedTrack
from signaling import messages
from signaling.media import Consent, ConsentGuard, Emit, SignalingError

logger = logging.getLogger("televisit.media")

KINDS = ("audio", "video")
PATIENT = "patient"
# The codecs the relay forwards, in order of preference when the call has none yet.
VIDEO_CODECS = ("vp8", "h264")
STATS_SECONDS = 3.0
# A participant whose media stopped for this long, on a connection that claims to be up, is
# told to negotiate a new one (aiortc notices a dead path only after ~30 s by itself).
STALL_SECONDS = 3.0
WATCH_SECONDS = 1.0
# Bandwidth control: how often downlinks are looked at, how often a publisher hears its cap.
CONTROL_SECONDS = 0.25
REMB_SECONDS = 0.5
# Negotiation steps waiting for one participant (offers, answers, candidates); more are refused
# with `media_busy` (a client flooding candidates), except a `leave`, which replaces them.
WORK_LIMIT = 256
# While every subscriber of a publisher's video is paused, it is asked for this: what a try to
# resume starts at (media.bandwidth.RESUME_BPS), so the try's keyframe is a small one.
PAUSED_CAP_BPS = 64_000
# A device check's peer connection lives this long; at most this many run at once.
PROBE_SECONDS = 20.0
MAX_PROBES = 50

Subscription = ForwardedTrack | TranscodedTrack


@dataclass(eq=False)
class Participant:
    role: str
    peer: Peer | None = None
    remote_ufrag: str | None = None
    sources: list[Any] = field(default_factory=list)  # receivers feeding our publishers
    # (publisher role, kind) -> the track this participant's sender carries
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    relay_offer_pending: bool = False
    renegotiate: bool = False
    pending_candidates: list[dict[str, Any] | None] = field(default_factory=list)
    work: asyncio.Queue[Callable[[], Awaitable[None]]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=WORK_LIMIT)
    )
    worker: asyncio.Task[None] | None = None
    joined_at: float = field(default_factory=time.monotonic)
    media_seen: bool = False
    stalled: bool = False
    sound_only: bool = False  # asked for: no video to them, theirs to nobody
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
        relay: Relay,
    ) -> None:
        self.id = call_id
        self.consent = consent
        self.ice_servers = ice_servers
        self.relay = relay
        self.participants: dict[str, Participant] = {}
        self.publishers: dict[tuple[str, str], Publisher] = {}
        self.video_codec: str | None = None
        self.stats = CallStats()
        self.byte_marks: dict[str, tuple[int, float]] = {}
        self.recorder: Recorder | None = None
        # Consent (media.gate): when the latest good reading began, whether it is too old to
        # trust, whether signaling was told that the call is over.
        self.consent_read_at = time.monotonic()
        self.in_doubt = False
        self.over_reported = False

    @property
    def patient_allowed(self) -> bool:
        return self.consent.video_visit and not self.in_doubt

    def publisher(self, role: str, kind: str) -> Publisher:
        key = (role, kind)
        publisher = self.publishers.get(key)
        if publisher is None:
            publisher = self.publishers[key] = Publisher(role, kind)
            publisher.allowed = role != PATIENT or self.patient_allowed
        return publisher

    @property
    def transcoding(self) -> bool:
        return any(
            isinstance(track, TranscodedTrack)
            for participant in self.participants.values()
            for track in participant.subscriptions.values()
        )


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
        self.emit = emit
        self.recordings = recordings
        self.registry = registry or PeerRegistry()
        self.filter = PeerFilter(settings.media_peer_allow)
        self.rooms: dict[uuid.UUID, Room] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._probes: set[Peer] = set()
        # Without a guard (a relay on its own, in tests) the consent is what signaling says.
        self.guard = guard
        self._consent_watch = (
            None
            if guard is None
            else ConsentWatch(
                guard,
                lambda: list(self.rooms.values()),
                on_reading=self._on_reading,
                on_doubt=self._on_doubt,
            )
        )
        self._consent_task: asyncio.Task[None] | None = None

    # MediaPlane ----------------------------------------------------------------------------

    def has_call(self, call_id: uuid.UUID) -> bool:
        return call_id in self.rooms

    async def open_call(
        self, call_id: uuid.UUID, *, consent: Consent, ice_servers: list[dict[str, Any]]
    ) -> None:
        if call_id not in self.rooms:
            self.rooms[call_id] = Room(
                call_id, consent=consent, ice_servers=ice_servers, relay=self
            )
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="relay-watch")
        if self._consent_watch is not None and self._consent_task is None:
            self._consent_task = asyncio.create_task(
                self._consent_watch.run(), name="relay-consent"
            )

    async def offer(self, call_id: uuid.UUID, role: str, sdp: str) -> None:
        room = self._room(call_id)
        self._enqueue(room, role, lambda: self._on_offer(room, role, sdp))

    async def answer(self, call_id: uuid.UUID, role: str, sdp: str) -> None:
        room = self._room(call_id)
        self._enqueue(room, role, lambda: self._on_answer(room, role, sdp))

    async def candidate(
        self, call_id: uuid.UUID, role: str, candidate: dict[str, Any] | None
    ) -> None:
        room = self._room(call_id)
        self._enqueue(room, role, lambda: self._on_candidate(room, role, candidate))

    async def leave(self, call_id: uuid.UUID, role: str) -> None:
        room = self._room(call_id)
        self._enqueue(room, role, lambda: self._drop_connection(room, role), teardown=True)

    async def consent(self, call_id: uuid.UUID, consent: Consent) -> None:
        """A decision as announced: applied at once (the patient's frames stop before this
        returns), unless a reading already brought a newer one."""
        room = self.rooms.get(call_id)
        if room is None or (consent.seq and consent.seq < room.consent.seq):
            return
        await self._apply_consent(room, consent)

    async def video(self, call_id: uuid.UUID, role: str, *, enabled: bool) -> None:
        """`role` asks for sound only (False) or for video again (True); everyone is told."""
        room = self._room(call_id)
        participant = self._participant(room, role)
        if participant.sound_only == (not enabled):
            return
        participant.sound_only = not enabled
        self._set_incoming_video(room, participant)
        publisher = room.publishers.get((role, "video"))
        if publisher is not None:
            publisher.forwarding = enabled
            if enabled:
                for track in publisher.subscribers:
                    track.need_keyframe()
                publisher.ask_keyframe()
        message = messages.video(room.id, role, "resumed" if enabled else "paused", "requested")
        await self._announce(room, message)
        if enabled and participant.downlink.paused:
            # Their link still cannot carry video: say so, or the pause would go unexplained.
            await self._announce(room, messages.video(room.id, role, "paused", "bandwidth"))

    def _set_incoming_video(self, room: Room, participant: Participant) -> None:
        """Pause or resume every video going to this participant, as their state says."""
        off = participant.sound_only or participant.downlink.paused
        for (role, kind), track in participant.subscriptions.items():
            if kind != "video" or not isinstance(track, ForwardedTrack) or track.paused == off:
                continue
            if off:
                track.pause()
            else:
                track.resume()
                room.publishers[(role, kind)].ask_keyframe()

    async def record(self, call_id: uuid.UUID, action: str) -> None:
        room = self._room(call_id)
        if action == "start":
            await self._start_recording(room)
            return
        if room.recorder is not None:
            await self._read_consent_now(room)  # keeps the recording's end, if consent stood
        await self._stop_recording(room, reason="stopped")

    async def close_call(self, call_id: uuid.UUID) -> None:
        room = self.rooms.pop(call_id, None)
        if room is None:
            return
        if room.recorder is not None:
            await self._stop_recording(room, reason="ended", announce=False)
        for participant in room.participants.values():
            if participant.worker is not None:
                participant.worker.cancel()
            self._unsubscribe_all(room, participant)
        for publisher in room.publishers.values():
            for track in list(publisher.subscribers):
                publisher.unsubscribe(track)
        await self.registry.close_call(call_id)
        if self.recordings is not None:
            await self.recordings.summary(call_id, room.stats.summary(transcoding=room.transcoding))

    async def connection_test(self, sdp: str) -> str:
        """Answer a device check's offer on a short-lived peer connection of its own.

        The page learns whether media can reach this relay directly or only through TURN.
        """
        if len(self._probes) >= MAX_PROBES:
            raise SignalingError("busy", "Too many connection tests at once; try again.")
        stun = [{"urls": list(self.settings.stun_urls)}] if self.settings.stun_urls else []
        peer = self.registry.create(uuid.uuid4(), "probe", ice_configuration(stun))
        self._probes.add(peer)
        loop = asyncio.get_running_loop()
        loop.call_later(PROBE_SECONDS, lambda: self._spawn(self._end_probe(peer)))
        try:
            await peer.pc.setRemoteDescription(
                RTCSessionDescription(sdp=self.filter.filter_sdp(sdp), type="offer")
            )
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        except Exception:
            await self._end_probe(peer)
            raise SignalingError("invalid_offer", "That offer could not be answered.") from None
        return str(peer.pc.localDescription.sdp)

    async def _end_probe(self, peer: Peer) -> None:
        self._probes.discard(peer)
        await self.registry.close(peer)

    async def shutdown(self) -> None:
        for call_id in list(self.rooms):
            await self.close_call(call_id)
        for task in (self._watcher, self._consent_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.registry.close_all()

    # Per-participant work ------------------------------------------------------------------

    def _room(self, call_id: uuid.UUID) -> Room:
        room = self.rooms.get(call_id)
        if room is None:
            raise SignalingError("not_in_call", "This call is not under way.")
        return room

    def _participant(self, room: Room, role: str) -> Participant:
        participant = room.participants.get(role)
        if participant is None:
            participant = room.participants[role] = Participant(role)
        return participant

    def _enqueue(
        self,
        room: Room,
        role: str,
        step: Callable[[], Awaitable[None]],
        *,
        teardown: bool = False,
    ) -> None:
        participant = self._participant(room, role)
        if participant.work.full():
            if not teardown:
                logger.warning("relay work queue full", extra={"role": role})
                self._spawn(
                    self.emit(
                        room.id,
                        role,
                        messages.error("media_busy", "Too many media messages at once; slow down."),
                    )
                )
                return
            while not participant.work.empty():  # what would have been negotiated is moot
                participant.work.get_nowait()
        participant.work.put_nowait(step)
        if participant.worker is None or participant.worker.done():
            participant.worker = asyncio.create_task(
                self._work(room, participant), name=f"relay-{role}"
            )

    async def _work(self, room: Room, participant: Participant) -> None:
        while not participant.work.empty():
            step = participant.work.get_nowait()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except SignalingError as exc:
                await self.emit(room.id, participant.role, messages.error(exc.code, exc.message))
            except Exception as exc:
                logger.warning(
                    "media negotiation failed",
                    extra={"role": participant.role, "error_type": type(exc).__name__},
                )
                await self.emit(
                    room.id,
                    participant.role,
                    messages.error(
                        "negotiation_failed",
                        "The relay could not use that description; offer again.",
                    ),
                )

    # Negotiation ---------------------------------------------------------------------------

    async def _on_offer(self, room: Room, role: str, sdp: str) -> None:
        participant = self._participant(room, role)
        ufrag = ice_ufrag(sdp)
        reuse = (
            participant.peer is not None
            and participant.remote_ufrag == ufrag
            and participant.peer.pc.connectionState not in ("failed", "closed")
        )
        if reuse and participant.relay_offer_pending:
            await self.emit(
                room.id,
                role,
                messages.error("negotiation_in_progress", "Answer the relay's offer first."),
            )
            return
        if not reuse:
            await self._drop_connection(room, role)
            participant.peer = self._new_peer(room, participant, _media_kinds(sdp))
            participant.remote_ufrag = ufrag
            participant.stalled = False
            participant.media_seen = False
            participant.joined_at = time.monotonic()
        assert participant.peer is not None
        pc = participant.peer.pc
        self._choose_video_codec(room, sdp)
        self._prefer_codecs(room, pc)
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=self.filter.filter_sdp(sdp), type="offer")
        )
        for candidate in participant.pending_candidates:
            await self._add_candidate(participant, candidate)
        participant.pending_candidates.clear()
        self._subscribe_everyone(room)
        await pc.setLocalDescription(await pc.createAnswer())
        await self.emit(room.id, role, {"type": "answer", "sdp": pc.localDescription.sdp})
        if room.recorder is not None and not reuse:
            # Joining a call being recorded: the indicator first, before anything else.
            await self.emit(room.id, role, {"type": "recording", "state": "on"})
        if not reuse:
            # Joining or coming back: whose video is off, and why.
            for other in room.participants.values():
                if other.sound_only:
                    await self.emit(
                        room.id, role, messages.video(room.id, other.role, "paused", "requested")
                    )
                elif other.downlink.paused and other is not participant:
                    await self.emit(
                        room.id, role, messages.video(room.id, other.role, "paused", "bandwidth")
                    )
        await self._renegotiate_waiting(room)

    async def _on_answer(self, room: Room, role: str, sdp: str) -> None:
        participant = self._participant(room, role)
        if participant.peer is None or not participant.relay_offer_pending:
            return
        await participant.peer.pc.setRemoteDescription(
            RTCSessionDescription(sdp=self.filter.filter_sdp(sdp), type="answer")
        )
        participant.relay_offer_pending = False
        await self._renegotiate_waiting(room)

    async def _on_candidate(self, room: Room, role: str, candidate: dict[str, Any] | None) -> None:
        participant = self._participant(room, role)
        if participant.peer is None or participant.peer.pc.remoteDescription is None:
            participant.pending_candidates.append(candidate)
            return
        await self._add_candidate(participant, candidate)

    async def _add_candidate(
        self, participant: Participant, candidate: dict[str, Any] | None
    ) -> None:
        assert participant.peer is not None
        line = (candidate or {}).get("candidate") or ""
        if not line:
            return  # the end of candidates: aiortc checks what it has
        if not self.filter.candidate_allowed(line):
            return
        parsed = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
        parsed.sdpMid = (candidate or {}).get("sdpMid")
        parsed.sdpMLineIndex = (candidate or {}).get("sdpMLineIndex")
        await participant.peer.pc.addIceCandidate(parsed)

    async def _renegotiate_waiting(self, room: Room) -> None:
        """Send the relay's own offer to whoever needs one and has no offer outstanding."""
        for participant in room.participants.values():
            peer = participant.peer
            if (
                peer is None
                or not participant.renegotiate
                or participant.relay_offer_pending
                or peer.pc.signalingState != "stable"
            ):
                continue
            self._subscribe_all(room, participant)
            participant.renegotiate = False
            participant.relay_offer_pending = True
            await peer.pc.setLocalDescription(await peer.pc.createOffer())
            await self.emit(
                room.id, participant.role, {"type": "offer", "sdp": peer.pc.localDescription.sdp}
            )

    def _new_peer(self, room: Room, participant: Participant, kinds: list[str]) -> Peer:
        peer = self.registry.create(
            room.id, participant.role, ice_configuration(self._relay_ice(room))
        )
        participant.downlink = Downlink()  # a new connection: what it carries is learnt anew
        participant.pacer = Pacer(participant.downlink)
        participant.senders.clear()
        # One transceiver per media section, in the offer's order: the bundled transport is the
        # first transceiver's, and must be the one of the offer's first section.
        for kind in kinds:
            peer.pc.addTransceiver(kind, direction="sendrecv")

        @peer.pc.on("track")
        def _track(track: Any) -> None:
            self._publish(room, participant, peer, track)

        return peer

    def _relay_ice(self, room: Room) -> list[dict[str, Any]]:
        # The relay itself needs STUN at most (to learn its public address), never TURN.
        return [s for s in room.ice_servers if "username" not in s]

    def _choose_video_codec(self, room: Room, sdp: str) -> None:
        if room.video_codec is not None:
            return
        offered = [c for c in _rtpmap_codecs(sdp) if c in VIDEO_CODECS]
        preferred = [c for c in VIDEO_CODECS if c in offered]
        if preferred:
            room.video_codec = preferred[0]

    def _prefer_codecs(self, room: Room, pc: Any) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "video" or transceiver.mid is not None:
                continue
            capabilities = RTCRtpSender.getCapabilities("video").codecs
            first = room.video_codec or VIDEO_CODECS[0]
            ordered = sorted(
                capabilities,
                key=lambda c: (
                    _codec_name(c.mimeType) not in (first, "rtx"),
                    _codec_name(c.mimeType) == "rtx",
                ),
            )
            transceiver.setCodecPreferences(ordered)

    # Publishing and subscribing ------------------------------------------------------------

    def _publish(self, room: Room, participant: Participant, peer: Peer, track: Any) -> None:
        """A participant's incoming track: tap its receiver into their publisher."""
        transceiver = next(
            (t for t in peer.pc.getTransceivers() if t.receiver.track is track), None
        )
        if transceiver is None or track.kind not in KINDS:
            return
        receiver = transceiver.receiver
        publisher = room.publisher(participant.role, track.kind)

        def sink(codec: Any, frame: Any) -> None:
            participant.media_seen = True
            publisher.on_frame(codec.name.lower(), frame, receiver)

        assembler = FrameAssembler(track.kind, hooks.codec_of(receiver), sink)
        hooks.tap_receiver(receiver, assembler, sink)
        publisher.attach_source(
            receiver,
            lambda: self._spawn(hooks.request_keyframe(receiver)),
            waiting=lambda: assembler.waiting_keyframe,
        )
        if track.kind == "video":
            publisher.leg_bps = None
            hooks.cap_remb(receiver, cap=lambda: publisher.remb_cap, heard=publisher.heard_leg)
        participant.sources.append(receiver)

    def _subscribe_everyone(self, room: Room) -> None:
        for subscriber in room.participants.values():
            self._subscribe_all(room, subscriber)

    def _subscribe_all(self, room: Room, subscriber: Participant) -> None:
        """Subscribe a participant to every other participant's publishers."""
        if subscriber.peer is None:
            return
        for (role, kind), publisher in list(room.publishers.items()):
            if role != subscriber.role and (role, kind) not in subscriber.subscriptions:
                self._subscribe(room, subscriber, publisher)

    def _subscribe(self, room: Room, subscriber: Participant, publisher: Publisher) -> None:
        assert subscriber.peer is not None
        pc = subscriber.peer.pc
        transceiver = self._free_transceiver(pc, publisher.kind)
        if transceiver is None:
            subscriber.renegotiate = True
            if pc.signalingState != "stable":
                return  # answering an offer: the new transceiver comes with our own offer
            transceiver = pc.addTransceiver(publisher.kind, direction="sendonly")
        track: Subscription
        leg_codec = hooks.negotiated_codec(transceiver)
        source_codec = self._source_codec(room, publisher)
        if leg_codec and source_codec and leg_codec != source_codec:
            track = TranscodedTrack(publisher, source_codec=source_codec)
        else:
            track = publisher.subscribe()
        sender = transceiver.sender
        sender.replaceTrack(track)
        downlink = subscriber.downlink
        if publisher.kind == "video":
            hooks.on_feedback(
                sender,
                keyframe=partial(_keyframe_asked, track, publisher),
                remb=downlink.on_remb,
                loss=LossMeter(downlink.on_loss),
            )
            if isinstance(track, ForwardedTrack) and (subscriber.sound_only or downlink.paused):
                track.pause()
        else:
            # Loss on the audio speaks for the link only while no video goes that way.
            hooks.on_feedback(
                sender,
                keyframe=publisher.ask_keyframe,
                loss=LossMeter(lambda loss: downlink.on_loss(loss) if downlink.paused else None),
            )
        subscriber.subscriptions[(publisher.role, publisher.kind)] = track
        subscriber.senders[(publisher.role, publisher.kind)] = sender
        self._pace(subscriber)

    def _free_transceiver(self, pc: Any, kind: str) -> RTCRtpTransceiver | None:
        transceiver: RTCRtpTransceiver
        for transceiver in pc.getTransceivers():
            if (
                transceiver.kind == kind
                and _sends_nothing(transceiver.sender)
                and transceiver.direction in ("sendrecv", "sendonly")
                and transceiver.mid is not None
                and not _offer_was_sendonly(transceiver)
            ):
                return transceiver
        return None

    def _source_codec(self, room: Room, publisher: Publisher) -> str | None:
        participant = room.participants.get(publisher.role)
        if participant is None or participant.peer is None:
            return None
        for transceiver in participant.peer.pc.getTransceivers():
            if transceiver.kind == publisher.kind and transceiver.receiver in participant.sources:
                return hooks.negotiated_codec(transceiver)
        return None

    def _unsubscribe_all(self, room: Room, participant: Participant) -> None:
        for key, track in participant.subscriptions.items():
            room.publishers[key].unsubscribe(track)
        participant.subscriptions.clear()
        participant.senders.clear()

    def _pace(self, participant: Participant) -> None:
        """Put the participant's pacer in front of what the relay sends them (idempotent)."""
        pacer = participant.pacer
        if pacer is None:
            return
        for (_role, kind), sender in participant.senders.items():
            ssrcs = pacer.video_ssrcs if kind == "video" else pacer.audio_ssrcs
            ssrcs.add(sender._ssrc)
            if kind == "video":
                rtx = hooks.rtx_ssrc(sender)
                if rtx is not None:
                    pacer.rtx_ssrcs.add(rtx)
                ext_id = hooks.abs_send_time_id(sender)
                if ext_id is not None:
                    pacer.abs_send_time_ids[sender._ssrc] = ext_id
                hooks.gate_retransmissions(sender, pacer)
            transport = sender.transport
            if transport is not None:
                hooks.pace_transport(transport, pacer)

    async def _drop_connection(self, room: Room, role: str) -> None:
        """This participant's media stops: their peer connection closes, the call goes on."""
        participant = room.participants.get(role)
        if participant is None or participant.peer is None:
            return
        self._unsubscribe_all(room, participant)
        for receiver in participant.sources:
            for publisher in room.publishers.values():
                publisher.detach_source(receiver)
        participant.sources.clear()
        participant.pending_candidates.clear()
        participant.relay_offer_pending = participant.renegotiate = False
        peer, participant.peer = participant.peer, None
        await self.registry.close(peer)

    # Recording -----------------------------------------------------------------------------

    async def _start_recording(self, room: Room) -> None:
        if room.recorder is not None or self.recordings is None:
            return
        # The consent as committed now, not as last announced: a withdrawal racing this request
        # is either seen here or stops the recording, and what came after it is never written.
        if not await self._read_consent_now(room) or not room.consent.recording:
            await self.emit(
                room.id,
                "clinician",
                messages.error(
                    "recording_consent_required",
                    "Every participant must consent to recording first.",
                ),
            )
            if self.guard is not None:
                self._spawn(self.guard.recording_refused(room.id))
            return
        recorder = Recorder(
            self.settings.recordings_dir,
            room.id,
            room.publishers.values(),
            room.video_codec,
            key=self.settings.recordings_seal_key(),
            held=self.guard is not None,
        )
        room.recorder = recorder
        await self.recordings.started(room.id, recorder.id, recorder.path.name)
        for publisher in room.publishers.values():
            publisher.ask_keyframe()
        await self._announce(room, {"type": "recording", "state": "on"})

    async def _stop_recording(self, room: Room, *, reason: str, announce: bool = True) -> None:
        recorder, room.recorder = room.recorder, None
        if recorder is None:
            return
        size = await recorder.close()
        if self.recordings is not None:
            await self.recordings.stopped(room.id, recorder.id, size, reason)
        if announce:
            await self._announce(room, {"type": "recording", "state": "off"})

    # Consent (media.gate) -------------------------------------------------------------------

    async def _apply_consent(self, room: Room, consent: Consent) -> None:
        """The patient's standing decisions, newer than the room's: gate, recording, the call."""
        previous, room.consent = room.consent, consent
        self._gate(room)
        if room.recorder is not None:
            if not consent.recording:
                await self._stop_recording(room, reason="consent_withdrawn")
            elif consent.seq != previous.seq:
                room.recorder.drop_unconfirmed()  # a decision came in: what came since is unsure
        if not consent.video_visit and self.guard is not None and not room.over_reported:
            room.over_reported = True
            self._spawn(self.guard.call_over(room.id))

    def _gate(self, room: Room) -> None:
        for (role, _kind), publisher in room.publishers.items():
            if role == PATIENT:
                set_gate(publisher, room.patient_allowed)

    async def _on_reading(
        self, call_id: uuid.UUID, consent: Consent | None, started: float
    ) -> None:
        """A reading begun at `started` found this (None: the call is no longer under way)."""
        room = self.rooms.get(call_id)
        if room is None:
            return
        room.consent_read_at = max(room.consent_read_at, started)
        room.in_doubt = False
        if consent is None:
            await self._apply_consent(room, Consent(False, False, room.consent.seq))
        elif consent.seq >= room.consent.seq:
            await self._apply_consent(room, consent)
        else:
            self._gate(room)  # older than an announced decision: the gate as that one left it
        if (
            room.recorder is not None
            and consent is not None
            and consent.seq == room.consent.seq
            and consent.recording
        ):
            room.recorder.confirm(started)

    async def _on_doubt(self, call_id: uuid.UUID) -> None:
        """No reading for too long: nothing of the patient's goes anywhere until one answers."""
        room = self.rooms.get(call_id)
        if room is None or room.in_doubt:
            return
        room.in_doubt = True
        self._gate(room)
        if room.recorder is not None:
            await self._stop_recording(room, reason="consent_unknown")

    async def _read_consent_now(self, room: Room) -> bool:
        """Apply a reading made now; False when none could be made (the relay then doubts)."""
        if self._consent_watch is None:
            return True  # a relay on its own: signaling's word is the consent
        started = time.monotonic()
        found = await self._consent_watch.read([room.id])
        if found is None or self.rooms.get(room.id) is not room:
            return False
        await self._on_reading(room.id, found.get(room.id), started)
        return True

    async def _announce(self, room: Room, message: dict[str, Any]) -> None:
        for role in {*room.participants, "clinician", PATIENT}:
            await self.emit(room.id, role, message)

    # Health: stats every few seconds, stalls within a few ----------------------------------

    async def _watch(self) -> None:
        last_stats = last_watch = time.monotonic()
        while True:
            await asyncio.sleep(CONTROL_SECONDS)
            try:
                now = time.monotonic()
                for room in list(self.rooms.values()):
                    await self._control(room, now)
                if now - last_watch < WATCH_SECONDS:
                    continue
                last_watch = now
                for room in list(self.rooms.values()):
                    await self._check_stalls(room, now)
                if now - last_stats >= STATS_SECONDS:
                    last_stats = now
                    for room in list(self.rooms.values()):
                        await self._send_stats(room, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("relay watch failed", extra={"error_type": type(exc).__name__})

    async def _control(self, room: Room, now: float) -> None:
        """Bandwidth: pause or resume video to each participant, cap each publisher."""
        for participant in list(room.participants.values()):
            if participant.peer is None:
                continue
            self._pace(participant)  # senders negotiated since: their SSRCs and extensions
            change = participant.downlink.tick(now)
            if logger.isEnabledFor(logging.DEBUG) and now - participant.described_at >= 1.0:
                participant.described_at = now
                self._describe(room, participant, now)
            if change is None:
                continue
            self._set_incoming_video(room, participant)
            if not participant.sound_only:
                message = messages.video(room.id, participant.role, change, "bandwidth")
                await self._announce(room, message)
        for (role, kind), publisher in room.publishers.items():
            if kind != "video":
                continue
            publisher.repeat_keyframe_request(now)
            cap = self._publisher_cap(room, role, now)
            own = self._uplink_cap(room, role, publisher, now)
            publisher.remb_cap = own if cap is None else cap if own is None else min(cap, own)
            if publisher.remb_cap is None or now - publisher.remb_sent_at < REMB_SECONDS:
                continue
            receiver = publisher.source
            if receiver is not None:
                publisher.remb_sent_at = now
                bps = min(publisher.remb_cap, publisher.leg_bps or publisher.remb_cap)
                self._spawn(hooks.send_remb(receiver, bps))  # type: ignore[arg-type]

    def _describe(self, room: Room, participant: Participant, now: float) -> None:
        """A debug line: what the relay estimates and does for this participant's link."""
        link: dict[str, Any] = participant.downlink.describe(now)
        if participant.pacer is not None:
            link["backlog_ms"] = round(participant.pacer.backlog(now) * 1000)
        publisher = room.publishers.get((participant.role, "video"))
        if publisher is not None:
            link["own_cap_kbps"] = publisher.remb_cap and round(publisher.remb_cap / 1000)
            link["own_leg_kbps"] = publisher.leg_bps and round(publisher.leg_bps / 1000)
            link["own_waits"] = publisher.someone_waits()
        link["waiting_keyframe"] = any(
            isinstance(track, ForwardedTrack) and track.waiting_keyframe
            for (_role, kind), track in participant.subscriptions.items()
            if kind == "video"
        )
        logger.debug("link", extra={"role": participant.role, "link": link})

    def _uplink_cap(self, room: Room, role: str, publisher: Publisher, now: float) -> float | None:
        """What `role`'s own leg carries for video, as its losses tell (None: no loss seen)."""
        participant = room.participants.get(role)
        receiver = publisher.source
        if participant is None or receiver is None:
            return None
        audio = room.publishers.get((role, "audio"))
        participant.uplink.arrived(publisher.bytes, audio.bytes if audio else 0, now)
        counts = hooks.incoming_counts(receiver)  # type: ignore[arg-type]
        if counts is not None:
            if participant.uplink_meter is None or participant.uplink_meter[0] is not receiver:
                participant.uplink_meter = (receiver, LossMeter(participant.uplink.on_loss))
            participant.uplink_meter[1](*counts, now=now)
        return participant.uplink.video_cap_bps

    def _publisher_cap(self, room: Room, role: str, now: float) -> float | None:
        """What `role`'s video may be: the least its receiving subscribers can take."""
        subscribers = [
            p
            for p in room.participants.values()
            if p.role != role and p.peer is not None and (role, "video") in p.subscriptions
        ]
        if not subscribers:
            return None
        budgets = [
            p.downlink.publisher_cap_bps(now)
            for p in subscribers
            if not (p.sound_only or p.downlink.paused)
        ]
        if not budgets:
            return PAUSED_CAP_BPS
        return max(MIN_BPS, min(budgets))

    async def _check_stalls(self, room: Room, now: float) -> None:
        for participant in list(room.participants.values()):
            peer = participant.peer
            if peer is None or participant.stalled:
                continue
            state = peer.pc.connectionState
            last = max(
                (
                    p.last_frame_at
                    for (r, _k), p in room.publishers.items()
                    if r == participant.role
                ),
                default=0.0,
            )
            silent = participant.media_seen and now - last > STALL_SECONDS
            never = not participant.media_seen and now - participant.joined_at > 3 * STALL_SECONDS
            if state == "failed" or silent or (never and state != "connected"):
                participant.stalled = True
                await self._drop_connection(room, participant.role)
                # Over signaling (if their socket lives): negotiate a new peer connection.
                await self.emit(
                    room.id, participant.role, self._negotiate_again(room, participant.role)
                )

    def _negotiate_again(self, room: Room, role: str) -> dict[str, Any]:
        """The contract's way to say "negotiate a new peer connection for this call"."""
        if role == PATIENT:
            return messages.admitted(room.ice_servers)
        return messages.call(room.id, room.ice_servers)

    async def _send_stats(self, room: Room, now: float) -> None:
        rows = []
        for participant in room.participants.values():
            if participant.peer is None:
                continue
            row = await participant_stats(
                participant.role,
                participant.peer.pc,
                room,
                room.byte_marks,
                now,
                available_kbps=participant.downlink.available_kbps,
            )
            room.stats.add(row)
            rows.append(row.message())
        if rows:
            await self.emit(
                room.id,
                "clinician",
                {
                    "type": "stats",
                    "appointment_id": str(room.id),
                    "participants": rows,
                    "mode": "transcoding" if room.transcoding else "forwarding",
                },
            )

    def _spawn(self, coroutine: Awaitable[None] | None) -> None:
        if coroutine is None:
            return
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _media_kinds(sdp: str) -> list[str]:
    """The kinds of the offer's audio and video sections, in order."""
    kinds = [line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")]
    return [kind for kind in kinds if kind in KINDS]


def _codec_name(mime_type: str) -> str:
    return mime_type.split("/")[-1].lower()


def _rtpmap_codecs(sdp: str) -> list[str]:
    names = []
    for line in sdp.splitlines():
        if line.startswith("a=rtpmap:"):
            names.append(line.split(" ", 1)[1].split("/")[0].lower())
    return names


def _offer_was_sendonly(transceiver: RTCRtpTransceiver) -> bool:
    """The client sends here but receives nothing: the relay must not send on it."""
    return (
        transceiver.currentDirection == "recvonly"
        or getattr(transceiver, "_offerDirection", None) == "recvonly"
    )


def _keyframe_asked(track: Subscription, publisher: Publisher) -> None:
    """A subscriber's PLI: its decoder drops every frame until a keyframe, so stop sending them.

    What would still go out is of no use to it and competes with the keyframe for its link.
    """
    if isinstance(track, ForwardedTrack):
        track.need_keyframe()
    publisher.ask_keyframe()


def _sends_nothing(sender: RTCRtpSender) -> bool:
    track: object = sender.track  # aiortc types it as always set; it is None until given one
    return track is None
