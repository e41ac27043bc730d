"""Files sealed at rest: AES-256-GCM in segments, written as a stream, read back as a stream.

A recording is written while the call goes on and may last an hour, so it cannot be encrypted in
one piece. The file is a header and a run of segments, each sealed on its own:

    header   = MAGIC (8 bytes) | nonce prefix (7 random bytes)
    segment  = AES-GCM(key, nonce, plaintext of SEGMENT bytes (the last: 0..SEGMENT), aad=header)
    nonce    = nonce prefix | segment number (4 bytes, big-endian) | 1 if last else 0 (1 byte)

(the "STREAM" construction of Hoang, Reyhanitabar, Rogaway and Vizár, 2015). A segment moved,
dropped, repeated or taken from another file fails its tag, and a file cut short fails too: its
last segment does not carry the last-segment mark. Nothing is ever written in clear: the writer
holds at most one segment in memory. Files are created 0600.

The key is `TELEVISIT_RECORDINGS_KEY` (32 bytes, base64) or, unset, derived from the secret key
with HKDF-SHA256 (`key_for`).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"TVSEAL1\x00"
SEALED_SUFFIX = ".sealed"  # what a sealed file's name ends with (after what it holds: .webm)
PREFIX_BYTES = 7
HEADER_BYTES = len(MAGIC) + PREFIX_BYTES
SEGMENT = 64 * 1024
TAG_BYTES = 16
MAX_SEGMENTS = 2**32 - 1  # 256 TiB of plaintext a file


class SealError(Exception):
    """The file is not one we sealed with this key, or it was changed or cut short."""


def key_for(recordings_key: str | None, secret_key: str) -> bytes:
    """The 32-byte key: the configured one (base64), else one derived from the secret key."""
    if recordings_key:
        try:
            key = base64.b64decode(recordings_key, validate=True)
        except binascii.Error as exc:
            raise ValueError("TELEVISIT_RECORDINGS_KEY is not base64") from exc
        if len(key) != 32:
            raise ValueError("TELEVISIT_RECORDINGS_KEY must be 32 bytes (44 base64 characters)")
        return key
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"televisit recordings v1"
    ).derive(secret_key.encode())


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    if number > MAX_SEGMENTS:
        raise SealError("too many segments for one file")
    return prefix + number.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class SealedWriter:
    """A write-only, non-seekable file object that seals what it is given (PyAV can mux into it).

    `close()` writes the last segment; a writer dropped without it leaves a file that reads
    as cut short, never as a shorter complete one.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._prefix = secrets.token_bytes(PREFIX_BYTES)
        self._header = MAGIC + self._prefix
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: BinaryIO = os.fdopen(descriptor, "wb")
        self._file.write(self._header)
        self._buffer = bytearray()
        self._number = 0
        self._written = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed sealed file")
        self._buffer += data
        # Keep a whole segment back: the last one must be sealed with the last-segment mark.
        while len(self._buffer) > SEGMENT:
            self._seal(bytes(self._buffer[:SEGMENT]), last=False)
            del self._buffer[:SEGMENT]
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        self._file.flush()

    def _seal(self, plaintext: bytes, *, last: bool) -> None:
        nonce = _nonce(self._prefix, self._number, last)
        self._file.write(self._aead.encrypt(nonce, plaintext, self._header))
        self._number += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def plaintext_size(path: Path) -> int:
    """What `open_sealed` yields in total, from the file's size alone (no key needed)."""
    body = path.stat().st_size - HEADER_BYTES
    if body < TAG_BYTES:
        raise SealError("not a sealed file")
    whole, rest = divmod(body, SEGMENT + TAG_BYTES)
    if rest == 0:  # the last segment was a full one
        return whole * SEGMENT
    if rest < TAG_BYTES:
        raise SealError("a sealed file cut inside a segment")
    return whole * SEGMENT + rest - TAG_BYTES


def is_sealed(path: Path) -> bool:
    """Whether the file begins as a sealed one (says nothing of its key or its integrity)."""
    with path.open("rb") as file:
        return file.read(len(MAGIC)) == MAGIC


def check(path: Path, key: bytes) -> None:
    """Open the first and the last segment: `SealError` for a file that is not ours, has
    another key or was cut short (a crash mid-write), before anything is served. A change
    in between is found by `open_sealed` when it reaches it."""
    size = path.stat().st_size
    plaintext_size(path)  # a cut inside a segment
    aead = AESGCM(key)
    stride = SEGMENT + TAG_BYTES
    last_number = max(0, (size - HEADER_BYTES - 1) // stride)
    with path.open("rb") as file:
        header = file.read(HEADER_BYTES)
        if not header.startswith(MAGIC):
            raise SealError("not a sealed file")
        prefix = header[len(MAGIC) :]
        for number in sorted({0, last_number}):
            file.seek(HEADER_BYTES + number * stride)
            chunk = file.read(stride)
            try:
                aead.decrypt(_nonce(prefix, number, number == last_number), chunk, header)
            except InvalidTag as exc:
                raise SealError(
                    "the sealed file was changed, cut short or has another key"
                ) from exc


def open_sealed(path: Path, key: bytes) -> Iterator[bytes]:
    """The plaintext, a segment at a time; `SealError` on a wrong key, a change or a cut."""
    aead = AESGCM(key)
    with path.open("rb") as file:
        header = file.read(HEADER_BYTES)
        if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
            raise SealError("not a sealed file")
        prefix = header[len(MAGIC) :]
        number = 0
        chunk = file.read(SEGMENT + TAG_BYTES)
        while True:
            following = file.read(SEGMENT + TAG_BYTES)
            last = not following
            try:
                yield aead.decrypt(_nonce(prefix, number, last), chunk, header)
            except InvalidTag as exc:
                raise SealError(
                    "the sealed file was changed, cut short or has another key"
                ) from exc
            if last:
                return
            chunk = following
            number += 1
