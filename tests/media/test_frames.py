"""Frame assembly from RTP packets: in order, reordered, lost."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from media import frames
from media.frames import EncodedFrame, FrameAssembler, is_keyframe


@dataclass
class Codec:
    name: str


@dataclass
class Packet:
    sequence_number: int
    timestamp: int
    marker: int
    _data: bytes
    payload_type: int = 96


KEY, DELTA = b"\x00", b"\x01"  # the lowest bit of a VP8 frame tag: 0 for a key frame


def assembler(kind: str = "video") -> tuple[FrameAssembler, list[EncodedFrame]]:
    out: list[EncodedFrame] = []
    codec = Codec("VP8" if kind == "video" else "opus")
    return FrameAssembler(kind, lambda _pt: codec, lambda _c, f: out.append(f)), out


def frame_packets(seq: int, ts: int, parts: list[bytes]) -> list[Packet]:
    return [
        Packet((seq + i) & 0xFFFF, ts, int(i == len(parts) - 1), part)
        for i, part in enumerate(parts)
    ]


def feed(target: FrameAssembler, packets: list[Packet]) -> list[bool]:
    return [target.add(p)[0] for p in packets]


class TestVideo:
    def test_a_frame_leaves_with_its_last_packet(self) -> None:
        target, out = assembler()
        packets = frame_packets(100, 3000, [KEY + b"a", b"b", b"c"])
        feed(target, packets[:2])
        assert out == []
        feed(target, packets[2:])
        assert [(f.data, f.timestamp, f.keyframe) for f in out] == [(KEY + b"abc", 3000, True)]

    def test_sequence_numbers_wrap(self) -> None:
        target, out = assembler()
        feed(target, frame_packets(65534, 1, [KEY, b"x", b"y"]))
        feed(target, frame_packets(1, 2, [DELTA]))
        assert [f.data for f in out] == [KEY + b"xy", DELTA]

    def test_a_reordered_packet_is_waited_for(self) -> None:
        target, out = assembler()
        first = frame_packets(10, 1, [KEY, b"1", b"2"])
        second = frame_packets(13, 2, [DELTA, b"3"])
        feed(target, [first[0], first[2], first[1], *second])
        assert [f.data for f in out] == [KEY + b"12", DELTA + b"3"]

    def test_a_lost_packet_drops_frames_until_a_keyframe_and_asks_for_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # No patience: the first packet after the gap gives up on it (as GAP_PATIENCE would).
        monkeypatch.setattr(frames, "GAP_PATIENCE", 0.0)
        target, out = assembler()
        feed(target, frame_packets(10, 1, [KEY]))
        lost = frame_packets(11, 2, [DELTA, b"lost", b"c"])
        later = frame_packets(14, 3, [DELTA, b"d"]) + frame_packets(16, 4, [DELTA])
        asks = feed(target, [lost[0], lost[2], *later])
        keyframe = frame_packets(17, 5, [KEY, b"k"])
        feed(target, keyframe)
        assert [f.data for f in out] == [KEY, KEY + b"k"]
        assert any(asks)
        assert target.frames_dropped >= 1

    def test_a_frame_that_never_ends_is_not_held_without_bound(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(frames, "MAX_FRAME_PACKETS", 50)
        target, out = assembler()
        endless = [Packet(100 + i, 7, 0, (KEY if i == 0 else b"") + b"x") for i in range(120)]
        asks = feed(target, endless)
        assert len(target._frame) <= 50
        assert any(asks)  # the publisher is asked for a keyframe
        feed(target, frame_packets(220, 8, [DELTA]))  # ends the runaway frame: resync
        feed(target, frame_packets(221, 9, [DELTA]))
        feed(target, frame_packets(222, 10, [KEY, b"k"]))
        assert [f.data for f in out] == [KEY + b"k"]  # nothing undecodable went on

    def test_duplicates_and_stragglers_are_ignored(self) -> None:
        target, out = assembler()
        packets = frame_packets(10, 1, [KEY, b"a"])
        feed(target, [*packets, packets[0], packets[1]])
        assert len(out) == 1


class TestAudio:
    def test_every_packet_is_a_frame_and_duplicates_are_dropped(self) -> None:
        target, out = assembler("audio")
        packets = [Packet(5 + i, 960 * i, 1, bytes([i])) for i in range(3)]
        feed(target, [packets[0], packets[1], packets[1], packets[0], packets[2]])
        assert [f.data for f in out] == [b"\x00", b"\x01", b"\x02"]


class TestKeyframes:
    def test_vp8_and_h264(self) -> None:
        assert is_keyframe("VP8", b"\x10\x02\x00\x9d\x01\x2a")
        assert not is_keyframe("vp8", b"\x11")
        idr = b"\x00\x00\x00\x01\x67sps\x00\x00\x01\x65slice"
        assert is_keyframe("H264", idr)
        assert not is_keyframe("h264", b"\x00\x00\x01\x41slice")
        assert is_keyframe("opus", b"anything")
