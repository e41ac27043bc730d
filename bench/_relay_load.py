"""Load for bench/relay.py: calls of aiortc peers sending pre-encoded 640x480@30 VP8 + Opus.

Calls of two (the patient and the clinician), or with `--party 4` of four (two guests too):
every peer answers the relay's own offers and reads its `streams` messages, so each received
frame is matched to the publisher it came from.

The peers never encode or decode (that would eat the measurement): they send packets encoded
once at start-up, in a loop, and receive through media.hooks' tap (frames assembled, not
decoded). Each received frame is recognised by its bytes, so its one-way delay is its arrival
minus the moment its publisher sent it, on this process's clock.

Prints `MEASURE` when the measured window starts and `RESULT <json>` when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import gc
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import av
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from media import hooks
from media.frames import EncodedFrame, FrameAssembler

FPS = 30
LOOP = 60  # frames in the pre-encoded loop (a keyframe at its start)
WIDTH, HEIGHT = 640, 480


def encode_video() -> list[bytes]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = WIDTH, HEIGHT
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.bit_rate = 1_000_000
    codec.gop_size = LOOP
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    x = np.arange(WIDTH, dtype=np.int32)
    y = np.arange(HEIGHT, dtype=np.int32)[:, None]
    packets: list[bytes] = []
    for i in range(LOOP):
        # A moving pattern: real inter frames, about 1 Mbit/s.
        luma = ((x + 4 * i) ^ (y + 2 * i)) % 256
        rgb = np.stack([luma, (luma * 3) % 256, (255 - luma)], axis=2).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets[:LOOP]


def encode_audio() -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48_000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32_000
    packets: list[bytes] = []
    t = np.arange(960 * 50) / 48_000
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(50):
        chunk = np.repeat(tone[i * 960 : (i + 1) * 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = 48_000
        frame.pts = i * 960
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


class PacketTrack(MediaStreamTrack):
    """Pre-encoded packets at their real-time pace; remembers when each was sent."""

    def __init__(self, kind: str, packets: list[bytes], sent: list[float]) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._sent = sent
        self._step = 3000 if kind == "video" else 960
        self._interval = 1 / FPS if kind == "video" else 0.02
        self._time_base = fractions.Fraction(1, 90_000 if kind == "video" else 48_000)
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> Any:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._count * self._interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        index = self._count % len(self._packets)
        packet = av.Packet(self._packets[index])
        packet.pts = self._count * self._step
        packet.time_base = self._time_base
        self._count += 1
        self._sent[index] = time.monotonic()
        return packet


class Peer:
    def __init__(self, call: str, role: str, video: list[bytes], audio: list[bytes]) -> None:
        self.call, self.role = call, role
        self.sent: list[float] = [0.0] * len(video)
        self.video, self.audio = video, audio
        self.index = {data: i for i, data in enumerate(video)}
        self.others: dict[str, Peer] = {}  # the call's other peers, by role
        self.mids: dict[str, str] = {}  # mid -> whose video arrives there (`streams`)
        self.frames: dict[str, list[float]] = {}  # per mid: arrival times in the window
        self.delays: list[float] = []
        self.measuring = False
        self.answered: asyncio.Future[dict[str, Any]] | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    def start(self) -> None:
        # Video first, as some clients do (the relay follows the offer's order).
        self.pc.addTrack(PacketTrack("video", self.video, self.sent))
        self.pc.addTrack(PacketTrack("audio", self.audio, [0.0] * len(self.audio)))

        @self.pc.on("track")
        def _on_track(track: Any) -> None:
            transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
            receiver = transceiver.receiver
            kind, mid = track.kind, str(transceiver.mid)

            def sink(_codec: Any, frame: EncodedFrame) -> None:
                if kind != "video" or not self.measuring:
                    return
                now = time.monotonic()
                self.frames.setdefault(mid, []).append(now)
                publisher = self.others.get(self.mids.get(mid, ""))
                index = self.index.get(frame.data)
                if index is not None and publisher is not None:
                    self.delays.append((now - publisher.sent[index]) * 1000)

            hooks.tap_receiver(receiver, FrameAssembler(kind, hooks.codec_of(receiver), sink), sink)
            # These peers stand in for browsers on a clean link. aiortc's delay-based estimator,
            # in a process this busy, reads its own scheduling delays as a congested link and
            # sends REMBs no browser on loopback would; and these publishers cannot lower their
            # pre-encoded bitrate anyway. So they send no REMB (loss reports still go).
            setattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator", None)  # noqa: B010


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--party", type=int, choices=(2, 3, 4), default=2)
    args = parser.parse_args()
    hooks.restrict_host_addresses(["127.0.0.1"])
    video, audio = encode_video(), encode_audio()
    inbox: dict[tuple[str, str], asyncio.Queue[dict[str, Any]]] = {}
    async with connect(f"ws://127.0.0.1:{args.port}", proxy=None, max_size=2**22) as ws:

        async def dispatch() -> None:
            async for raw in ws:
                message = json.loads(raw)
                key = (message["call"], message["role"])
                inbox.setdefault(key, asyncio.Queue()).put_nowait(message)

        reader = asyncio.create_task(dispatch())

        async def send(peer: Peer, **message: Any) -> None:
            await ws.send(json.dumps({"call": peer.call, "role": peer.role, **message}))

        async def serve(peer: Peer) -> None:
            """What the relay says to this peer: answers, its own offers, `streams`."""
            queue = inbox.setdefault((peer.call, peer.role), asyncio.Queue())
            while True:
                message = await queue.get()
                kind = message.get("type")
                if kind == "streams":
                    peer.mids = {
                        i["mid"]: i["participant"] for i in message["items"] if i["kind"] == "video"
                    }
                elif kind == "answer" and peer.answered is not None:
                    # Here, in order: the relay's own offer may follow its answer at once.
                    answer = RTCSessionDescription(sdp=message["sdp"], type="answer")
                    await peer.pc.setRemoteDescription(answer)
                    peer.answered.set_result(message)
                elif kind == "offer":
                    offer = RTCSessionDescription(sdp=message["sdp"], type="offer")
                    await peer.pc.setRemoteDescription(offer)
                    await peer.pc.setLocalDescription(await peer.pc.createAnswer())
                    await send(peer, type="answer", sdp=peer.pc.localDescription.sdp)

        servers: list[asyncio.Task[None]] = []
        peers: list[Peer] = []
        for _ in range(args.calls):
            call = str(uuid.uuid4())
            roles = ["patient", "clinician", f"interpreter:{uuid.uuid4()}"]
            roles = [*roles, f"caregiver:{uuid.uuid4()}"][: args.party]
            party = [Peer(call, role, video, audio) for role in roles]
            for peer in party:
                peer.others = {p.role: p for p in party if p is not peer}
                servers.append(asyncio.create_task(serve(peer)))
            for peer in party:
                peer.start()
                await peer.pc.setLocalDescription(await peer.pc.createOffer())
                peer.answered = asyncio.get_running_loop().create_future()
                await send(peer, type="offer", sdp=peer.pc.localDescription.sdp)
                await asyncio.wait_for(peer.answered, 30)
            peers += party
            if args.record:
                await send(party[1], type="record", action="start")
        await asyncio.sleep(4 + 2 * (args.party > 2))  # connected, first keyframes through
        # This process measures delays: a collection here would pause it and count as relay
        # delay. Nothing is collected while it measures (the run is short and bounded).
        gc.collect()
        gc.disable()
        for peer in peers:
            peer.measuring = True
        print("MEASURE", flush=True)
        await asyncio.sleep(args.seconds)
        for peer in peers:
            peer.measuring = False
        # Per video received: every peer gets party - 1 of them (a missing one counts as 0).
        fps = [
            len(p.frames.get(mid, [])) / args.seconds
            for p in peers
            for mid in (list(p.frames) + ["missing"] * (args.party - 1 - len(p.frames)))
        ]
        delays = sorted(d for p in peers for d in p.delays)
        result = {
            "calls": args.calls,
            "party": args.party,
            "streams": args.calls * args.party * (args.party - 1),
            "fps_min": min(fps),
            "fps_mean": sum(fps) / len(fps),
            "delay_p50": delays[len(delays) // 2] if delays else None,
            "delay_p95": delays[int(len(delays) * 0.95)] if delays else None,
            "frames": len(delays),
        }
        print("RESULT", json.dumps(result), flush=True)
        for peer in peers:
            await peer.pc.close()
        for task in servers:
            task.cancel()
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main())
