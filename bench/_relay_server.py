"""A relay process for bench/relay.py: Televisit's forwarding relay, or stock aiortc MediaRelay.

Driven over one WebSocket on loopback: the load process sends
`{"call", "role", "type": "offer"|"answer"|"candidate"|"record", ...}` and gets back what the
relay emits for each (call, role). `--mode stock` answers with aiortc's own `MediaRelay`, which
decodes every received frame and encodes it again for each subscriber: the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from app.config import Settings
from app.participants import is_guest
from media import hooks
from media.peers import ice_configuration
from media.relay import Relay
from signaling.media import Consent, GuestConsent


class NullLog:
    async def started(self, *_args: Any) -> None:
        return None

    async def stopped(self, *_args: Any) -> None:
        return None

    async def summary(self, *_args: Any) -> None:
        return None


class StockRelay:
    """aiortc's MediaRelay: decode once per publisher, encode once per subscriber."""

    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.relay = MediaRelay()
        self.calls: dict[uuid.UUID, dict[str, Any]] = {}

    async def offer(self, call_id: uuid.UUID, role: str, sdp: str) -> None:
        call = self.calls.setdefault(call_id, {"pcs": {}, "tracks": {}})
        pc = RTCPeerConnection(ice_configuration([]))
        for line in sdp.splitlines():  # in the offer's order, as the relay does
            if line.startswith(("m=audio", "m=video")):
                pc.addTransceiver(line[2:7], direction="sendrecv")
        call["pcs"][role] = pc

        @pc.on("track")
        def _on_track(track: Any) -> None:
            call["tracks"][(role, track.kind)] = track
            self._attach(call)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._attach(call)
        await pc.setLocalDescription(await pc.createAnswer())
        await self.emit(call_id, role, {"type": "answer", "sdp": pc.localDescription.sdp})

    def _attach(self, call: dict[str, Any]) -> None:
        for role, pc in call["pcs"].items():
            for transceiver in pc.getTransceivers():
                if transceiver.sender.track is not None or transceiver.mid is None:
                    continue
                source = next(
                    (
                        t
                        for (r, k), t in call["tracks"].items()
                        if r != role and k == transceiver.kind
                    ),
                    None,
                )
                if source is not None:
                    transceiver.sender.replaceTrack(self.relay.subscribe(source))

    async def close_all(self) -> None:
        for call in self.calls.values():
            for pc in call["pcs"].values():
                await pc.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["forward", "stock"], default="forward")
    args = parser.parse_args()
    hooks.restrict_host_addresses(["127.0.0.1"])
    connections: set[ServerConnection] = set()

    async def emit(call_id: uuid.UUID, role: str, message: dict[str, Any]) -> None:
        data = json.dumps({"call": str(call_id), "role": role, **message})
        for connection in list(connections):
            await connection.send(data)

    recordings = Path(tempfile.mkdtemp(prefix="televisit-bench-rec-"))
    settings = Settings(media_ips=["127.0.0.1"], recordings_dir=recordings)
    relay = Relay(settings=settings, emit=emit, recordings=NullLog())  # type: ignore[arg-type]
    stock = StockRelay(emit)

    async def handle(connection: ServerConnection) -> None:
        connections.add(connection)
        try:
            async for raw in connection:
                message = json.loads(raw)
                call_id, role, kind = uuid.UUID(message["call"]), message["role"], message["type"]
                if args.mode == "stock":
                    if kind == "offer":
                        await stock.offer(call_id, role, message["sdp"])
                    continue
                if not relay.has_call(call_id):
                    await relay.open_call(call_id, consent=Consent(True, True), ice_servers=[])
                if kind == "offer" and is_guest(role):
                    await relay.guest_consent(call_id, role, GuestConsent(True, True))
                if kind == "offer":
                    await relay.offer(call_id, role, message["sdp"])
                elif kind == "answer":
                    await relay.answer(call_id, role, message["sdp"])
                elif kind == "record":
                    await relay.record(call_id, message["action"])
                elif kind == "close":
                    await relay.close_call(call_id)
        finally:
            connections.discard(connection)

    async with serve(handle, "127.0.0.1", args.port, max_size=2**22):
        # As `televisit serve` does (app/cli.py): what start-up loaded is out of the collector's
        # reach; the relay's own garbage is collected as usual, and measured.
        gc.collect()
        gc.freeze()
        print("ready", flush=True)
        try:
            await asyncio.Future()
        finally:
            await relay.shutdown()
            await stock.close_all()


if __name__ == "__main__":
    asyncio.run(main())
