"""Negotiation: a participant's offers, answers and candidates, and the relay's own offers.

A participant's client offers; the relay answers on a peer connection of its own whose
transceivers prefer the call's codec, so both legs of every path agree and frames pass through
without being decoded. An offer with the same ICE ufrag renegotiates the same connection; a new
ufrag (a reconnect, an ICE restart) gets a new one. When a subscriber needs a transceiver its
client did not offer, the relay sends an offer of its own once the connection is stable. Every
function here runs in the room's owner.
"""

from __future__ import annotations

import time
from typing import Any

from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from app.participants import MAX_PEOPLE
from media import hooks
from media.bandwidth import Downlink, Pacer
from media.consent import WITHOUT_CONSENT, stop_recording
from media.forwarding import (
    publish,
    subscribe_all,
    subscribe_everyone,
    tell_streams,
    unsubscribe_all,
)
from media.peers import Peer, ice_configuration, ice_ufrag
from media.room import KINDS, Participant, Room
from signaling.media import error as error_message
from signaling.media import video as video_message

# The codecs the relay forwards, in order of preference when the call has none yet.
VIDEO_CODECS = ("vp8", "h264")


async def on_offer(room: Room, role: str, sdp: str) -> None:
    taking_part = [key for key in room.present() if room.consent.takes_part(key)]
    if role not in taking_part and len(taking_part) >= MAX_PEOPLE:
        # Signaling admits no fifth person (the guests' slots); the relay holds the size too,
        # so that nothing reaching it another way makes a call it was not measured for. A
        # removed guest whose peer has not gone yet (no longer named) does not count.
        await room.tell(
            role, error_message("call_full", "The call has as many people as it may have.")
        )
        return
    participant = room.participant(role)
    ufrag = ice_ufrag(sdp)
    reuse = (
        participant.peer is not None
        and participant.remote_ufrag == ufrag
        and participant.peer.pc.connectionState not in ("failed", "closed")
    )
    if reuse and participant.relay_offer_pending:
        await room.tell(
            role, error_message("negotiation_in_progress", "Answer the relay's offer first.")
        )
        return
    if not reuse:
        await drop_connection(room, role)
        if room.recorder is not None and not room.may_record(role):
            # Joining a call being recorded without the recording consent: it stops first.
            await stop_recording(room, reason=WITHOUT_CONSENT)
        participant.peer = _new_peer(room, participant, _media_kinds(sdp))
        participant.remote_ufrag = ufrag
        participant.stalled = False
        participant.media_seen = False
        participant.left = False
        participant.streams_told = None
        participant.joined_at = time.monotonic()
    assert participant.peer is not None
    pc = participant.peer.pc
    _choose_video_codec(room, sdp)
    _prefer_codecs(room, pc)
    await pc.setRemoteDescription(
        RTCSessionDescription(sdp=room.services.filter.filter_sdp(sdp), type="offer")
    )
    _receive_what_is_sent(pc)
    for candidate in participant.pending_candidates:
        await _add_candidate(room, participant, candidate)
    participant.pending_candidates.clear()
    subscribe_everyone(room)
    await pc.setLocalDescription(await pc.createAnswer())
    # Whose is what first, so that the client knows it when its tracks arrive.
    await tell_streams(room, participant)
    await room.tell(role, {"type": "answer", "sdp": pc.localDescription.sdp})
    if room.recorder is not None and not reuse:
        # Joining a call being recorded: the indicator first, before anything else.
        await room.tell(role, {"type": "recording", "state": "on"})
    if not reuse:
        # Joining or coming back: whose video is off, and why.
        for other in room.participants.values():
            if other.sound_only:
                await room.tell(role, video_message(room.id, other.role, "paused", "requested"))
            elif other.downlink.paused and other is not participant:
                await room.tell(role, video_message(room.id, other.role, "paused", "bandwidth"))
    await _renegotiate_waiting(room)
    await tell_streams(room)


async def on_answer(room: Room, role: str, sdp: str) -> None:
    participant = room.participant(role)
    if participant.peer is None or not participant.relay_offer_pending:
        return
    await participant.peer.pc.setRemoteDescription(
        RTCSessionDescription(sdp=room.services.filter.filter_sdp(sdp), type="answer")
    )
    participant.relay_offer_pending = False
    await _renegotiate_waiting(room)
    await tell_streams(room)


async def on_candidate(room: Room, role: str, candidate: dict[str, Any] | None) -> None:
    participant = room.participant(role)
    if participant.peer is None or participant.peer.pc.remoteDescription is None:
        participant.pending_candidates.append(candidate)
        return
    await _add_candidate(room, participant, candidate)


async def leave(room: Room, role: str) -> None:
    """This participant leaves the call (until they offer again): their connection closes,
    and nobody's `streams` lists them any more."""
    await drop_connection(room, role)
    participant = room.participants.get(role)
    if participant is not None:
        participant.left = True
        await tell_streams(room)


async def drop_connection(room: Room, role: str) -> None:
    """This participant's media stops: their peer connection closes, the call goes on."""
    participant = room.participants.get(role)
    if participant is None or participant.peer is None:
        return
    unsubscribe_all(room, participant)
    for receiver in participant.sources:
        for publisher in room.publishers.values():
            publisher.detach_source(receiver)
    participant.sources.clear()
    participant.pending_candidates.clear()
    participant.relay_offer_pending = participant.renegotiate = False
    peer, participant.peer = participant.peer, None
    await room.services.registry.close(peer)


async def _add_candidate(
    room: Room, participant: Participant, candidate: dict[str, Any] | None
) -> None:
    assert participant.peer is not None
    line = (candidate or {}).get("candidate") or ""
    if not line:
        return  # the end of candidates: aiortc checks what it has
    if not room.services.filter.candidate_allowed(line):
        return
    parsed = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
    parsed.sdpMid = (candidate or {}).get("sdpMid")
    parsed.sdpMLineIndex = (candidate or {}).get("sdpMLineIndex")
    await participant.peer.pc.addIceCandidate(parsed)


async def _renegotiate_waiting(room: Room) -> None:
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
        subscribe_all(room, participant)
        participant.renegotiate = False
        participant.relay_offer_pending = True
        await peer.pc.setLocalDescription(await hooks.create_offer(peer.pc))
        await tell_streams(room, participant)
        await room.tell(participant.role, {"type": "offer", "sdp": peer.pc.localDescription.sdp})


def _receive_what_is_sent(pc: Any) -> None:
    """Where the client's offer now sends on a transceiver the relay added to send only (a
    browser's `addTrack` reuses one: a screen shared), the relay receives there too."""
    for transceiver in pc.getTransceivers():
        offered = getattr(transceiver, "_offerDirection", None)
        if offered in ("recvonly", "sendrecv") and transceiver.direction == "sendonly":
            transceiver.direction = "sendrecv"


def _new_peer(room: Room, participant: Participant, kinds: list[str]) -> Peer:
    peer = room.services.registry.create(
        room.id, participant.role, ice_configuration(room.relay_ice())
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
        publish(room, participant, peer, track)

    return peer


def _choose_video_codec(room: Room, sdp: str) -> None:
    if room.video_codec is not None:
        return
    offered = [c for c in _rtpmap_codecs(sdp) if c in VIDEO_CODECS]
    preferred = [c for c in VIDEO_CODECS if c in offered]
    if preferred:
        room.video_codec = preferred[0]


def _prefer_codecs(room: Room, pc: Any) -> None:
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
