"""Recordings at rest (issue 13): what sealing costs while a call is recorded, and reading back.

A recording is muxed into a `SealedWriter` by the recorder's thread (PyAV writes through its
own I/O buffer, in pieces of up to 32 KiB); a download decrypts it segment by segment. Measured
on one core, with a synthetic stream of `--mib` MiB in writes of 1,200 bytes (a video packet's
size, smaller than PyAV's writes: the pessimistic case):

  write   plaintext handed to a SealedWriter vs to a plain file (MiB/s, and CPU seconds per
          hour of a 2 Mbit/s call, the most a call sends the recorder)
  read    open_sealed over the file (MiB/s), and the check made before a download starts (ms)

Run: python bench/recordings.py [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import ROOT

from app.sealed import SealedWriter, check, open_sealed

assert ROOT.is_dir()  # _common puts the repository first on the path

WRITE = 1200
CALL_BYTES_PER_HOUR = 2_000_000 / 8 * 3600  # 2 Mbit/s for an hour


def _write(target: object, payload: bytes, total: int) -> float:
    start = time.process_time()
    written = 0
    while written < total:
        target.write(payload)  # type: ignore[attr-defined]  # a file object of either kind
        written += len(payload)
    target.close()  # type: ignore[attr-defined]
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    total = args.mib * 1024 * 1024
    payload = os.urandom(WRITE)
    key = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="bench-rec-") as folder:
        plain_path = Path(folder) / "plain.webm"
        sealed_path = Path(folder) / "call.webm.sealed"
        plain = _write(plain_path.open("wb"), payload, total)
        sealed = _write(SealedWriter(sealed_path, key), payload, total)
        start = time.process_time()
        read = sum(len(chunk) for chunk in open_sealed(sealed_path, key))
        reading = time.process_time() - start
        assert read >= total
        start = time.perf_counter()
        for _ in range(100):
            check(sealed_path, key)
        checking = (time.perf_counter() - start) / 100
    mib = total / 1024 / 1024
    per_hour = CALL_BYTES_PER_HOUR / total
    print(f"{args.mib} MiB in writes of {WRITE} bytes (CPU time of this process)")
    print(f"write plain : {mib / plain:8.1f} MiB/s  {plain * per_hour:6.2f} s CPU per call-hour")
    print(f"write sealed: {mib / sealed:8.1f} MiB/s  {sealed * per_hour:6.2f} s CPU per call-hour")
    print(f"read sealed : {mib / reading:8.1f} MiB/s")
    print(f"check before a download: {checking * 1000:.2f} ms")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
