"""aiortc peers that behave like the browsers: a synthetic camera and microphone, and checks
on what they receive (the colour of the picture, the pitch of the sound)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    pack_remb_fci,
)

from media import hooks
from tests.signaling.helpers import Socket

VIDEO_RATE = 30
SAMPLE_RATE = 48_000


async def until(condition: Callable[[], bool], within: float, every: float = 0.05) -> None:
    """Poll a condition on state that decoder callbacks update (no event to wait on)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (frames arrive in other tasks, unannounced)
            await asyncio.sleep(every)


class ColourCamera(MediaStreamTrack):
    """Frames of one solid colour, at 30 frames a second."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int], width: int = 320, height: int = 240) -> None:
        super().__init__()
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :] = rgb
        self._frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        self._count = 0
        self._start: float | None = None
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self) -> Any:
        await self.flowing.wait()  # a test may cut the camera off, as a dead network would
        if self._start is None:
            self._start = time.monotonic()
        self._count += 1
        wait = self._start + self._count / VIDEO_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = self._frame.reformat()  # a copy: the encoder may hold on to frames
        frame.pts = self._count * (90_000 // VIDEO_RATE)
        frame.time_base = fractions.Fraction(1, 90_000)
        return frame


class ToneMicrophone(MediaStreamTrack):
    """A sine tone in 20 ms frames."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self._hz = hz
        self._sample = 0
        self._start: float | None = None
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self) -> Any:
        await self.flowing.wait()
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._sample / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = 960
        t = (np.arange(samples) + self._sample) / SAMPLE_RATE
        wave = (np.sin(2 * np.pi * self._hz * t) * 12_000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._sample
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sample += samples
        return frame


@dataclass
class Received:
    video_frames: int = 0
    audio_frames: int = 0
    last_colour: tuple[float, float, float] | None = None
    first_video_at: float | None = None
    audio: list[np.ndarray[Any, Any]] = field(default_factory=list)

    def pitch(self) -> float | None:
        """The dominant frequency of the last second of sound received."""
        if not self.audio:
            return None
        signal = np.concatenate(self.audio)[-SAMPLE_RATE:].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
        return float(np.fft.rfftfreq(len(signal), 1 / SAMPLE_RATE)[int(np.argmax(spectrum))])


def without_estimate(receiver: RTCRtpReceiver) -> None:
    """This receiver sends no REMB of its own. aiortc's delay-based estimate, in a busy test
    process (peers sharing an event loop with each other or with the relay), reads the loop's
    lag as a congested link of a few kbit/s, which no browser on loopback would say."""
    setattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator", None)  # noqa: B010


def rtc_configuration(
    ice_servers: list[dict[str, Any]], *, relay_only: bool = False
) -> RTCConfiguration:
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ]
    configuration = RTCConfiguration(iceServers=servers)
    if relay_only:
        from aiortc.rtcconfiguration import RTCIceTransportPolicy

        configuration.iceTransportPolicy = RTCIceTransportPolicy.RELAY
    return configuration


class MediaClient:
    """One participant's media over their signaling socket."""

    def __init__(
        self,
        socket: Socket,
        *,
        colour: tuple[int, int, int],
        tone: float,
        appointment_id: str | None = None,
        relay_only: bool = False,
        send_video: bool = True,
        estimates: bool = True,
    ) -> None:
        self.socket = socket
        self.colour, self.tone = colour, tone
        self.appointment_id = appointment_id  # set for the clinician's console
        self.relay_only = relay_only
        self.send_video = send_video
        self.estimates = estimates  # whether its video receiver sends REMB (without_estimate)
        self.pc: RTCPeerConnection | None = None
        self.received = Received()
        self.last_answer: dict[str, Any] = {}
        self._readers: list[asyncio.Task[None]] = []

    def _message(self, **fields: Any) -> dict[str, Any]:
        if self.appointment_id is not None:
            fields["appointment_id"] = self.appointment_id
        return fields

    async def connect(self, ice_servers: list[dict[str, Any]]) -> None:
        """A new peer connection: offer, and apply the relay's answer."""
        await self.close_pc()
        self.received = Received()
        pc = RTCPeerConnection(rtc_configuration(ice_servers, relay_only=self.relay_only))
        self.pc = pc
        pc.addTrack(ToneMicrophone(self.tone))
        if self.send_video:
            pc.addTrack(ColourCamera(self.colour))
        else:
            pc.addTransceiver("video", direction="recvonly")
        if not self.estimates:
            for transceiver in pc.getTransceivers():
                without_estimate(transceiver.receiver)

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self._readers.append(asyncio.ensure_future(self._read(track)))

        await pc.setLocalDescription(await pc.createOffer())
        await self.socket.send(self._message(type="offer", sdp=pc.localDescription.sdp))
        answer = await self.socket.expect("answer", within=15)
        self.last_answer = answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame: Any = await track.recv()
                if track.kind == "video":
                    rgb = frame.to_ndarray(format="rgb24")
                    self.received.video_frames += 1
                    self.received.last_colour = tuple(rgb.reshape(-1, 3).mean(axis=0))
                    if self.received.first_video_at is None:
                        self.received.first_video_at = time.monotonic()
                else:
                    samples = frame.to_ndarray()
                    # Packed formats interleave the channels in one row: keep the first.
                    channels = len(frame.layout.channels)
                    mono = samples[0, ::channels] if frame.format.is_packed else samples[0]
                    self.received.audio_frames += 1
                    self.received.audio.append(mono.copy())
                    if len(self.received.audio) > 100:
                        del self.received.audio[:-100]

    def sees(self, colour: tuple[int, int, int]) -> bool:
        seen = self.received.last_colour
        return seen is not None and all(abs(a - b) < 25 for a, b in zip(seen, colour, strict=True))

    async def wait_for_video(self, colour: tuple[int, int, int], within: float = 15.0) -> None:
        """Until a frame of (nearly) this colour has been decoded."""
        await until(lambda: self.sees(colour), within)

    async def wait_for_audio(self, frames: int = 60, within: float = 15.0) -> None:
        await until(lambda: self.received.audio_frames >= frames, within)

    async def close_pc(self) -> None:
        for reader in self._readers:
            reader.cancel()
        self._readers.clear()
        if self.pc is not None:
            await self.pc.close()
            self.pc = None


# What a browser on a poor link tells the relay, sent by a test peer's own receiver.


def rtcp_ssrc(receiver: RTCRtpReceiver) -> int:
    value = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc")  # noqa: B009
    assert value is not None
    return int(value)


_LOSS_COUNTERS: dict[int, tuple[int, int]] = {}  # id(receiver) -> (highest sequence, lost)


async def report_loss(receiver: RTCRtpReceiver, fraction: float) -> None:
    """The subscriber says it lost `fraction` of the next 100 packets (as a browser would:
    cumulative counters, which the relay reads over whole intervals)."""
    highest, lost = _LOSS_COUNTERS.get(id(receiver), (1000, 0))
    highest, lost = highest + 100, lost + round(fraction * 100)
    _LOSS_COUNTERS[id(receiver)] = (highest, lost)
    reports = [
        RtcpReceiverInfo(
            ssrc=ssrc,
            fraction_lost=int(fraction * 256),
            packets_lost=lost,
            highest_sequence=highest,
            jitter=0,
            lsr=0,
            dlsr=0,
        )
        for ssrc in hooks.sources(receiver)
    ]
    await receiver._send_rtcp(RtcpRrPacket(ssrc=rtcp_ssrc(receiver), reports=reports))


async def send_remb(receiver: RTCRtpReceiver, bps: int) -> None:
    packet = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP,
        ssrc=rtcp_ssrc(receiver),
        media_ssrc=0,
        fci=pack_remb_fci(bps, hooks.sources(receiver)),
    )
    await receiver._send_rtcp(packet)
