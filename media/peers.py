"""Every peer connection the relay holds, and the network rules they follow.

The registry owns each `RTCPeerConnection`: it closes one when its participant leaves, when it
fails, and all of them when the process shuts down, so none outlives its call.

Network rules: ICE servers are always explicit (aiortc would otherwise ask Google's STUN server);
the relay's own candidates come from `TELEVISIT_MEDIA_IPS` (media.hooks); and a client's
candidates outside `TELEVISIT_MEDIA_PEER_ALLOW` are dropped, so a client cannot make the relay
send connectivity checks to internal hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy

# Never sent to by default: link-local (which holds the cloud metadata service 169.254.169.254),
# multicast, unspecified, and the other clouds' metadata addresses.
DEFAULT_DENIED = (
    "169.254.0.0/16",
    "fe80::/10",
    "224.0.0.0/4",
    "ff00::/8",
    "0.0.0.0/8",
    "::/128",
    "100.100.100.200/32",
    "fd00:ec2::254/128",
)
_CANDIDATE_LINE = re.compile(r"^a=candidate:(\S+ ){4}(?P<address>\S+) ", re.MULTILINE)


class PeerFilter:
    """Which remote addresses the relay may send connectivity checks to."""

    def __init__(self, allow: Iterable[str]) -> None:
        allowed = [ipaddress.ip_network(a, strict=False) for a in allow]
        self._allowed = allowed or None
        self._denied = [ipaddress.ip_network(d) for d in DEFAULT_DENIED]

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False  # hostnames (mDNS ".local") cannot be vetted: not resolved, not used
        if self._allowed is not None:
            return any(ip in network for network in self._allowed)
        return not any(ip in network for network in self._denied)

    def candidate_allowed(self, candidate: str) -> bool:
        """`candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...`"""
        parts = candidate.removeprefix("a=").removeprefix("candidate:").split()
        return len(parts) >= 6 and self.allows(parts[4])

    def filter_sdp(self, sdp: str) -> str:
        """The SDP without candidate lines naming addresses that are not allowed."""
        kept = [
            line
            for line in sdp.splitlines()
            if not line.startswith("a=candidate:") or self.candidate_allowed(line)
        ]
        return "\r\n".join(kept) + "\r\n"


def ice_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """Exactly these servers (an empty list contacts none), one bundled transport."""
    servers = [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in ice_servers
    ]
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


@dataclass(eq=False)
class Peer:
    call_id: uuid.UUID
    role: str
    pc: RTCPeerConnection


class PeerRegistry:
    def __init__(self) -> None:
        self._peers: set[Peer] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def create(self, call_id: uuid.UUID, role: str, configuration: RTCConfiguration) -> Peer:
        peer = Peer(call_id, role, RTCPeerConnection(configuration=configuration))
        self._peers.add(peer)

        @peer.pc.on("connectionstatechange")
        def _state() -> None:
            if peer.pc.connectionState in ("failed", "closed"):
                self.close_soon(peer)

        return peer

    def close_soon(self, peer: Peer) -> None:
        task = asyncio.ensure_future(self.close(peer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, peer: Peer) -> None:
        self._peers.discard(peer)
        with contextlib.suppress(Exception):
            await peer.pc.close()

    async def close_call(self, call_id: uuid.UUID) -> None:
        for peer in [p for p in self._peers if p.call_id == call_id]:
            await self.close(peer)

    async def close_all(self) -> None:
        for peer in list(self._peers):
            await self.close(peer)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._peers)

    def of_call(self, call_id: uuid.UUID) -> list[Peer]:
        return [p for p in self._peers if p.call_id == call_id]


def ice_ufrag(sdp: str) -> str | None:
    match = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)
    return match.group(1) if match else None


__all__ = ["Peer", "PeerFilter", "PeerRegistry", "ice_configuration", "ice_ufrag"]
