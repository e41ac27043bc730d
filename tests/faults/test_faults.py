"""Calls and queues through faults: Redis restarted, a process stalled, a process killed.

Two `televisit serve` processes share PostgreSQL and a Redis of the test's own; aiortc peers on
127.0.0.1 send a coloured picture and a tone through the relay. Every wait is bounded; what
each recovery took is recorded as a figure (TELEVISIT_FAULT_FIGURES), never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.db import Database
from scheduling.models import Appointment
from tests.factories import Staff
from tests.faults.conftest import GRACE_SECONDS, Figures, RedisServer
from tests.live import LiveServer
from tests.media.clients import MediaClient
from tests.signaling.helpers import Socket, Visit, console, grant, items, make_visit, open_socket

RED, BLUE = (220, 30, 30), (30, 30, 220)
# How long a stalled process stays stopped once the others took it for dead.
STALLED_FURTHER = 3.0


async def row(db: Database, appointment_id: uuid.UUID) -> Appointment:
    async with db.session(write=False) as session:
        found = await session.get(Appointment, appointment_id)
    assert found is not None
    return found


async def until_row(
    db: Database, appointment_id: uuid.UUID, test: Callable[[Appointment], bool], within: float
) -> Appointment:
    async with asyncio.timeout(within):
        while True:
            found = await row(db, appointment_id)
            if test(found):
                return found
            await asyncio.sleep(0.1)


async def consented(db: Database, staff: Staff, server: LiveServer) -> Visit:
    visit = await make_visit(db, staff.clinician, by=staff.scheduler)
    async with httpx.AsyncClient(base_url=server.url) as http:
        await grant(http, visit.token)
    return visit


async def admit(desk: Socket, key: str, within: float) -> dict[str, Any]:
    """Admit until the console holds the call (refusals while the fault lasts are retried)."""
    async with asyncio.timeout(within):
        while True:
            await desk.send({"type": "admit", "appointment_id": key})
            with contextlib.suppress(TimeoutError):
                return await desk.expect("call", within=2)
            await asyncio.sleep(0.2)


async def negotiate(
    client: MediaClient, socket: Socket, servers: list[dict[str, Any]], within: float = 30
) -> None:
    """Offer until the call's relay answers: right after a host dies, none may yet."""
    async with asyncio.timeout(within):
        while True:
            attempt = asyncio.ensure_future(client.connect(servers))
            refused = asyncio.ensure_future(socket.expect("error", within=within))
            done, _ = await asyncio.wait({attempt, refused}, return_when=asyncio.FIRST_COMPLETED)
            if attempt in done:
                refused.cancel()
                attempt.result()
                return
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            assert refused.result()["code"] == "media_unavailable", refused.result()
            await asyncio.sleep(0.3)


@dataclass(eq=False)
class Party:
    """One participant's page as far as media goes: its peer, its socket, the colour it should
    see, and the relay's request to negotiate again that it follows (`admitted` or `call`)."""

    client: MediaClient
    socket: Socket
    colour: tuple[int, int, int]
    again: str
    negotiations: int = 0

    def asked(self) -> list[dict[str, Any]]:
        """The requests to negotiate again that arrived, taken (the other messages stay)."""
        asked = [m for m in self.socket.received if m.get("type") == self.again]
        self.socket.received[:] = [m for m in self.socket.received if m.get("type") != self.again]
        return asked

    def seen(self) -> str:
        pc = self.client.pc
        told = [  # whose video the relay paused or resumed, and why
            (m.get("role"), m.get("state"), m.get("reason"))
            for m in self.socket.log
            if m.get("type") == "video"
        ]
        return (
            f"{self.again}: {self.client.received.video_frames} frames, last colour "
            f"{self.client.received.last_colour}, connection {pc and pc.connectionState}, "
            f"{self.negotiations} negotiations, told {told}"
        )


async def media_flows(*parties: Party, within: float = 30) -> int:
    """Until every party sees fresh frames of its colour. Each follows the relay's requests to
    negotiate again on its own, as each page does: the relay may have dropped any of the
    connections, and one party's video can need the other's new connection. How many
    negotiations it took."""
    starts = {party: party.client.received.video_frames for party in parties}
    stop = asyncio.Event()

    async def follow(party: Party) -> None:
        while not stop.is_set():
            asked = party.asked()
            if asked:
                await negotiate(party.client, party.socket, asked[-1]["ice_servers"])
                party.negotiations += 1
                starts[party] = 0
            await asyncio.sleep(0.1)

    def fresh(party: Party) -> bool:
        received = party.client.received
        return received.video_frames > starts[party] + 10 and party.client.sees(party.colour)

    before = sum(party.negotiations for party in parties)
    followers = [asyncio.ensure_future(follow(party)) for party in parties]
    try:
        async with asyncio.timeout(within) as waited:
            while not all(fresh(party) for party in parties):
                for follower in followers:
                    if follower.done():
                        follower.result()  # a failed negotiation, raised here
                await asyncio.sleep(0.1)
    except BaseException as exc:
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        if isinstance(exc, TimeoutError) and waited.expired():
            seen = "; ".join(party.seen() for party in parties)
            raise AssertionError(f"no fresh video in {within} s: {seen}") from None
        raise
    # A negotiation under way is finished, as a page would (bounded by its own wait).
    stop.set()
    await asyncio.gather(*followers)
    return sum(party.negotiations for party in parties) - before


class Gaps:
    """The longest stretch without a new video frame, sampled while a fault plays out."""

    def __init__(self, client: MediaClient) -> None:
        self.client = client
        self.longest = 0.0
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        frames, since = self.client.received.video_frames, time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if self.client.received.video_frames != frames:
                frames, since = self.client.received.video_frames, now
            self.longest = max(self.longest, now - since)

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.longest


def peers(patient_socket: Socket, desk: Socket, key: str) -> tuple[MediaClient, MediaClient]:
    """The patient's peer (red, 440 Hz) and the console's (blue, 880 Hz). Their receivers send
    no REMB: both share this process's event loop, whose lag on a loaded machine reads to
    aiortc's delay-based estimate as a congested link (a few kbit/s on loopback), and the relay
    would pause video to them and try again only after a growing back-off. Bandwidth has tests
    of its own (tests/media/test_bandwidth.py)."""
    patient = MediaClient(patient_socket, colour=RED, tone=440, estimates=False)
    clinician = MediaClient(desk, colour=BLUE, tone=880, appointment_id=key, estimates=False)
    return patient, clinician


@contextlib.asynccontextmanager
async def in_call(
    patient_server: LiveServer, console_server: LiveServer, visit: Visit, staff: Staff
) -> AsyncIterator[tuple[Socket, Socket, MediaClient, MediaClient]]:
    """The patient's socket on one process, the console on another (which hosts the relay),
    both sending and seeing video."""
    key = str(visit.appointment_id)
    async with (
        open_socket(f"{patient_server.ws_url}/ws/visits/{visit.token}") as patient_socket,
        console(console_server.ws_url, staff.clinician.token) as desk,
    ):
        await patient_socket.expect("waiting")
        call = await admit(desk, key, within=10)
        admitted = await patient_socket.expect("admitted")
        patient, clinician = peers(patient_socket, desk, key)
        try:
            await patient.connect(admitted["ice_servers"])
            await clinician.connect(call["ice_servers"])
            await clinician.wait_for_video(RED)
            await patient.wait_for_video(BLUE)
            yield patient_socket, desk, patient, clinician
        finally:
            await patient.close_pc()
            await clinician.close_pc()


async def message_gets_through(desk: Socket, patient: Socket, key: str, within: float) -> None:
    """Until a message from the console reaches the patient (lost ones are sent again)."""
    async with asyncio.timeout(within):
        n = 0
        while True:
            n += 1
            await desk.send({"type": "message", "appointment_id": key, "data": {"n": n}})
            with contextlib.suppress(TimeoutError):
                await patient.expect("message", within=1)
                return


async def end(desk: Socket, patient: Socket, key: str) -> None:
    await desk.send({"type": "end", "appointment_id": key})
    assert (await patient.expect("ended", within=10))["reason"] == "ended"


class TestRedisRestart:
    async def test_a_call_goes_on_through_a_redis_restart(
        self,
        pair: list[LiveServer],
        redis_server: RedisServer,
        staff: Staff,
        db: Database,
        figures: Figures,
    ) -> None:
        a, b = pair
        visit = await consented(db, staff, a)
        key = str(visit.appointment_id)
        async with in_call(a, b, visit, staff) as (patient_socket, desk, patient, clinician):
            gaps = Gaps(patient)
            redis_server.kill()
            down = time.monotonic()
            # Media goes straight between the peers and the relay: it flows with Redis gone.
            seen = (patient.received.video_frames, clinician.received.video_frames)
            await patient.wait_for_video(BLUE)
            await clinician.wait_for_video(RED)
            async with asyncio.timeout(10):
                while (  # noqa: ASYNC110 (frames arrive in the peers' own tasks)
                    patient.received.video_frames < seen[0] + 60
                    or clinician.received.video_frames < seen[1] + 60
                ):
                    await asyncio.sleep(0.1)
            redis_server.start()
            up = time.monotonic()
            await message_gets_through(desk, patient_socket, key, within=30)
            figures["redis_down_s"] = up - down
            figures["signaling_back_after_redis_up_s"] = time.monotonic() - up
            figures["longest_video_gap_s"] = await gaps.stop()
            assert not patient_socket.closed.is_set()
            assert not desk.closed.is_set()
            current = await row(db, visit.appointment_id)
            assert (current.status, current.patient_presence) == ("in_call", "connected")
            await end(desk, patient_socket, key)

    async def test_waiting_patients_are_admitted_after_a_redis_restart(
        self,
        pair: list[LiveServer],
        redis_server: RedisServer,
        staff: Staff,
        db: Database,
        figures: Figures,
    ) -> None:
        a, b = pair
        first = await consented(db, staff, a)
        second = await consented(db, staff, a)
        async with (
            console(b.ws_url, staff.clinician.token) as desk,
            open_socket(f"{a.ws_url}/ws/visits/{first.token}") as waiting,
        ):
            await waiting.expect("waiting")
            redis_server.kill()
            # An admission that cannot reach the patient is undone, not left as a call.
            await desk.send({"type": "admit", "appointment_id": str(first.appointment_id)})
            assert (await desk.expect("error"))["code"] == "admit_failed"
            assert (await row(db, first.appointment_id)).status == "waiting"
            # A patient arrives while Redis is away.
            async with open_socket(f"{a.ws_url}/ws/visits/{second.token}") as newcomer:
                await until_row(db, second.appointment_id, lambda r: r.status == "waiting", 10)
                redis_server.start()
                up = time.monotonic()
                # The console and the newcomer get the queue again once Redis is back.
                queue = await desk.expect("queue", within=30)
                while str(second.appointment_id) not in items(queue):
                    queue = await desk.expect("queue", within=30)
                assert (await newcomer.expect("waiting", within=30))["position"] == 2
                figures["queue_back_after_redis_up_s"] = time.monotonic() - up
                await admit(desk, str(first.appointment_id), within=30)
                figures["first_admitted_after_redis_up_s"] = time.monotonic() - up
                assert "ice_servers" in await waiting.expect("admitted")
                await admit(desk, str(second.appointment_id), within=30)
                assert "ice_servers" in await newcomer.expect("admitted")


class TestStalledProcess:
    async def test_a_process_stalled_past_its_liveness_keeps_its_calls(
        self,
        pair: list[LiveServer],
        staff: Staff,
        db: Database,
        figures: Figures,
    ) -> None:
        a, _b = pair
        visit = await consented(db, staff, a)
        key = str(visit.appointment_id)
        # Everything on A (patient, console, relay); B sees A stop beating.
        async with in_call(a, a, visit, staff) as (patient_socket, desk, patient, clinician):
            os.kill(a.process.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                marked = await until_row(
                    db,
                    visit.appointment_id,
                    lambda r: r.patient_presence == "reconnecting",
                    within=20,
                )
                figures["taken_for_dead_after_s"] = time.monotonic() - stopped
                # Longer than the relay's stall detection too (its peers hear nothing).
                await asyncio.sleep(STALLED_FURTHER)
            finally:
                os.kill(a.process.pid, signal.SIGCONT)
            resumed = time.monotonic()
            figures["stalled_s"] = resumed - stopped
            await until_row(
                db, visit.appointment_id, lambda r: r.patient_presence == "connected", within=15
            )
            figures["taken_back_after_resume_s"] = time.monotonic() - resumed
            # The relay may have dropped either connection, or both (media.health's stall
            # check, as it reads what queued up while it was stopped): both pages follow.
            parties = (
                Party(patient, patient_socket, BLUE, "admitted"),
                Party(clinician, desk, RED, "call"),
            )
            renegotiated = await media_flows(*parties)
            figures["media_back_after_resume_s"] = time.monotonic() - resumed
            figures["renegotiations"] = renegotiated
            # Past the end of the grace period B gave: the call stands, and its media flows.
            assert marked.presence_deadline is not None
            wait = (marked.presence_deadline.timestamp() - time.time()) + 3
            await asyncio.sleep(max(0.0, wait))
            current = await row(db, visit.appointment_id)
            assert (current.status, current.patient_presence) == ("in_call", "connected")
            assert current.call_host == marked.call_host
            await media_flows(*parties)
            await end(desk, patient_socket, key)


class TestKilledHost:
    async def test_a_call_comes_back_on_the_survivor_within_the_grace_period(
        self,
        pair: list[LiveServer],
        staff: Staff,
        db: Database,
        figures: Figures,
    ) -> None:
        a, b = pair
        visit = await consented(db, staff, a)
        key = str(visit.appointment_id)
        async with in_call(a, a, visit, staff) as (patient_socket, desk, patient, clinician):
            old_host = (await row(db, visit.appointment_id)).call_host
            a.process.send_signal(signal.SIGKILL)
            a.process.wait()
            killed = time.monotonic()
            await patient.close_pc()
            await clinician.close_pc()
        # Both pages reconnect, now to B, and negotiate with whichever relay answers.
        async with (
            open_socket(f"{b.ws_url}/ws/visits/{visit.token}") as patient_socket,
            console(b.ws_url, staff.clinician.token) as desk,
        ):
            admitted = await patient_socket.expect("admitted")
            call = await desk.expect("call")
            patient, clinician = peers(patient_socket, desk, key)
            try:
                await negotiate(patient, patient_socket, admitted["ice_servers"])
                await negotiate(clinician, desk, call["ice_servers"])
                await media_flows(
                    Party(patient, patient_socket, BLUE, "admitted"),
                    Party(clinician, desk, RED, "call"),
                )
                back = time.monotonic() - killed
                figures["media_back_after_kill_s"] = back
                figures["grace_s"] = GRACE_SECONDS
                current = await row(db, visit.appointment_id)
                assert current.status == "in_call"
                assert current.call_host not in (None, old_host)
                await end(desk, patient_socket, key)
            finally:
                await patient.close_pc()
                await clinician.close_pc()
        assert (await row(db, visit.appointment_id)).end_reason == "ended"


@pytest.fixture(autouse=True)
def _resume_stopped(pair: list[LiveServer]) -> Any:
    """A test that fails while a process is stopped must not leave it stopped."""
    yield
    for server in pair:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
