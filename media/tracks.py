"""Publishers and the tracks that carry their encoded frames to every subscriber.

A `Publisher` is one participant's audio or video as the relay receives it. It outlives the
participant's peer connection: when they reconnect, a new receiver feeds the same publisher
(a new `source`), and every subscriber's `ForwardedTrack` carries on with continuous
timestamps from the next keyframe.

A `ForwardedTrack` is what an `RTCRtpSender` sends: `recv()` hands out `av.Packet`s, which aiortc
packetizes without encoding. Its queue is bounded in count and in age: video frames that wait
longer than SHED_AFTER (the subscriber's pacer cannot carry them: media.bandwidth) are shed,
whole, up to the next keyframe (and one is requested), never accumulating delay or memory.
Audio has its own track and is never held back by video. A paused track (the subscriber's link
cannot carry video, or they asked for sound only) forwards nothing until resumed, then starts
at a keyframe.

A publisher asks its source for a keyframe again while a subscriber still waits for one (a PLI
lost on a poor link is never answered), every KEYFRAME_REPEAT seconds KEYFRAME_ASKS times in a
row, then every KEYFRAME_SLOW_REPEAT seconds for as long as someone waits: each keyframe costs a
thin uplink a second or more, but a picture must not stay frozen for want of one more ask.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.frames import EncodedFrame

CLOCK = {"audio": 48_000, "video": 90_000}
# A subscriber's backlog: about a second of video at 30 frames a second, or of 20 ms audio.
MAX_QUEUED = {"audio": 50, "video": 30}
# Between the last frame of one source and the first of the next (a reconnect).
SOURCE_GAP = {"audio": 960, "video": 3000}
# A publisher is asked for a keyframe at most this often.
KEYFRAME_INTERVAL = 0.3
# Asked again this often while someone still waits, this many times, then less often.
KEYFRAME_REPEAT = 0.6
KEYFRAME_ASKS = 10
KEYFRAME_SLOW_REPEAT = 2.5
# A video frame queued this long is late: shed it and what follows, up to a keyframe.
SHED_AFTER = 0.4


class ForwardedTrack(MediaStreamTrack):
    def __init__(self, kind: str, *, on_keyframe_needed: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self._time_base = Fraction(1, CLOCK[kind])
        self._queue: deque[tuple[Any, float]] = deque()  # (av.Packet, when queued)
        self._ready = asyncio.Event()
        self._on_keyframe_needed = on_keyframe_needed
        # A subscriber starts at a keyframe; audio needs none.
        self._waiting_keyframe = kind == "video"
        self._source: object | None = None
        self._last_in = 0
        self._pts = 0
        self.paused = False

    @property
    def waiting_keyframe(self) -> bool:
        return self._waiting_keyframe and not self.paused and self.readyState == "live"

    def pause(self) -> None:
        """Forward nothing until `resume`."""
        self.paused = True
        self._queue.clear()

    def resume(self) -> None:
        """Forward again, from the next keyframe (the caller asks the publisher for one)."""
        self.paused = False
        self.need_keyframe()

    def push(self, frame: EncodedFrame, source: object) -> None:
        if self.readyState != "live" or self.paused:
            return
        if self._waiting_keyframe:
            if not frame.keyframe:
                return
            self._waiting_keyframe = False
        late = (
            self.kind == "video" and self._queue and frame.received - self._queue[0][1] > SHED_AFTER
        )
        if late or len(self._queue) >= MAX_QUEUED[self.kind]:
            self._queue.clear()
            if self.kind == "video":
                # Later frames refer to the dropped ones: start again at a keyframe.
                self._waiting_keyframe = True
                self._on_keyframe_needed()
                if not frame.keyframe:
                    return
                self._waiting_keyframe = False
        if source is not self._source:
            self._pts += SOURCE_GAP[self.kind] if self._source is not None else 0
            self._source = source
        else:
            # 32-bit RTP timestamps, unwrapped; a negative step is a reordered frame.
            step = (frame.timestamp - self._last_in) & 0xFFFFFFFF
            self._pts += step - (1 << 32) if step & 0x80000000 else step
        self._last_in = frame.timestamp
        packet = av.Packet(frame.data)
        packet.pts = self._pts
        packet.time_base = self._time_base
        self._queue.append((packet, frame.received))
        self._ready.set()

    def need_keyframe(self) -> None:
        """Drop what is queued and resume at the next keyframe (a new source, a reconnect)."""
        if self.kind == "video":
            self._queue.clear()
            self._waiting_keyframe = True

    async def recv(self) -> Any:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()[0]

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._ready.set()


FrameListener = Callable[[str, EncodedFrame], None]


class Publisher:
    """One participant's audio or video, fanned out to every subscriber."""

    def __init__(self, role: str, kind: str, feed: str | None = None) -> None:
        self.role, self.kind = role, kind
        # Which of the participant's feeds: "audio", "video" (their camera) or "screen".
        self.feed = feed or kind
        self.subscribers: set[ForwardedTrack] = set()
        self.listeners: set[FrameListener] = set()  # recorders: (codec name, frame)
        self.allowed = True  # the consent gate: nothing is forwarded while False
        self.forwarding = True  # False while this participant asked for sound only
        # Bandwidth (media.relay): what its subscribers can take, what its own leg carries.
        self.remb_cap: float | None = None
        self.leg_bps: float | None = None
        self.remb_sent_at = 0.0
        self.source: object | None = None
        self.codec: str | None = None
        self.frames = 0
        self.bytes = 0
        self.last_frame_at = 0.0
        self._ask: Callable[[], None] | None = None
        self._source_waits: Callable[[], bool] = lambda: False
        self._last_asked = 0.0
        self._asks = 0  # since the last keyframe
        self._deferred: asyncio.TimerHandle | None = None

    @property
    def source_name(self) -> str:
        """What the `streams` message calls it: "screen", or "camera" (audio included)."""
        return "screen" if self.feed == "screen" else "camera"

    def attach_source(
        self,
        source: object,
        ask_keyframe: Callable[[], None],
        waiting: Callable[[], bool] | None = None,
    ) -> None:
        """A new receiver feeds this publisher (first join, or a reconnect).

        `waiting()` says whether the source itself drops frames until a keyframe (a loss).
        """
        self.source, self._ask = source, ask_keyframe
        self._source_waits = waiting or (lambda: False)
        self._asks = 0
        for track in self.subscribers:
            track.need_keyframe()

    def detach_source(self, source: object) -> None:
        if self.source is source:
            self.source, self._ask = None, None

    def on_frame(self, codec_name: str, frame: EncodedFrame, source: object) -> None:
        if source is not self.source:
            return  # a receiver being replaced
        if frame.keyframe:
            self._asks = 0
        self.codec = codec_name
        self.frames += 1
        self.bytes += len(frame.data)
        self.last_frame_at = frame.received
        if not (self.allowed and self.forwarding):
            return
        for track in self.subscribers:
            track.push(frame, source)
        for listener in self.listeners:
            listener(codec_name, frame)

    def ask_keyframe(self, now: float | None = None) -> None:
        """Ask the publisher for a keyframe; asks within KEYFRAME_INTERVAL make one, at its end."""
        if self.kind != "video" or self._ask is None:
            return
        now = time.monotonic() if now is None else now
        wait = self._last_asked + KEYFRAME_INTERVAL - now
        if wait <= 0:
            self._last_asked = now
            self._asks += 1
            self._ask()
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._ask_deferred)

    def heard_leg(self, bps: int) -> None:
        """What the relay's receiver estimates the publisher's own leg carries (its REMB)."""
        self.leg_bps = float(bps)

    def someone_waits(self) -> bool:
        """A subscriber or the source itself is dropping frames until the next keyframe."""
        return any(track.waiting_keyframe for track in self.subscribers) or self._source_waits()

    def repeat_keyframe_request(self, now: float) -> None:
        """Ask again if someone still waits for the keyframe asked for (the ask may be lost)."""
        if (
            self.kind == "video"
            and self._ask is not None
            and self.allowed
            and now - self._last_asked
            >= (KEYFRAME_REPEAT if self._asks < KEYFRAME_ASKS else KEYFRAME_SLOW_REPEAT)
            and self.someone_waits()
        ):
            self.ask_keyframe(now)

    def _ask_deferred(self) -> None:
        self._deferred = None
        self.ask_keyframe()

    def subscribe(self) -> ForwardedTrack:
        track = ForwardedTrack(self.kind, on_keyframe_needed=self.ask_keyframe)
        self.subscribers.add(track)
        self.ask_keyframe()
        return track

    def unsubscribe(self, track: MediaStreamTrack) -> None:
        """End a subscription: a forwarded track, or a transcoder (which listens, and stops)."""
        if isinstance(track, ForwardedTrack):
            self.subscribers.discard(track)
        track.stop()
