"""Files sealed at rest (app.sealed): what goes in comes out, and any change or cut is refused."""

from __future__ import annotations

import base64
import io
import stat
from pathlib import Path

import av
import numpy as np
import pytest

from app.sealed import (
    HEADER_BYTES,
    SEGMENT,
    TAG_BYTES,
    SealedWriter,
    SealError,
    key_for,
    open_sealed,
    plaintext_size,
)
from tests.webm import write_webm

KEY = bytes(range(32))


def _seal(path: Path, data: bytes, pieces: int = 7) -> None:
    with SealedWriter(path, KEY) as writer:
        step = max(1, len(data) // pieces)
        for at in range(0, len(data), step):
            writer.write(data[at : at + step])


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 17])
def test_round_trip(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    path = tmp_path / "file.sealed"
    _seal(path, data)
    assert b"".join(open_sealed(path, KEY)) == data
    assert plaintext_size(path) == size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if size > 64:
        assert data[:64] not in path.read_bytes()


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "file.sealed"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        SealedWriter(path, KEY)
    assert path.read_bytes() == b"keep"


def _sealed_three_segments(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "file.sealed"
    _seal(path, b"x" * (2 * SEGMENT + 100))
    return path, path.read_bytes()


def _refused(path: Path, key: bytes = KEY) -> None:
    with pytest.raises(SealError):
        b"".join(open_sealed(path, key))


def test_a_changed_byte_is_refused(tmp_path: Path) -> None:
    path, raw = _sealed_three_segments(tmp_path)
    changed = bytearray(raw)
    changed[HEADER_BYTES + SEGMENT + 5] ^= 1
    path.write_bytes(bytes(changed))
    _refused(path)


def test_a_file_cut_at_a_segment_boundary_is_refused(tmp_path: Path) -> None:
    path, raw = _sealed_three_segments(tmp_path)
    path.write_bytes(raw[: HEADER_BYTES + 2 * (SEGMENT + TAG_BYTES)])
    _refused(path)


def test_segments_swapped_are_refused(tmp_path: Path) -> None:
    path, raw = _sealed_three_segments(tmp_path)
    size = SEGMENT + TAG_BYTES
    first = raw[HEADER_BYTES : HEADER_BYTES + size]
    second = raw[HEADER_BYTES + size : HEADER_BYTES + 2 * size]
    path.write_bytes(raw[:HEADER_BYTES] + second + first + raw[HEADER_BYTES + 2 * size :])
    _refused(path)


def test_another_key_or_a_plain_file_is_refused(tmp_path: Path) -> None:
    path, _raw = _sealed_three_segments(tmp_path)
    _refused(path, bytes(32))
    plain = tmp_path / "plain.webm"
    plain.write_bytes(b"\x1a\x45\xdf\xa3" + b"0" * 100)
    _refused(plain)


def test_a_writer_never_closed_reads_as_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "file.sealed"
    writer = SealedWriter(path, KEY)
    writer.write(b"y" * (SEGMENT * 2 + 10))
    writer.flush()  # a crash here: two segments on disk, none marked last
    _refused(path)
    writer.close()
    assert b"".join(open_sealed(path, KEY)) == b"y" * (SEGMENT * 2 + 10)


def test_a_webm_muxed_into_it_plays_back(tmp_path: Path) -> None:
    path = tmp_path / "call.webm.sealed"
    with SealedWriter(path, KEY) as writer:
        write_webm(writer, frames=30)  # type: ignore[arg-type]  # a writable file, unseekable
    plain = b"".join(open_sealed(path, KEY))
    assert not path.read_bytes()[HEADER_BYTES:].startswith(b"\x1a\x45\xdf\xa3")
    with av.open(io.BytesIO(plain), "r") as played:
        decoded = sum(1 for _ in played.decode(video=0))
    assert decoded == 30


class TestKey:
    def test_the_configured_key(self) -> None:
        assert key_for(base64.b64encode(KEY).decode(), "secret") == KEY

    def test_derived_from_the_secret_stable_and_distinct(self) -> None:
        one = key_for(None, "a" * 40)
        assert len(one) == 32
        assert key_for(None, "a" * 40) == one
        assert key_for(None, "b" * 40) != one

    @pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
    def test_a_bad_key_is_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="TELEVISIT_RECORDINGS_KEY"):
            key_for(bad, "secret")
