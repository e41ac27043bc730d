"""Publishing and subscribing: whose frames go to whom, on which sender, at what pace.

A participant's incoming tracks feed their `Publisher`s; every other participant subscribes
to each, on a free transceiver of their own peer connection (or a new one, which the relay's
own offer brings: media.negotiation). Where the two legs agree on a codec the subscriber gets
the publisher's encoded frames as they are (`ForwardedTrack`); where they could not, decoded
frames (`TranscodedTrack`). Publishers are keyed (participant, feed): "audio", "video" (the
camera) and the clinician's "screen". Each participant is told what their sending transceivers
carry (`streams`). Every function here runs in the room's owner.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver

from app.participants import CLINICIAN
from media import consent as consent_steps
from media import hooks
from media.bandwidth import LossMeter
from media.frames import FrameAssembler
from media.peers import Peer
from media.room import KINDS, Participant, Room, Subscription, kind_of
from media.tracks import ForwardedTrack, Publisher
from media.transcode import TranscodedTrack
from signaling.media import SignalingError
from signaling.media import video as video_message


def publish(room: Room, participant: Participant, peer: Peer, track: Any) -> None:
    """A participant's incoming track: tap its receiver into their publisher.

    Their first video is their camera; the clinician's second is their shared screen (a
    publisher of its own, forwarded while they say they share: `set_screen`). Any other
    second video is not forwarded.
    """
    transceiver = next((t for t in peer.pc.getTransceivers() if t.receiver.track is track), None)
    if transceiver is None or track.kind not in KINDS:
        return
    receiver = transceiver.receiver
    feed = _feed_of(room, participant, track.kind)
    if feed is None:
        # Not forwarded; tapped all the same, or aiortc would decode it into a queue nobody reads.
        hooks.tap_receiver(
            receiver, FrameAssembler(track.kind, hooks.codec_of(receiver), _drop), _drop
        )
        return
    publisher = room.publisher(participant.role, feed)
    if feed == "screen":
        publisher.forwarding = participant.screen and not participant.sound_only

    def sink(codec: Any, frame: Any) -> None:
        participant.media_seen = True
        publisher.on_frame(codec.name.lower(), frame, receiver)
        if room.recorder is not None:
            consent_steps.ask_roll(room, publisher, frame.received)

    assembler = FrameAssembler(track.kind, hooks.codec_of(receiver), sink)
    hooks.tap_receiver(receiver, assembler, sink)
    publisher.attach_source(
        receiver,
        lambda: room.services.spawn(hooks.request_keyframe(receiver)),
        waiting=lambda: assembler.waiting_keyframe,
    )
    if track.kind == "video":
        publisher.leg_bps = None
        hooks.cap_remb(receiver, cap=lambda: publisher.remb_cap, heard=publisher.heard_leg)
    participant.sources.append(receiver)


def _drop(_codec: Any, _frame: Any) -> None:
    return None


def _feed_of(room: Room, participant: Participant, kind: str) -> str | None:
    if kind == "audio":
        return "audio"
    camera = room.publishers.get((participant.role, "video"))
    if camera is None or camera.source not in participant.sources:
        return "video"  # the first video of this connection: the camera
    return "screen" if participant.role == CLINICIAN else None


def subscribe_everyone(room: Room) -> None:
    for subscriber in room.participants.values():
        subscribe_all(room, subscriber)


def subscribe_all(room: Room, subscriber: Participant) -> None:
    """Subscribe a participant to every other participant's publishers."""
    if subscriber.peer is None:
        return
    for (role, feed), publisher in list(room.publishers.items()):
        if role != subscriber.role and (role, feed) not in subscriber.subscriptions:
            _subscribe(room, subscriber, publisher)


def _subscribe(room: Room, subscriber: Participant, publisher: Publisher) -> None:
    assert subscriber.peer is not None
    pc = subscriber.peer.pc
    transceiver = _free_transceiver(pc, publisher.kind)
    if transceiver is None:
        subscriber.renegotiate = True
        if pc.signalingState != "stable":
            return  # answering an offer: the new transceiver comes with our own offer
        transceiver = pc.addTransceiver(publisher.kind, direction="sendonly")
    track: Subscription
    leg_codec = hooks.negotiated_codec(transceiver)
    source_codec = _source_codec(room, publisher)
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
    subscriber.subscriptions[(publisher.role, publisher.feed)] = track
    subscriber.senders[(publisher.role, publisher.feed)] = sender
    pace(subscriber)


def _free_transceiver(pc: Any, kind: str) -> RTCRtpTransceiver | None:
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


def _source_codec(room: Room, publisher: Publisher) -> str | None:
    participant = room.participants.get(publisher.role)
    if participant is None or participant.peer is None:
        return None
    for transceiver in participant.peer.pc.getTransceivers():
        if transceiver.kind == publisher.kind and transceiver.receiver in participant.sources:
            return hooks.negotiated_codec(transceiver)
    return None


def unsubscribe_all(room: Room, participant: Participant) -> None:
    for key, track in participant.subscriptions.items():
        room.publishers[key].unsubscribe(track)
    participant.subscriptions.clear()
    participant.senders.clear()


def pace(participant: Participant) -> None:
    """Put the participant's pacer in front of what the relay sends them (idempotent)."""
    pacer = participant.pacer
    if pacer is None:
        return
    for (_role, feed), sender in participant.senders.items():
        video = kind_of(feed) == "video"
        ssrcs = pacer.video_ssrcs if video else pacer.audio_ssrcs
        ssrcs.add(sender._ssrc)
        if video:
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


def set_incoming_video(room: Room, participant: Participant) -> None:
    """Pause or resume every video going to this participant, as their state says."""
    off = participant.sound_only or participant.downlink.paused
    for (role, feed), track in participant.subscriptions.items():
        if track.kind != "video" or not isinstance(track, ForwardedTrack) or track.paused == off:
            continue
        if off:
            track.pause()
        else:
            track.resume()
            room.publishers[(role, feed)].ask_keyframe()


async def set_video(room: Room, role: str, *, enabled: bool) -> None:
    """`role` asks for sound only (False) or for video again (True); everyone is told."""
    participant = room.participant(role)
    if participant.sound_only == (not enabled):
        return
    participant.sound_only = not enabled
    set_incoming_video(room, participant)
    _set_forwarding(room.publishers.get((role, "video")), enabled)
    _set_forwarding(room.publishers.get((role, "screen")), enabled and participant.screen)
    await room.announce(
        video_message(room.id, role, "resumed" if enabled else "paused", "requested")
    )
    if enabled and participant.downlink.paused:
        # Their link still cannot carry video: say so, or the pause would go unexplained.
        await room.announce(video_message(room.id, role, "paused", "bandwidth"))


def _set_forwarding(publisher: Publisher | None, forwarding: bool) -> None:
    if publisher is None or publisher.forwarding == forwarding:
        return
    publisher.forwarding = forwarding
    if forwarding:
        for track in publisher.subscribers:
            track.need_keyframe()
        publisher.ask_keyframe()


async def set_screen(room: Room, role: str, *, enabled: bool) -> None:
    """`role` shares their screen, or stops: their second video forwards, or does not; who
    gets what is told again (`streams`)."""
    if role != CLINICIAN:
        raise SignalingError("invalid_message", "Only the clinician shares a screen.")
    participant = room.participant(role)
    participant.screen = enabled
    _set_forwarding(room.publishers.get((role, "screen")), enabled and not participant.sound_only)
    await tell_streams(room)


def streams_of(room: Room, participant: Participant) -> list[dict[str, str]]:
    """What each of this participant's sending transceivers carries: whose feed, which."""
    if participant.peer is None:
        return []
    mids = {id(t.sender): t.mid for t in participant.peer.pc.getTransceivers()}
    items = []
    for (role, feed), sender in participant.senders.items():
        mid = mids.get(id(sender))
        publishing = room.participants.get(role)
        if mid is None or publishing is None or publishing.left:
            continue
        if feed == "screen" and not publishing.screen:
            continue
        publisher = room.publishers[(role, feed)]
        items.append(
            {
                "mid": mid,
                "participant": role,
                "kind": publisher.kind,
                "source": publisher.source_name,
            }
        )
    items.sort(key=lambda item: (len(item["mid"]), item["mid"]))
    return items


async def tell_streams(room: Room, only: Participant | None = None) -> None:
    """Tell each participant (or `only` this one) what their transceivers carry, if that
    changed since they were last told."""
    for participant in [only] if only is not None else list(room.participants.values()):
        if participant.peer is None:
            continue
        items = streams_of(room, participant)
        if items == participant.streams_told:
            continue
        participant.streams_told = items
        await room.tell(participant.role, {"type": "streams", "items": items})


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
