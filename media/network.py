"""The relay on real networks: its UDP ports (`TELEVISIT_MEDIA_PORTS`) and the address it offers
(`TELEVISIT_MEDIA_PUBLIC_IP`).

`configure(ports, public_ip)` sets both for the whole process, for every aioice ICE connection
it makes (in `televisit serve`, only the relay's); `configure(None, None)` leaves aioice as it
came. A relay in a container or behind a cloud VM's 1:1 NAT then works with only that UDP range
open, and offers the address clients can reach.

Ports: each host candidate's socket is bound to a port of the range, trying them from a random
place in it (two processes sharing a range rarely race for the same port) and skipping those in
use. A peer connection for which no port is free fails with `PortsExhausted` (code
`media_ports_exhausted`), which the relay answers to that participant, and
`televisit_media_ports_exhausted_total` counts it. With bundling (the relay always bundles),
each participant's peer connection takes one port per local address.

Public address: each host candidate of the same family (IPv4 or IPv6) as `public_ip` carries
that address in place of the local one, with the same port; nothing else is offered for it.
This is what mediasoup's `announcedIp` and Janus's `nat_1_1_mapping` do by default: behind 1:1
NAT the local address is unreachable from outside, and offering it would only cost clients a
failing connectivity check (and show them the private address). The NAT must keep port numbers
(Docker's `-p 40000-40099:40000-40099/udp`, a cloud VM's public address), so the range is
published as it is. Clients inside the same private network reach the relay through the public
address too (hair-pinning), as they would reach any service behind that NAT.

The TURN client sockets of aioice are not covered: the relay never uses TURN itself
(media.relay keeps only STUN servers for its own peer connections).

aioice internals relied on (aioice 0.13.0, which aiortc 1.16.0 brings; `check()` reads them
at start-up and by the tests, and fails loudly and clearly if an upgrade moved any):

- `aioice.ice.Connection.get_component_candidates(component, addresses, timeout)` binds each
  host candidate's socket with `asyncio.get_running_loop().create_datagram_endpoint(...,
  local_addr=(address, 0))`, skips an address whose binding raises `OSError`, and builds the host
  candidate from the socket's `sockname`; its server-reflexive candidates come from those sockets.
  This module gives `aioice.ice` an `asyncio` whose running loop binds `(address, 0)` inside the
  range (`_IceAsyncio`), and wraps the method (once) to rewrite its host candidates and to raise
  `PortsExhausted`.
- `Connection._protocols` holds the connection's `StunProtocol`s, and each protocol's
  `local_candidate` is the candidate its socket stands for: the rewritten candidate replaces the
  old one there, as in the returned list.
- `aioice.candidate.Candidate(foundation, component, transport, priority, host, port, type, ...)`.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

import aioice.ice
from aioice.candidate import Candidate

from app import metrics
from media.hooks import HookError
from signaling.media import SignalingError

logger = logging.getLogger("televisit.media")

AIOICE_VERSION = "0.13.0"

# What `Connection.get_component_candidates` must still say for the hooks below to hold.
_EXPECTED_SOURCE = (
    "asyncio.get_running_loop()",
    "loop.create_datagram_endpoint(",
    "local_addr=(address, 0)",
    "except OSError",
    'get_extra_info("sockname")',
    "protocol.local_candidate = Candidate(",
    "self._protocols += host_protocols",
)
_CANDIDATE_FIELDS = (
    "foundation",
    "component",
    "transport",
    "priority",
    "host",
    "port",
    "type",
    "related_address",
    "related_port",
    "tcptype",
    "generation",
)


class PortsExhausted(SignalingError):
    """No port of `TELEVISIT_MEDIA_PORTS` is free for a new peer connection."""

    def __init__(self) -> None:
        super().__init__(
            "media_ports_exhausted",
            "The media relay has no free ports; try again in a minute.",
        )


class _RangeFull(OSError):
    """Every port of the range is taken on one address (aioice skips that address)."""


_ports: tuple[int, int] | None = None
_public_ip: str | None = None
# Local addresses whose range was full during the current candidate gathering.
_full: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "televisit_media_ports_full", default=None
)
_original_asyncio = vars(aioice.ice)["asyncio"]
_original_get_component_candidates = aioice.ice.Connection.get_component_candidates


def check() -> None:
    """Raise HookError naming what changed, if aioice no longer looks as this module expects."""
    installed = getattr(aioice, "__version__", None)
    if installed is not None and installed != AIOICE_VERSION:
        raise HookError(
            f"media/network.py was written for aioice {AIOICE_VERSION}; aioice {installed} is "
            "installed: review its port range and public address hooks before upgrading"
        )
    if _original_asyncio is not asyncio:
        raise HookError("aioice.ice no longer imports asyncio as `asyncio`: see media/network.py")
    try:
        source = inspect.getsource(_original_get_component_candidates)
    except (OSError, TypeError) as exc:
        raise HookError(
            f"cannot read aioice's Connection.get_component_candidates ({exc}): "
            "media/network.py cannot check its hooks"
        ) from None
    missing = [text for text in _EXPECTED_SOURCE if text not in source]
    if missing:
        raise HookError(
            "aioice's Connection.get_component_candidates changed (no longer has "
            f"{', '.join(missing)}): review media/network.py"
        )
    if "_protocols" not in vars(aioice.ice.Connection)["__init__"].__code__.co_names:
        raise HookError("aioice's Connection has no _protocols: review media/network.py")
    fields = set(inspect.signature(Candidate).parameters)
    if not fields.issuperset(_CANDIDATE_FIELDS):
        raise HookError("aioice's Candidate takes other fields: review media/network.py")


def configure(ports: tuple[int, int] | None, public_ip: str | None) -> None:
    """Bind the relay's host candidates inside `ports` and offer `public_ip` in their place.

    For this whole process; None for both leaves aioice as it came.
    """
    global _ports, _public_ip
    if ports is not None or public_ip is not None:
        check()
    if ports is not None and not 1 <= ports[0] <= ports[1] <= 65535:
        raise ValueError(f"not a port range: {ports[0]}-{ports[1]}")
    if public_ip is not None:
        public_ip = str(ipaddress.ip_address(public_ip))
    _ports, _public_ip = ports, public_ip
    installed = ports is not None or public_ip is not None
    # Module and class attributes of aioice, replaced (and put back) as a whole.
    setattr(aioice.ice, "asyncio", _IceAsyncio() if ports is not None else _original_asyncio)  # noqa: B010
    setattr(  # noqa: B010
        aioice.ice.Connection,
        "get_component_candidates",
        _get_component_candidates if installed else _original_get_component_candidates,
    )


def bind_in_range(address: str, ports: tuple[int, int]) -> socket.socket:
    """A non-blocking UDP socket bound to `address` on a free port of `ports`.

    Starts at a random port of the range and goes round it once; raises `_RangeFull` (an
    OSError) when every port is in use. Other errors (an address that is not local) are raised.
    """
    low, high = ports
    count = high - low + 1
    start = secrets.randbelow(count)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for step in range(count):
        port = low + (start + step) % count
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        sock.setblocking(False)
        return sock
    raise _RangeFull(errno.EADDRINUSE, f"every UDP port of {low}-{high} is in use on {address}")


class _IceLoop:
    """The running loop as `aioice.ice` sees it: host sockets are bound inside the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        ports = _ports
        if ports is None or local_addr is None or local_addr[1] != 0 or kwargs:
            return await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, **kwargs
            )
        try:
            sock = bind_in_range(local_addr[0], ports)
        except _RangeFull:
            full = _full.get()
            if full is not None:
                full.append(local_addr[0])
            raise
        try:
            return await self._loop.create_datagram_endpoint(protocol_factory, sock=sock)
        except BaseException:
            sock.close()
            raise


class _IceAsyncio:
    """`asyncio` as `aioice.ice` sees it: the real module, but for its running loop."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _IceLoop:
        return _IceLoop(asyncio.get_running_loop())


async def _get_component_candidates(
    connection: aioice.ice.Connection,
    component: int,
    addresses: list[str],
    timeout: int = 5,  # noqa: ASYNC109 (aioice's own signature)
) -> list[Candidate]:
    """aioice's, then: `PortsExhausted` if the range left no host candidate; public address."""
    full: list[str] = []
    token = _full.set(full)
    try:
        candidates = await _original_get_component_candidates(
            connection, component, addresses, timeout
        )
    finally:
        _full.reset(token)
    hosts = [c for c in candidates if c.type == "host"]
    if full and not hosts:
        metrics.MEDIA_PORTS_EXHAUSTED.inc()
        logger.warning(
            "no free media port",
            extra={"ports": f"{_ports[0]}-{_ports[1]}" if _ports else None, "addresses": full},
        )
        raise PortsExhausted
    if _public_ip is not None:
        candidates = [_announced(connection, c, _public_ip) for c in candidates]
    return candidates


def _announced(
    connection: aioice.ice.Connection, candidate: Candidate, public_ip: str
) -> Candidate:
    """A host candidate with the public address in place of the local one; others as they are."""
    if candidate.type != "host" or _family(candidate.host) != _family(public_ip):
        return candidate
    announced = Candidate(
        foundation=candidate.foundation,
        component=candidate.component,
        transport=candidate.transport,
        priority=candidate.priority,
        host=public_ip,
        port=candidate.port,
        type=candidate.type,
        related_address=candidate.related_address,
        related_port=candidate.related_port,
        tcptype=candidate.tcptype,
        generation=candidate.generation,
    )
    for protocol in connection._protocols:
        if getattr(protocol, "local_candidate", None) is candidate:
            protocol.local_candidate = announced
    return announced


def _family(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


__all__ = ["PortsExhausted", "bind_in_range", "check", "configure"]
