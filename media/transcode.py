"""The fallback where two legs could not agree on a codec: decoded frames for aiortc to encode.

A `TranscodedTrack` listens to a publisher's encoded frames, decodes them off the event loop
with aiortc's own decoder for the source codec, and hands `av` frames to the subscriber's
sender, which encodes them in the codec its leg negotiated. It costs a decode and an encode per
frame; the call's stats report `"mode": "transcoding"` while any leg needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from aiortc.codecs import get_decoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.frames import EncodedFrame
from media.tracks import CLOCK, Publisher

# Decoded frames waiting for the encoder: a subscriber that falls behind skips to the newest.
MAX_DECODED = 3


class TranscodedTrack(MediaStreamTrack):
    def __init__(self, publisher: Publisher, *, source_codec: str) -> None:
        super().__init__()
        self.kind = publisher.kind
        self._publisher = publisher
        self._codec = RTCRtpCodecParameters(
            mimeType=f"{publisher.kind}/{source_codec}", clockRate=CLOCK[publisher.kind]
        )
        self._decoder: Any = None
        self._frames: deque[Any] = deque(maxlen=MAX_DECODED)
        self._ready = asyncio.Event()
        self._decoding: asyncio.Future[Any] | None = None
        self._backlog: deque[EncodedFrame] = deque(maxlen=60)
        self._waiting_keyframe = publisher.kind == "video"
        publisher.listeners.add(self._on_frame)
        publisher.ask_keyframe()

    def _on_frame(self, codec_name: str, frame: EncodedFrame) -> None:
        if self.readyState != "live":
            return
        if self._waiting_keyframe:
            if not frame.keyframe:
                return
            self._waiting_keyframe = False
        self._backlog.append(frame)
        if self._decoding is None or self._decoding.done():
            self._decoding = asyncio.ensure_future(self._decode_backlog())

    async def _decode_backlog(self) -> None:
        loop = asyncio.get_running_loop()
        if self._decoder is None:
            self._decoder = get_decoder(self._codec)
        while self._backlog and self.readyState == "live":
            frame = self._backlog.popleft()
            try:
                decoded = await loop.run_in_executor(None, self._decoder.decode, frame)
            except Exception:
                self._waiting_keyframe = self.kind == "video"
                self._publisher.ask_keyframe()
                continue
            self._frames.extend(decoded)
            self._ready.set()

    async def recv(self) -> Any:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        super().stop()
        self._publisher.listeners.discard(self._on_frame)
        self._frames.clear()
        self._ready.set()
        if self._decoding is not None:
            with contextlib.suppress(Exception):
                self._decoding.cancel()
