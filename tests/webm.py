"""A small real WebM (VP8, 160x120, 15 frames a second), for tests that need a recording."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

WIDTH, HEIGHT = 160, 120


def write_webm(target: Path | BinaryIO, frames: int = 30) -> None:
    """Mux `frames` frames (each a shade brighter) into `target`, a path or a writable file."""
    container = av.open(str(target) if isinstance(target, Path) else target, "w", format="webm")
    stream = container.add_stream("libvpx", rate=15)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    for number in range(frames):
        image = np.full((HEIGHT, WIDTH, 3), number * 8 % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = number, Fraction(1, 15)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
