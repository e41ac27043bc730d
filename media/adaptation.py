"""Bandwidth, sound first: the room's control round, every CONTROL_SECONDS (media.bandwidth).

Each participant's `Downlink` estimates what the relay can send them and their `Pacer` sends
their audio at once and their video at that pace; this round pauses or resumes video to them
(telling everyone with a `video` message) and tells each publisher, by REMB, to send no more
than the least its active subscribers can take (each subscriber's link shared equally by the
videos it gets), never more than its own leg carries. With
several subscribers, one whose link takes less than THIN_SHARE of what another takes does not
count: it is outvoted, and while its link shows congestion its own video pauses (and is tried
again later), so one thin link does not lower what everyone else gets. It runs
in the room's owner, posted there by the relay's ticker (media.health).
"""

from __future__ import annotations

import logging
from typing import Any

from media import hooks
from media.bandwidth import MIN_BPS, THIN_SHARE, LossMeter
from media.forwarding import pace, set_incoming_video
from media.room import Participant, Room
from media.tracks import ForwardedTrack, Publisher
from signaling.media import video as video_message

logger = logging.getLogger("televisit.media")

REMB_SECONDS = 0.5
# While every subscriber of a publisher's video is paused, it is asked for this: what a try to
# resume starts at (media.bandwidth.RESUME_BPS), so the try's keyframe is a small one.
PAUSED_CAP_BPS = 64_000


async def control(room: Room, now: float) -> None:
    """Pause or resume video to each participant, cap each publisher."""
    for participant in list(room.participants.values()):
        if participant.peer is None:
            continue
        pace(participant)  # senders negotiated since: their SSRCs and extensions
        change = participant.downlink.tick(now)
        if logger.isEnabledFor(logging.DEBUG) and now - participant.described_at >= 1.0:
            participant.described_at = now
            _describe(room, participant, now)
        if change is None:
            continue
        set_incoming_video(room, participant)
        if not participant.sound_only:
            await room.announce(video_message(room.id, participant.role, change, "bandwidth"))
    for (role, feed), publisher in room.publishers.items():
        if publisher.kind != "video":
            continue
        publisher.repeat_keyframe_request(now)
        cap = _publisher_cap(room, (role, feed), now)
        # The leg's own estimate is measured on the camera's receiver.
        own = _uplink_cap(room, role, publisher, now) if feed == "video" else None
        publisher.remb_cap = own if cap is None else cap if own is None else min(cap, own)
        if publisher.remb_cap is None or now - publisher.remb_sent_at < REMB_SECONDS:
            continue
        receiver = publisher.source
        if receiver is not None:
            publisher.remb_sent_at = now
            bps = min(publisher.remb_cap, publisher.leg_bps or publisher.remb_cap)
            room.services.spawn(hooks.send_remb(receiver, bps))  # type: ignore[arg-type]


def _describe(room: Room, participant: Participant, now: float) -> None:
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
        for track in participant.subscriptions.values()
        if track.kind == "video"
    )
    logger.debug("link", extra={"role": participant.role, "link": link})


def _uplink_cap(room: Room, role: str, publisher: Publisher, now: float) -> float | None:
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


def _publisher_cap(room: Room, key: tuple[str, str], now: float) -> float | None:
    """What this video publisher may be: the least its receiving subscribers can take."""
    subscribers = [
        p
        for p in room.participants.values()
        if p.role != key[0] and p.peer is not None and key in p.subscriptions
    ]
    if not subscribers:
        return None
    # Each subscriber's link is shared by every video it gets: this publisher may have its share.
    budgets = {
        p.role: (p.downlink, p.downlink.publisher_cap_bps(now) / _videos_to(room, p))
        for p in subscribers
        if not (p.sound_only or p.downlink.paused)
    }
    if not budgets:
        return PAUSED_CAP_BPS
    # A thin link does not hold everyone down: the least of those that take at least
    # THIN_SHARE of the most; the others are outvoted (their own video pauses if congested).
    floor = THIN_SHARE * max(bps for _downlink, bps in budgets.values())
    for downlink, bps in budgets.values():
        if bps < floor:
            downlink.outvoted(now)
    return max(MIN_BPS, min(bps for _downlink, bps in budgets.values() if bps >= floor))


def _videos_to(room: Room, subscriber: Participant) -> int:
    """How many videos go to this subscriber now (at least 1): those whose publisher sends."""
    count = 0
    for key, track in subscriber.subscriptions.items():
        publisher = room.publishers.get(key)
        if (
            track.kind == "video"
            and publisher is not None
            and publisher.allowed
            and publisher.forwarding
            and publisher.source is not None
        ):
            count += 1
    return max(1, count)
