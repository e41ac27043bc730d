"""Health: the relay's ticker, and the rounds it posts to every room's owner.

One task per relay (the ticker) posts, to every room's inbox, a bandwidth round every
CONTROL_SECONDS (media.adaptation), a stall check every WATCH_SECONDS and a stats round every
STATS_SECONDS. It changes no room itself: each round is a keyed step (one of each waits at
most, media.owner), run by the room's owner between the participants' own steps.

Stalls: a participant whose media stopped for STALL_SECONDS, on a connection that claims to be
up, is told to negotiate a new one (aiortc notices a dead path only after ~30 s by itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import Any

from app.participants import CLINICIAN
from media.adaptation import control
from media.negotiation import drop_connection
from media.owner import Step
from media.room import Room
from media.stats import participant_stats
from signaling.media import admitted as admitted_message
from signaling.media import call as call_message

logger = logging.getLogger("televisit.media")

CONTROL_SECONDS = 0.25
WATCH_SECONDS = 1.0
STATS_SECONDS = 3.0
STALL_SECONDS = 3.0


async def ticker(rooms: Callable[[], Collection[Room]]) -> None:
    """Post each room's timed rounds, for as long as the relay runs."""
    last_stats = last_watch = time.monotonic()
    while True:
        await asyncio.sleep(CONTROL_SECONDS)
        now = time.monotonic()
        watch = now - last_watch >= WATCH_SECONDS
        stats = watch and now - last_stats >= STATS_SECONDS
        last_watch = now if watch else last_watch
        last_stats = now if stats else last_stats
        for room in list(rooms()):
            room.post(Step(partial(_now, control, room), key="control"))
            if watch:
                room.post(Step(partial(_now, check_stalls, room), key="stalls"))
            if stats:
                room.post(Step(partial(_now, send_stats, room), key="stats"))


async def _now(step: Callable[[Room, float], Awaitable[None]], room: Room) -> None:
    """A timed round, as of when the owner runs it."""
    await step(room, time.monotonic())


async def check_stalls(room: Room, now: float) -> None:
    for participant in list(room.participants.values()):
        peer = participant.peer
        if peer is None or participant.stalled:
            continue
        state = peer.pc.connectionState
        last = max(
            (p.last_frame_at for (r, _k), p in room.publishers.items() if r == participant.role),
            default=0.0,
        )
        silent = participant.media_seen and now - last > STALL_SECONDS
        never = not participant.media_seen and now - participant.joined_at > 3 * STALL_SECONDS
        if state == "failed" or silent or (never and state != "connected"):
            participant.stalled = True
            await drop_connection(room, participant.role)
            # Over signaling (if their socket lives): negotiate a new peer connection.
            await room.tell(participant.role, negotiate_again(room, participant.role))


def negotiate_again(room: Room, role: str) -> dict[str, Any]:
    """The contract's way to say "negotiate a new peer connection for this call": `call` to
    the clinician's console, `admitted` to the patient and to a guest."""
    if role == CLINICIAN:
        return call_message(room.id, room.ice_servers)
    return admitted_message(room.ice_servers)


async def send_stats(room: Room, now: float) -> None:
    rows = []
    for participant in room.participants.values():
        if participant.peer is None:
            continue
        row = await participant_stats(
            participant.role,
            participant.peer.pc,
            room.bytes_from(participant.role),
            room.byte_marks,
            now,
            available_kbps=participant.downlink.available_kbps,
        )
        room.stats.add(row)
        rows.append(row.message())
    if rows:
        await room.tell(
            "clinician",
            {
                "type": "stats",
                "appointment_id": str(room.id),
                "participants": rows,
                "mode": "transcoding" if room.transcoding else "forwarding",
            },
        )
