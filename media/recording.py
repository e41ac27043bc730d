"""Recording without re-encoding: the forwarded packets, muxed into WebM (or Matroska for H.264).

A `Recorder` listens to the call's publishers and hands their encoded frames to a writer thread
(the event loop never waits on the disk). The hand-over is a plain deque the thread drains a few
times a second: a lock and a thread wake-up per frame cost more than muxing the frame. The
container is opened once every video publisher has sent a keyframe (its size is read from it),
or after `OPEN_AFTER` seconds with what has arrived; frames before that wait in memory. Each
stream's timestamps start where its first frame fell after the recording began, so the streams
stay in step.

A held recorder (`held=True`, the relay's when it reads consent from the database) writes a
frame only once a consent reading that began after the frame arrived has found the recording
consent standing (`confirm`); frames that arrived while it may not have stood are dropped
(`drop_unconfirmed`, and whatever is unconfirmed when the recorder closes). So nothing that
arrived after a withdrawal committed is ever written, however late the relay hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av

from app.sealed import SEALED_SUFFIX, SealedWriter
from media.frames import EncodedFrame
from media.tracks import CLOCK, Publisher

logger = logging.getLogger("televisit.recording")

OPEN_AFTER = 2.0
MAX_QUEUED = 5_000
DRAIN_SECONDS = 0.2
_CODEC_NAMES = {"vp8": "libvpx", "opus": "libopus", "h264": "h264"}


class RecordingLog(Protocol):
    """Where recordings and call summaries are kept (signaling writes them to the database)."""

    async def started(
        self, call_id: uuid.UUID, recording_id: uuid.UUID, file_name: str
    ) -> None: ...

    async def stopped(
        self, call_id: uuid.UUID, recording_id: uuid.UUID, size: int, reason: str
    ) -> None: ...

    async def summary(self, call_id: uuid.UUID, summary: dict[str, Any]) -> None: ...


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame's header (RFC 6386 9.1)."""
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return width, height


class Recorder:
    def __init__(
        self,
        folder: Path,
        call_id: uuid.UUID,
        publishers: Iterable[Publisher],
        video_codec: str | None,
        *,
        key: bytes,
        held: bool = False,
        recordable: Callable[[str], bool] | None = None,
    ) -> None:
        self.id = uuid.uuid4()
        # Whose recording consent stands now (by participant key): nobody else's frames are
        # kept, whatever else happens.
        self._recordable = recordable
        folder.mkdir(parents=True, exist_ok=True)
        self.publishers = list(publishers)
        # The call's negotiated codec, known before any frame arrives (WebM cannot hold H.264).
        suffix = "mkv" if video_codec == "h264" else "webm"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        # Sealed while it is written (app.sealed): never on disk in clear, not even mid-call.
        self.path = folder / f"{call_id}-{stamp}-{self.id.hex[:8]}.{suffix}{SEALED_SUFFIX}"
        self._key = key
        self._sink: SealedWriter | None = None
        self._format = "matroska" if suffix == "mkv" else "webm"
        self._started = time.monotonic()
        # Appended by the event loop, drained by the writer thread (deque operations are atomic).
        self._queue: deque[tuple[Publisher, str, EncodedFrame]] = deque()
        self._closing = threading.Event()
        self.dropped = 0
        # Held recorders only. Monotonic instants, set by the event loop and read by the writer
        # thread (a float is replaced atomically, a deque appended to and popped atomically):
        # frames that arrived up to `_confirmed` may be written, unless they arrived inside one
        # of the `_dropped` spans (after, until]; both only ever grow later.
        self.held = held
        self._confirmed = 0.0
        self._dropped: deque[tuple[float, float]] = deque()
        self.discarded = 0  # frames never written: not confirmed, or in a dropped span
        self.last_kept: float | None = None  # when the latest frame kept for the file arrived
        self._listeners: dict[Publisher, Any] = {}
        # When a roll into a next file was last asked for (media.consent.ask_roll), monotonic.
        self.roll_asked = float("-inf")
        for publisher in self.publishers:
            listener = self._listener(publisher)
            self._listeners[publisher] = listener
            publisher.listeners.add(listener)
        self._thread = threading.Thread(target=self._write, name="recorder", daemon=True)
        self._thread.start()

    def listens_to(self, publisher: Publisher) -> bool:
        """Whether this file has (or will have) a stream for `publisher`'s frames."""
        return publisher in self._listeners

    def _listener(self, publisher: Publisher) -> Any:
        def on_frame(codec: str, frame: EncodedFrame) -> None:
            if self._recordable is not None and not self._recordable(publisher.role):
                self.discarded += 1
                return
            if len(self._queue) >= MAX_QUEUED:  # a stalled disk drops frames, not the call
                self.dropped += 1
                return
            self._queue.append((publisher, codec, frame))

        return on_frame

    def confirm(self, until: float) -> None:
        """The recording consent stood from the last confirmation to `until` (a reading's start)."""
        self._confirmed = max(self._confirmed, until)

    def drop_unconfirmed(self) -> None:
        """What arrived since the last confirmation may not have been consented to: drop it."""
        self._dropped.append((self._confirmed, time.monotonic()))

    def _keep(self, received: float, closing: bool) -> bool | None:
        """Whether the frame that arrived at `received` goes to the file; None: not known yet."""
        if not self.held:
            return True
        while self._dropped and self._dropped[0][1] < received:
            self._dropped.popleft()  # spans end in order, and so do the frames' arrivals
        if self._dropped and self._dropped[0][0] < received:
            return False
        if received <= self._confirmed:
            return True
        return False if closing else None

    async def close(self) -> int:
        """Stop listening, finish the file; its size in bytes."""
        for publisher, listener in self._listeners.items():
            publisher.listeners.discard(listener)
        self._closing.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        if self.dropped:
            logger.warning("recording dropped frames", extra={"count": self.dropped})
        return self._sink.tell() if self._sink is not None else 0

    # The writer thread -------------------------------------------------------------------

    def _write(self) -> None:
        pending: list[tuple[Publisher, str, EncodedFrame]] = []
        container: Any = None
        streams: dict[Publisher, Any] = {}
        origins: dict[Publisher, tuple[int, int]] = {}  # first source timestamp, first pts
        last: dict[Publisher, int] = {}
        try:
            while True:
                closing = self._closing.wait(DRAIN_SECONDS)
                while self._queue:
                    received = self._queue[0][2].received
                    keep = self._keep(received, closing)
                    if keep is None:
                        break  # not confirmed yet: wait for the next reading
                    item = self._queue.popleft()
                    if not keep:
                        self.discarded += 1
                        continue
                    self.last_kept = received
                    if container is None:
                        pending.append(item)
                        if not self._ready(pending):
                            continue
                        container, streams = self._open(pending)
                        items, pending = pending, []
                    else:
                        items = [item]
                    for publisher, _codec, frame in items:
                        stream = streams.get(publisher)
                        if stream is not None:
                            self._mux(container, stream, publisher, frame, origins, last)
                if closing:
                    break
            if container is None and pending:
                container, streams = self._open(pending)
                for publisher, _codec, frame in pending:
                    if publisher in streams:
                        self._mux(container, streams[publisher], publisher, frame, origins, last)
        except Exception as exc:
            logger.error("recording failed", extra={"error_type": type(exc).__name__})
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
            if self._sink is not None:
                self._sink.close()  # the last segment: only now does the file read as whole

    def _ready(self, pending: list[tuple[Publisher, str, EncodedFrame]]) -> bool:
        if time.monotonic() - self._started >= OPEN_AFTER:
            return True
        videos = {p for p in self.publishers if p.kind == "video" and p.source is not None}
        keyed = {p for p, _c, f in pending if p.kind == "video" and f.keyframe}
        return bool(videos) and videos <= keyed

    def _open(
        self, pending: list[tuple[Publisher, str, EncodedFrame]]
    ) -> tuple[Any, dict[Publisher, Any]]:
        self._sink = SealedWriter(self.path, self._key)
        container = av.open(self._sink, "w", format=self._format)
        streams: dict[Publisher, Any] = {}
        for publisher in self.publishers:
            frames = [(c, f) for p, c, f in pending if p is publisher]
            if not frames:
                continue
            codec = frames[0][0]
            if publisher.kind == "video":
                size = next((vp8_size(f.data) for _c, f in frames if f.keyframe), None)
                stream: Any = container.add_stream(_CODEC_NAMES.get(codec, codec), rate=30)
                stream.width, stream.height = size or (640, 480)
            else:
                stream = container.add_stream(_CODEC_NAMES.get(codec, codec), rate=48_000)
            stream.time_base = Fraction(1, CLOCK[publisher.kind])
            streams[publisher] = stream
        return container, streams

    def _mux(
        self,
        container: Any,
        stream: Any,
        publisher: Publisher,
        frame: EncodedFrame,
        origins: dict[Publisher, tuple[int, int]],
        last: dict[Publisher, int],
    ) -> None:
        clock = CLOCK[publisher.kind]
        if publisher not in origins:
            if publisher.kind == "video" and not frame.keyframe:
                return  # a video stream starts at a keyframe
            offset = max(0, int((frame.received - self._started) * clock))
            origins[publisher] = (frame.timestamp, offset)
        first_ts, offset = origins[publisher]
        pts = offset + ((frame.timestamp - first_ts) & 0xFFFFFFFF)
        if pts <= last.get(publisher, -1):
            return  # a reconnect restarted the source clock: skip until it passes
        last[publisher] = pts
        packet = av.Packet(frame.data)
        packet.stream = stream
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, clock)
        packet.is_keyframe = frame.keyframe
        container.mux(packet)
