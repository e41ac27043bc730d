"""The relay in the test's own process, driven through its MediaPlane methods, with aiortc peers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from app.config import Settings
from app.sealed import open_sealed
from media.relay import Relay
from signaling.media import Consent, GuestConsent
from tests.media.clients import (
    ColourCamera,
    Received,
    ToneMicrophone,
    rtc_configuration,
    without_estimate,
)


class Log:
    """media.recording.RecordingLog in memory."""

    def __init__(self) -> None:
        self.recordings: list[dict[str, Any]] = []
        self.summaries: dict[uuid.UUID, dict[str, Any]] = {}

    async def started(self, call_id: uuid.UUID, recording_id: uuid.UUID, file_name: str) -> None:
        self.recordings.append({"call": call_id, "id": recording_id, "file": file_name})

    async def stopped(
        self, call_id: uuid.UUID, recording_id: uuid.UUID, size: int, reason: str
    ) -> None:
        for recording in self.recordings:
            if recording["id"] == recording_id:
                recording.update(bytes=size, reason=reason)

    async def summary(self, call_id: uuid.UUID, summary: dict[str, Any]) -> None:
        self.summaries[call_id] = summary


class Outbox:
    """What the relay emits, per (call, role); each `expect` takes the first of its type."""

    def __init__(self) -> None:
        self.messages: dict[tuple[uuid.UUID, str], list[dict[str, Any]]] = defaultdict(list)
        self._arrived = asyncio.Condition()

    async def emit(self, call_id: uuid.UUID, role: str, message: dict[str, Any]) -> None:
        async with self._arrived:
            self.messages[(call_id, role)].append(message)
            self._arrived.notify_all()

    async def expect(
        self, call_id: uuid.UUID, role: str, kind: str, within: float = 10.0
    ) -> dict[str, Any]:
        pending = self.messages[(call_id, role)]
        async with asyncio.timeout(within), self._arrived:
            while True:
                for index, message in enumerate(pending):
                    if message.get("type") == kind:
                        return pending.pop(index)
                await self._arrived.wait()


class Peer:
    """A participant's aiortc peer that also answers the relay's own offers."""

    def __init__(
        self,
        relay: Relay,
        outbox: Outbox,
        call_id: uuid.UUID,
        role: str,
        *,
        colour: tuple[int, int, int],
        tone: float,
        video_first: bool = False,
        video_codec: str | None = None,
        size: tuple[int, int] = (320, 240),
        estimates: bool = True,
    ) -> None:
        self.relay, self.outbox, self.call_id, self.role = relay, outbox, call_id, role
        self.video_first = video_first
        self.size = size  # the camera's frames (small ones keep four peers in one process light)
        # Whether its receivers send REMB. Several peers and the relay in one process share one
        # event loop: its lag reads, to their delay-based estimates, as a congested link.
        self.estimates = estimates
        self.video_codec = video_codec  # offer only this video codec (e.g. "H264")
        self.sources: list[ColourCamera | ToneMicrophone] = []
        self.colour, self.tone = colour, tone
        self.pc: RTCPeerConnection | None = None
        self.tracks: list[Received] = []
        self.by_mid: dict[str, Received] = {}  # what arrives on each transceiver, by its mid
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self) -> None:
        pc = RTCPeerConnection(rtc_configuration([]))
        self.pc = pc
        tracks: list[ColourCamera | ToneMicrophone] = [
            ToneMicrophone(self.tone),
            ColourCamera(self.colour, *self.size),
        ]
        self.sources = tracks
        for track in reversed(tracks) if self.video_first else tracks:
            pc.addTrack(track)
        if self.video_codec is not None:
            capabilities = RTCRtpSender.getCapabilities("video").codecs
            only = [
                c for c in capabilities if c.mimeType.lower() == f"video/{self.video_codec.lower()}"
            ]
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(only)

        @pc.on("track")
        def _on_track(track: Any) -> None:
            received = Received()
            self.tracks.append(received)
            for transceiver in pc.getTransceivers():
                if transceiver.receiver.track is track and transceiver.mid is not None:
                    self.by_mid[transceiver.mid] = received
                    if not self.estimates:
                        without_estimate(transceiver.receiver)
            self._tasks.append(asyncio.ensure_future(_read(track, received)))

        await pc.setLocalDescription(await pc.createOffer())
        await self.relay.offer(self.call_id, self.role, self.rewrite(pc.localDescription.sdp))
        answer = await self.outbox.expect(self.call_id, self.role, "answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self._tasks.append(asyncio.ensure_future(self._answer_offers()))

    async def _answer_offers(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                offer = await self.outbox.expect(self.call_id, self.role, "offer", within=3600)
                assert self.pc is not None
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=offer["sdp"], type="offer")
                )
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.relay.answer(self.call_id, self.role, self.pc.localDescription.sdp)

    async def add_video(self, colour: tuple[int, int, int]) -> ColourCamera:
        """A second camera (a shared screen, as a browser adds it): `addTrack`, and an offer
        on the same connection."""
        assert self.pc is not None
        screen = ColourCamera(colour, *self.size)
        self.sources.append(screen)
        self.pc.addTrack(screen)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.relay.offer(self.call_id, self.role, self.pc.localDescription.sdp)
        answer = await self.outbox.expect(self.call_id, self.role, "answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return screen

    def cut_off(self) -> None:
        """Stop sending anything, as if the path died (the peer connection stays open)."""
        for source in self.sources:
            source.flowing.clear()

    def rewrite(self, sdp: str) -> str:
        """What the offer says on the wire; a test may make it say more."""
        return sdp

    def colours(self) -> list[tuple[float, float, float]]:
        return [r.last_colour for r in self.tracks if r.last_colour is not None]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()


async def _read(track: Any, received: Received) -> None:
    from aiortc.mediastreams import MediaStreamError

    with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
        while True:
            frame: Any = await track.recv()
            if track.kind == "video":
                rgb = frame.to_ndarray(format="rgb24")
                received.video_frames += 1
                received.last_colour = tuple(rgb.reshape(-1, 3).mean(axis=0))
            else:
                received.audio_frames += 1
                samples = frame.to_ndarray()
                channels = len(frame.layout.channels)
                mono = samples[0, ::channels] if frame.format.is_packed else samples[0]
                received.audio.append(mono.copy())
                if len(received.audio) > 60:
                    del received.audio[:-60]


def consent(
    video: bool = True, recording: bool = True, guests: dict[str, GuestConsent] | None = None
) -> Consent:
    return Consent(video_visit=video, recording=recording, guests=guests or {})


def streams(outbox: Outbox, call_id: uuid.UUID, role: str) -> list[dict[str, Any]] | None:
    """The latest `streams` message the relay sent this participant (left in the outbox)."""
    for message in reversed(outbox.messages[(call_id, role)]):
        if message.get("type") == "streams":
            items: list[dict[str, Any]] = message["items"]
            return items
    return None


class Guard:
    """signaling.media.ConsentGuard over decisions held here (a database that answers)."""

    def __init__(self, standing: Consent | None = None) -> None:
        self.standing = standing or Consent(video_visit=True, recording=True, seq=1)
        self.over: list[uuid.UUID] = []

    async def read_consent(self, call_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Consent]:
        return dict.fromkeys(call_ids, self.standing)

    async def call_over(self, call_id: uuid.UUID) -> None:
        self.over.append(call_id)

    async def recording_refused(self, call_id: uuid.UUID) -> None:
        pass


def guarded_relay(folder: Path, guard: Guard) -> tuple[Relay, Outbox, Log]:
    """A relay in the test's process that reads the consent itself, from `guard` (recordings
    under `folder`), and what it emits and records. The caller shuts it down."""
    outbox, log = Outbox(), Log()
    settings = Settings(environment="development", media_ips=["127.0.0.1"], recordings_dir=folder)
    return Relay(settings=settings, emit=outbox.emit, recordings=log, guard=guard), outbox, log


def close_to(seen: tuple[float, ...] | None, colour: tuple[int, int, int]) -> bool:
    """Whether a frame's mean colour (None: no frame yet) is `colour`, within 25 per channel."""
    return seen is not None and all(abs(a - b) < 25 for a, b in zip(seen, colour, strict=True))


def sees(peer: Peer, colour: tuple[int, int, int]) -> bool:
    """Whether any video the peer receives shows `colour` now."""
    return any(close_to(seen, colour) for seen in peer.colours())


@dataclass(frozen=True)
class Recorded:
    """What a recording's file holds, decoded."""

    kinds: list[str]  # each stream's type, in the file's order
    audio_frames: int
    colours: list[tuple[float, ...]]  # each video stream's last frame's mean colour


def decode_recording(path: Path, key: bytes) -> Recorded:
    """A sealed recording opened with `key` and decoded whole with PyAV."""
    plain = b"".join(open_sealed(path, key))
    colours: dict[int, tuple[float, ...]] = {}
    audio = 0
    with av.open(io.BytesIO(plain), "r") as container:
        kinds: list[str] = [stream.type for stream in container.streams]
        for packet in container.demux():
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
                    colours[packet.stream.index] = tuple(rgb)
                else:
                    audio += 1
    return Recorded(kinds, audio, list(colours.values()))
