"""The relay on real networks: its UDP port range, the public address it offers, running out of
ports, bad settings, and coturn with the shipped configuration (deploy/turnserver.conf).

The relay runs in `televisit serve` processes of its own (the settings apply to a whole
process: in-process, they would bind the test's own aiortc peers too). Everything stays on
127.0.0.0/8; 127.0.0.2 stands for the public address of a host behind 1:1 NAT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from aiortc import RTCPeerConnection
from pydantic import ValidationError

from app.config import Settings
from app.db import Database
from app.ice import turn_credentials
from media import network
from tests.conftest import ServerFactory, unavailable
from tests.factories import Staff
from tests.live import LiveServer, free_port
from tests.media.clients import MediaClient, rtc_configuration
from tests.media.conftest import wait_for_coturn
from tests.media.test_call import BLUE, CLINICIAN_TONE, PATIENT_TONE, RED, admitted_call
from tests.signaling.helpers import Socket, Visit, console, grant, make_visit, open_socket

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TURN_CONFIG = ROOT / "deploy" / "turnserver.conf"
PUBLIC = "127.0.0.2"  # the "public" address, on loopback
_CANDIDATE = re.compile(
    r"^a=candidate:\S+ \d+ udp \d+ (?P<host>\S+) (?P<port>\d+) typ (?P<typ>\S+)"
)


def candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of each UDP candidate in an SDP."""
    found = []
    for line in sdp.splitlines():
        match = _CANDIDATE.match(line)
        if match:
            found.append((match["host"], int(match["port"]), match["typ"]))
    return found


def free_range(size: int, *addresses: str) -> tuple[int, int]:
    """`size` consecutive UDP ports free on every address (below Linux's ephemeral ports)."""
    for _ in range(200):
        low = 20_000 + secrets.randbelow(12_000)
        ports = range(low, low + size)
        with contextlib.ExitStack() as held:
            try:
                for address in addresses:
                    for port in ports:
                        sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                        sock.bind((address, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
        return low, low + size - 1
    raise RuntimeError(f"no {size} free consecutive UDP ports found")


def udp_sockets(pid: int) -> set[tuple[str, int]]:
    """The local (address, port) of every IPv4 UDP socket the process holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    bound = set()
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            address, port = fields[1].split(":")
            octets = bytes.fromhex(address)[::-1]  # little-endian on the machines we run on
            bound.add((socket.inet_ntoa(octets), int(port, 16)))
    return bound


@dataclass
class Admitted:
    """A checked-in patient admitted by their clinician: both sockets, and their ICE servers."""

    visit: Visit
    http: httpx.AsyncClient
    patient_socket: Socket
    desk: Socket
    patient_ice: list[dict[str, Any]]
    clinician_ice: list[dict[str, Any]]

    def clients(
        self, *, relay_only: bool = False, wrap: Callable[[Socket], Socket] = lambda s: s
    ) -> tuple[MediaClient, MediaClient]:
        patient = MediaClient(
            wrap(self.patient_socket), colour=RED, tone=PATIENT_TONE, relay_only=relay_only
        )
        clinician = MediaClient(
            wrap(self.desk),
            colour=BLUE,
            tone=CLINICIAN_TONE,
            appointment_id=str(self.visit.appointment_id),
            relay_only=relay_only,
        )
        return patient, clinician


@contextlib.asynccontextmanager
async def admitted(server: LiveServer, staff: Staff, db: Database) -> AsyncIterator[Admitted]:
    visit = await make_visit(db, staff.clinician, by=staff.scheduler)
    async with httpx.AsyncClient(base_url=server.url) as http:
        await grant(http, visit.token)
        async with (
            console(server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{server.ws_url}/ws/visits/{visit.token}") as patient_socket,
        ):
            await patient_socket.expect("waiting")
            await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
            patient_ice = (await patient_socket.expect("admitted"))["ice_servers"]
            clinician_ice = (await desk.expect("call"))["ice_servers"]
            yield Admitted(visit, http, patient_socket, desk, patient_ice, clinician_ice)


class TestSettings:
    @pytest.mark.parametrize(
        ("value", "says"),
        [
            ("40999-40000", "reversed"),
            ("0-100", "within 1-65535"),
            ("40000-70000", "within 1-65535"),
            ("forty-thousand", "FIRST-LAST"),
            ("40000-", "FIRST-LAST"),
            ("40000:40999", "FIRST-LAST"),
        ],
    )
    def test_a_bad_port_range_is_refused(self, value: str, says: str) -> None:
        with pytest.raises(ValidationError) as refused:
            Settings(media_ports=value)  # type: ignore[arg-type]  # as read from the environment
        message = str(refused.value)
        assert "TELEVISIT_MEDIA_PORTS" in message
        assert says in message

    def test_a_port_range_and_a_single_port(self) -> None:
        assert Settings(media_ports="40000-40999").media_ports == (40000, 40999)  # type: ignore[arg-type]
        assert Settings(media_ports=" 5000 ").media_ports == (5000, 5000)  # type: ignore[arg-type]
        assert Settings(media_ports="").media_ports is None  # type: ignore[arg-type]
        assert Settings().media_ports is None

    @pytest.mark.parametrize("value", ["vm.example.org", "10.0.0.256", "0.0.0.0", "224.0.0.1"])  # noqa: S104
    def test_a_public_ip_that_is_not_a_reachable_address_is_refused(self, value: str) -> None:
        with pytest.raises(ValidationError) as refused:
            Settings(media_public_ip=value)
        assert "TELEVISIT_MEDIA_PUBLIC_IP" in str(refused.value)

    def test_public_ips(self) -> None:
        assert Settings(media_public_ip="203.0.113.7").media_public_ip == "203.0.113.7"
        assert Settings(media_public_ip="2001:DB8::7").media_public_ip == "2001:db8::7"
        assert Settings(media_public_ip="").media_public_ip is None

    @pytest.mark.parametrize(
        ("name", "value"),
        [("TELEVISIT_MEDIA_PORTS", "40999-40000"), ("TELEVISIT_MEDIA_PUBLIC_IP", "not-an-ip")],
    )
    def test_serve_refuses_to_start(self, tmp_path: Path, name: str, value: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEVISIT_")}
        result = subprocess.run(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT), name: value},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("televisit: invalid setting media_")
        assert name in line

    def test_the_hooks_match_the_installed_aioice(self) -> None:
        network.check()


class TestPortRange:
    async def test_the_relay_binds_and_offers_only_ports_of_the_range(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        low, high = free_range(6, "127.0.0.1")
        server = live_server_factory(media_ports=f"{low}-{high}")
        async with (
            httpx.AsyncClient(base_url=server.url) as http,
            admitted_call(server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            await call.patient.wait_for_video(BLUE)
            for client in (call.patient, call.clinician):
                offered = candidates(client.last_answer["sdp"])
                assert offered
                assert all(host == "127.0.0.1" and low <= port <= high for host, port, _ in offered)
            bound = udp_sockets(server.process.pid)
            assert len(bound) >= 2  # one a participant, with bundling
            assert all(low <= port <= high for _, port in bound), bound


class NatForwarder:
    """A 1:1 NAT on loopback: `PUBLIC`:p reaches the relay's 127.0.0.1:p, for p in the range.

    Each public port passes what a client sends it to the relay's port, and what the relay sends
    back to the client that last wrote to it, always from the public address, so both ends see
    only `PUBLIC` (the relay allows no other remote address: TELEVISIT_MEDIA_PEER_ALLOW).
    """

    def __init__(self) -> None:
        self.transports: list[asyncio.DatagramTransport] = []
        self.to_relay = self.to_client = 0

    async def start(self, ports: range) -> None:
        loop = asyncio.get_running_loop()
        try:
            for port in ports:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda port=port: _Mapping(self, ("127.0.0.1", port)),  # type: ignore[misc]
                    local_addr=(PUBLIC, port),
                )
                self.transports.append(transport)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


class _Mapping(asyncio.DatagramProtocol):
    def __init__(self, nat: NatForwarder, relay: tuple[str, int]) -> None:
        self.nat, self.relay = nat, relay
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.relay:
            if self.client is not None:
                self.nat.to_client += 1
                self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.nat.to_relay += 1
            self.transport.sendto(data, self.relay)


class BehindNat:
    """A signaling socket whose offers name the client as a client behind a NAT would: by an
    address the relay cannot reach (`PUBLIC`:9, nothing listens), so the relay finds the client
    only where its checks arrive from, through the NAT."""

    def __init__(self, socket: Socket) -> None:
        self._socket = socket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("type") == "offer":
            sdp = re.sub(
                r"(?m)^(a=candidate:\S+ \d+ udp \d+) \S+ \d+ ", rf"\1 {PUBLIC} 9 ", message["sdp"]
            )
            message = {**message, "sdp": sdp}
        await self._socket.send(message)


class TestPublicAddress:
    async def test_a_call_through_the_public_address_alone(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        low, high = free_range(6, "127.0.0.1", PUBLIC)
        server = live_server_factory(
            media_ports=f"{low}-{high}",
            media_public_ip=PUBLIC,
            media_peer_allow=f"{PUBLIC}/32",
        )
        nat = NatForwarder()
        await nat.start(range(low, high + 1))
        async with admitted(server, staff, db) as call:
            patient, clinician = call.clients(wrap=lambda s: cast(Socket, BehindNat(s)))
            try:
                await patient.connect(call.patient_ice)
                await clinician.connect(call.clinician_ice)
                for client in (patient, clinician):
                    offered = candidates(client.last_answer["sdp"])
                    assert offered
                    assert all(
                        host == PUBLIC and low <= port <= high and kind == "host"
                        for host, port, kind in offered
                    )
                    assert f"c=IN IP4 {PUBLIC}" in client.last_answer["sdp"]
                await clinician.wait_for_video(RED, within=20)
                await patient.wait_for_video(BLUE, within=20)
                await patient.wait_for_audio()
                assert abs((patient.received.pitch() or 0) - CLINICIAN_TONE) < 30
                # The relay's sockets are on its local address; media went through the public
                # one, both ways.
                assert {host for host, _ in udp_sockets(server.process.pid)} == {"127.0.0.1"}
                assert nat.to_relay > 100
                assert nat.to_client > 100
            finally:
                await patient.close_pc()
                await clinician.close_pc()
                nat.close()


class TestPortsExhausted:
    async def test_a_participant_gets_a_clear_error_and_the_metric_counts_it(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        low, high = free_range(2, "127.0.0.1")
        server = live_server_factory(media_ports=f"{low}-{high}")
        taken = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for sock, port in zip(taken, (low, high), strict=True):
            sock.bind(("127.0.0.1", port))
        try:
            async with admitted(server, staff, db) as call:
                pc = RTCPeerConnection(rtc_configuration(call.patient_ice))
                try:
                    pc.addTransceiver("audio")
                    pc.addTransceiver("video")
                    await pc.setLocalDescription(await pc.createOffer())
                    await call.patient_socket.send(
                        {"type": "offer", "sdp": pc.localDescription.sdp}
                    )
                    error = await call.patient_socket.expect("error", within=15)
                finally:
                    await pc.close()
                assert error["code"] == "media_ports_exhausted"
                assert "no free ports" in error["message"]
                assert await exhausted_count(call.http) == 1
                # A port comes free: the same participant's next offer is answered.
                taken.pop().close()
                patient, _ = call.clients()
                try:
                    await patient.connect(call.patient_ice)
                    offered = candidates(patient.last_answer["sdp"])
                    assert {port for _, port, _ in offered} == {high}
                finally:
                    await patient.close_pc()
        finally:
            for sock in taken:
                sock.close()


async def exhausted_count(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    match = re.search(r"^televisit_media_ports_exhausted_total (\S+)$", text, re.MULTILINE)
    assert match, "the metric is not exported"
    return float(match.group(1))


@pytest.fixture
def shipped_turn_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """coturn started with deploy/turnserver.conf; only what must be local is overridden.

    Overridden: the listening address and port, the relay's address and port range (loopback),
    the secret, the realm, the log and pid files, no TLS (no certificate here), the relay's
    allowed address (127.0.0.1, where the relay is) and, for that address to be reachable at
    all, loopback peers (the shipped `denied-peer-ip` still refuses the rest of 127.0.0.0/8).
    """
    binary = shutil.which("turnserver")
    if binary is None:
        unavailable("coturn (turnserver)", "not installed: apt-get install coturn")
    port = free_port()
    low, high = free_range(40, "127.0.0.1")
    secret = secrets.token_hex(16)
    log = (tmp_path / "turn.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (a fixed binary, our arguments)
        [
            str(binary),
            "-c",
            str(SHIPPED_TURN_CONFIG),
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            f"--min-port={low}",
            f"--max-port={high}",
            f"--static-auth-secret={secret}",
            "--realm=televisit.test",
            "--allowed-peer-ip=127.0.0.1",
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            f"--pidfile={tmp_path / 'turn.pid'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_coturn(port)
        yield f"turn:127.0.0.1:{port}", secret
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@contextlib.asynccontextmanager
async def turn_allocation(url: str, secret: str) -> AsyncIterator[TurnClientUdpProtocol]:
    """A TURN allocation of our own on that server, with Televisit's kind of credentials."""
    host, port = url.removeprefix("turn:").rsplit(":", 1)
    server = (host, int(port))
    username, password = turn_credentials(
        secret.encode(), expires=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    )
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            server, username=username, password=password, lifetime=600, channel_refresh_time=500
        ),
        remote_addr=server,
    )
    try:
        await protocol.connect()
        yield protocol
    finally:
        with contextlib.suppress(Exception):
            await protocol.delete()
        transport.close()


async def create_permission(protocol: TurnClientUdpProtocol, peer: str) -> int | None:
    """Ask the TURN server to let `peer` in (nothing is sent to it); None, or the error code."""
    request = stun.Message(
        message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST
    )
    request.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
    try:
        await protocol.request_with_retry(request)
    except stun.TransactionFailed as failed:
        code: Any = failed.response.attributes["ERROR-CODE"][0]
        return int(code)
    return None


class TestShippedCoturn:
    async def test_a_call_reaches_the_relay_through_it(
        self,
        live_server_factory: ServerFactory,
        shipped_turn_server: tuple[str, str],
        staff: Staff,
        db: Database,
    ) -> None:
        url, secret = shipped_turn_server
        server = live_server_factory(turn_urls=url, turn_secret=secret)
        async with admitted(server, staff, db) as call:
            patient, clinician = call.clients(relay_only=True)
            try:
                await patient.connect(call.patient_ice)
                await clinician.connect(call.clinician_ice)
                await clinician.wait_for_video(RED, within=20)
                await patient.wait_for_video(BLUE, within=20)
                for client in (patient, clinician):
                    assert client.pc is not None
                    offered = candidates(client.pc.localDescription.sdp)
                    assert offered
                    assert {kind for _, _, kind in offered} == {"relay"}
            finally:
                await patient.close_pc()
                await clinician.close_pc()

    @pytest.mark.parametrize(
        "peer",
        ["127.0.0.5", "10.1.2.3", "100.64.0.1", "169.254.169.254", "172.16.5.4", "192.168.1.1"],
    )
    async def test_it_refuses_to_relay_to_other_private_addresses(
        self, shipped_turn_server: tuple[str, str], peer: str
    ) -> None:
        url, secret = shipped_turn_server
        async with turn_allocation(url, secret) as allocation:
            assert await create_permission(allocation, "127.0.0.1") is None  # the relay's own
            assert await create_permission(allocation, peer) == 403
