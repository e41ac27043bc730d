"""The consent gate: the relay checks the standing consent itself, and fails closed.

A consent decision reaches the relay two ways. Fast: signaling calls `Relay.consent` when the
decision is announced (an event after the commit, through Redis to the call's host). Durably:
every POLL_SECONDS a `ConsentWatch` reads the standing consent of every call the relay holds,
in one query by primary key, through the `ConsentGuard` signaling gives it. The event may be
lost (the process that took the decision dies before announcing it, Redis is down); the
reading is not, because the decision committed before the patient got their 201.

A call whose latest good reading began more than STALE_SECONDS ago is in doubt: nothing of the
patient's (nor of a guest's) is forwarded or recorded until a reading answers again. The bound,
for a withdrawal committed at t: readings that work include it from the first one begun after
t, by t + POLL_SECONDS plus the query's time (a query slower than the rest of STALE_SECONDS is
given up); readings that fail leave the last good one begun before t, and doubt closes the gate
STALE_SECONDS after that. Either way the patient's media stops by t + STALE_SECONDS, plus the
event loop's own delay; the contract allows 1 s from the 201.

Staleness runs from when a reading was asked, not answered: what it found was committed by
then at least, so a late answer cannot stretch the bound. A busy relay's loop makes readings
late (bench/consent_lag.py), so doubt holds media and nothing more: a recording running goes on
(its recorder writes a frame only once a reading begun after it arrived confirms the consent,
media.recording, and the gates keep the patient's and guests' media out of it meanwhile).
Only when no reading has answered for UNKNOWN_SECONDS (the database is really out of reach)
does the recording stop, `consent_unknown`, dropping what no reading confirmed: a recording
stopped is lost to the clinic; media held for a moment is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Protocol

from media.tracks import ForwardedTrack, Publisher
from signaling.media import Consent, ConsentGuard

logger = logging.getLogger("televisit.media")

POLL_SECONDS = 0.25
STALE_SECONDS = 0.75
# No reading answered for this long: the consent is unknown, and a recording running stops.
UNKNOWN_SECONDS = 5.0


class Guarded(Protocol):
    """What the watch needs of a call."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def opened_at(self) -> float: ...


def set_gate(publisher: Publisher, allowed: bool) -> None:
    """Open or close one publisher's gate. Closing drops what its subscribers still have queued
    (up to about a second of it); opening starts them again at a keyframe."""
    if publisher.allowed == allowed:
        return
    publisher.allowed = allowed
    for track in publisher.subscribers:
        if allowed:
            track.need_keyframe()
        else:
            _flush(track)
    if allowed:
        publisher.ask_keyframe()


def _flush(track: ForwardedTrack) -> None:
    paused = track.paused
    track.pause()  # empties its queue
    if not paused:
        track.resume()  # as it was, from the next keyframe


class ConsentWatch:
    """Reads the standing consent of the relay's calls, again and again, and says what it found.

    It keeps, per call, when its latest good reading began, and declares a call in doubt when
    that is more than STALE_SECONDS ago, its consent unknown when more than UNKNOWN_SECONDS.
    What it found and its doubts are handed on at once (`on_reading`, `on_doubt`, `on_unknown`
    do not wait: they post to the call's owner), so no call's own work can hold up the readings
    of the others.
    """

    def __init__(
        self,
        guard: ConsentGuard,
        calls: Callable[[], Collection[Guarded]],
        *,
        on_reading: Callable[[uuid.UUID, Consent | None, float], None],
        on_doubt: Callable[[uuid.UUID, float], None],
        on_unknown: Callable[[uuid.UUID, float], None],
    ) -> None:
        self.guard = guard
        self._calls = calls
        self._on_reading = on_reading
        self._on_doubt = on_doubt
        self._on_unknown = on_unknown
        self._failing = False
        self._read_at: dict[uuid.UUID, float] = {}  # when each call's latest good reading began
        self._doubted: set[uuid.UUID] = set()
        self._unknown: set[uuid.UUID] = set()

    async def read(
        self,
        call_ids: Collection[uuid.UUID],
        *,
        within: float = STALE_SECONDS,
        started: float | None = None,
    ) -> dict[uuid.UUID, Consent] | None:
        """Each call's consent as committed now (a call not under way is missing); None when
        the database did not answer in time."""
        started = time.monotonic() if started is None else started
        try:
            async with asyncio.timeout(within):
                found = await self.guard.read_consent(call_ids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "consent reading failed: the patient's media is held until one answers",
                    extra={"error_type": type(exc).__name__},
                )
            self._failing = True
            return None
        if self._failing:
            logger.warning("consent readings answer again")
        self._failing = False
        for call_id in call_ids:
            self._read_at[call_id] = max(self._read_at.get(call_id, started), started)
            self._doubted.discard(call_id)
            self._unknown.discard(call_id)
        return found

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            calls = list(self._calls())
            self._forget({call.id for call in calls})
            if calls:
                oldest = min(self._fresh(call) for call in calls)
                within = max(oldest + STALE_SECONDS - started, POLL_SECONDS)
                found = await self.read([call.id for call in calls], within=within, started=started)
                if found is not None:
                    for call in calls:
                        self._each(self._on_reading, call.id, found.get(call.id), started)
                now = time.monotonic()
                for call in list(self._calls()):
                    age = now - self._fresh(call)
                    if call.id not in self._doubted and age > STALE_SECONDS:
                        self._doubted.add(call.id)
                        self._each(self._on_doubt, call.id, now)
                    if call.id not in self._unknown and age > UNKNOWN_SECONDS:
                        self._unknown.add(call.id)
                        self._each(self._on_unknown, call.id, now)
            await asyncio.sleep(self._pause(started))

    def _fresh(self, call: Guarded) -> float:
        return self._read_at.get(call.id, call.opened_at)

    def _forget(self, live: set[uuid.UUID]) -> None:
        for call_id in [c for c in self._read_at if c not in live]:
            del self._read_at[call_id]
        self._doubted &= live
        self._unknown &= live

    def _each(self, callback: Callable[..., None], *args: object) -> None:
        """One call's part; its failure must not end the watch of every call."""
        try:
            callback(*args)
        except Exception as exc:
            logger.warning("consent gate step failed", extra={"error_type": type(exc).__name__})

    def _pause(self, started: float) -> float:
        """Until the next reading is due, or sooner if a call falls into doubt (or its consent
        becomes unknown) before that."""
        wake = started + POLL_SECONDS
        for call in self._calls():
            if call.id not in self._doubted:
                wake = min(wake, self._fresh(call) + STALE_SECONDS)
            elif call.id not in self._unknown:
                wake = min(wake, self._fresh(call) + UNKNOWN_SECONDS)
        return max(0.01, wake - time.monotonic())
