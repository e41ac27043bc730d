"""Device checks: a short-lived peer connection answers a page's offer, in no room.

The page learns whether media can reach this relay directly or only through TURN. A probe's
connection lives PROBE_SECONDS; at most MAX_PROBES run at once, more are refused (`busy`).
"""

from __future__ import annotations

import asyncio
import uuid

from aiortc import RTCSessionDescription

from app.config import Settings
from media.peers import Peer, PeerFilter, PeerRegistry, ice_configuration
from signaling.media import SignalingError

PROBE_SECONDS = 20.0
MAX_PROBES = 50


class Probes:
    def __init__(self, settings: Settings, registry: PeerRegistry, peer_filter: PeerFilter) -> None:
        self.settings = settings
        self.registry = registry
        self.filter = peer_filter
        self.live: set[Peer] = set()
        self._ending: set[asyncio.Task[None]] = set()

    async def answer(self, sdp: str) -> str:
        if len(self.live) >= MAX_PROBES:
            raise SignalingError("busy", "Too many connection tests at once; try again.")
        stun = [{"urls": list(self.settings.stun_urls)}] if self.settings.stun_urls else []
        peer = self.registry.create(uuid.uuid4(), "probe", ice_configuration(stun))
        self.live.add(peer)
        loop = asyncio.get_running_loop()
        loop.call_later(PROBE_SECONDS, self._end_soon, peer)
        try:
            await peer.pc.setRemoteDescription(
                RTCSessionDescription(sdp=self.filter.filter_sdp(sdp), type="offer")
            )
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        except Exception:
            await self.end(peer)
            raise SignalingError("invalid_offer", "That offer could not be answered.") from None
        return str(peer.pc.localDescription.sdp)

    async def end(self, peer: Peer) -> None:
        self.live.discard(peer)
        await self.registry.close(peer)

    def _end_soon(self, peer: Peer) -> None:
        task = asyncio.ensure_future(self.end(peer))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
