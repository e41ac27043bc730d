"""Encoded frames out of RTP packets, as soon as the frame's last packet is in.

Audio (Opus) carries one frame per packet: each packet is a frame. Video (VP8, H.264) spreads a
frame over packets sharing one RTP timestamp, the last one carrying the marker bit; a frame is
complete when every sequence number from the one after the previous frame's marker up to its own
marker is in. A frame that stays incomplete (a packet lost and not retransmitted in time) is
dropped, and so is everything after it until the next keyframe, because later frames refer to
what was lost; the publisher is asked for a keyframe at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# How long a gap may wait for a retransmission before its frame is given up (seconds).
GAP_PATIENCE = 0.15
# Packets parked behind a gap; beyond this the gap is given up at once.
MAX_PARKED = 256
# Packets one video frame may have (a 4K keyframe has a few hundred): a sender that never
# marks a frame's end cannot make the assembler hold its packets without bound.
MAX_FRAME_PACKETS = 2048
# Duplicates and stragglers are recognised within this many recent sequence numbers.
SEQ_WINDOW = 1 << 15


@dataclass(slots=True)
class EncodedFrame:
    data: bytes
    timestamp: int  # RTP timestamp at the source, in the codec's clock
    keyframe: bool
    received: float  # monotonic seconds when its last packet arrived


def _newer(a: int, b: int) -> bool:
    """Sequence number a comes after b (16-bit wrap-around)."""
    return a != b and ((a - b) & 0xFFFF) < SEQ_WINDOW


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether a depayloaded frame can be decoded on its own."""
    name = codec.lower()
    if name == "vp8":
        # RFC 6386 9.1: the frame tag's lowest bit is 0 for a key frame.
        return bool(data) and not data[0] & 0x01
    if name == "h264":
        return _h264_has_idr(data)
    return True  # audio


def _h264_has_idr(data: bytes) -> bool:
    # aiortc's depayloader emits Annex B: NAL units after 00 00 01 start codes.
    index = data.find(b"\x00\x00\x01")
    while index != -1 and index + 3 < len(data):
        nal_type = data[index + 3] & 0x1F
        if nal_type in (5, 7):  # IDR slice, or a sequence parameter set heading one
            return True
        index = data.find(b"\x00\x00\x01", index + 3)
    return False


Sink = Callable[[Any, EncodedFrame], None]
CodecOf = Callable[[int], Any]


class FrameAssembler:
    """Stands in for aiortc's JitterBuffer (`add(packet) -> (pli, frame)`); see media.hooks.

    Completed frames go to `sink(codec, frame)` directly, so several can leave at once (a
    retransmission closing a gap); `add` itself always returns no frame. Packets arriving in
    order take the fast path; a gap parks later packets until the missing ones are
    retransmitted, or until GAP_PATIENCE runs out.
    """

    def __init__(self, kind: str, codec_of: CodecOf, sink: Sink) -> None:
        self.kind = kind
        self._codec_of = codec_of
        self._sink = sink
        self._expected: int | None = None  # the next sequence number in order
        self._frame: list[Any] = []  # packets of the video frame being gathered
        self._parked: dict[int, Any] = {}  # packets after a gap, by sequence number
        self._gap_since = 0.0
        self._resync = False  # after giving up a gap: skip to the next frame boundary
        self._need_keyframe = False
        self.frames_dropped = 0

    @property
    def waiting_keyframe(self) -> bool:
        """Frames are being dropped until the next keyframe (a packet was lost)."""
        return self._need_keyframe

    @property
    def capacity(self) -> int:  # aiortc reads this off its own buffer
        return 1 << 16

    def add(self, packet: Any) -> tuple[bool, None]:
        codec = self._codec_of(packet.payload_type)
        if codec is None:
            return False, None
        now = time.monotonic()
        seq = packet.sequence_number
        if self.kind == "audio":
            if self._expected is not None and not _newer(seq, (self._expected - 1) & 0xFFFF):
                return False, None  # a duplicate or a straggler: its moment has passed
            self._expected = (seq + 1) & 0xFFFF
            self._sink(codec, EncodedFrame(packet._data, packet.timestamp, True, now))
            return False, None
        if self._expected is None:
            self._expected = seq
        if seq != self._expected:
            if not _newer(seq, self._expected):
                return False, None  # already passed on, or given up
            if not self._parked:
                self._gap_since = now
            self._parked[seq] = packet
            if now - self._gap_since < GAP_PATIENCE and len(self._parked) < MAX_PARKED:
                return False, None
            return self._give_up_gap(codec, now), None
        ask = self._take(codec, packet, now)
        while self._expected in self._parked:
            ask |= self._take(codec, self._parked.pop(self._expected), now)
        if self._parked:
            self._gap_since = now  # the gap moved on: wait for the next missing packet afresh
        return ask, None

    def _take(self, codec: Any, packet: Any, now: float) -> bool:
        """One video packet in order."""
        self._expected = (packet.sequence_number + 1) & 0xFFFF
        if self._resync:
            if packet.marker:
                self._resync = False  # the next packet starts a frame
            return False
        ask = False
        if self._frame and self._frame[0].timestamp != packet.timestamp:
            # A new frame began while the last one never saw its marker: it is incomplete.
            self._frame = []
            ask = self._lost()
        self._frame.append(packet)
        if len(self._frame) > MAX_FRAME_PACKETS:
            self._frame = []
            self._resync = True  # resume at the next frame boundary, from a keyframe
            return self._lost()
        if packet.marker:
            data = b"".join(p._data for p in self._frame)
            timestamp = self._frame[0].timestamp
            self._frame = []
            keyframe = is_keyframe(codec.name, data)
            if self._need_keyframe and not keyframe:
                self.frames_dropped += 1
            else:
                self._need_keyframe = False
                self._sink(codec, EncodedFrame(data, timestamp, keyframe, now))
        return ask

    def _give_up_gap(self, codec: Any, now: float) -> bool:
        """The missing packets will not come: resume after them, at the next frame boundary."""
        self._frame = []
        self._resync = True
        ask = self._lost()  # before taking what was parked: those frames need a keyframe too
        parked, self._parked = self._parked, {}
        ordered = sorted(parked, key=lambda s: (s - self._expected) & 0xFFFF)  # type: ignore[operator]
        self._expected = ordered[0]
        for seq in ordered:
            if seq != self._expected:
                # Another gap inside what was parked: keep the rest parked for it.
                self._parked = {s: parked[s] for s in ordered[ordered.index(seq) :]}
                self._gap_since = now
                break
            self._take(codec, parked[seq], now)
        return ask

    def _lost(self) -> bool:
        self.frames_dropped += 1
        first = not self._need_keyframe
        self._need_keyframe = True
        return first  # ask the publisher for a keyframe once per loss
