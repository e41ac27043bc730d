"""Media across two processes: negotiation routed to the call's host, and a host that dies."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from app.db import Database
from tests.conftest import ServerFactory
from tests.factories import Staff
from tests.live import LiveServer
from tests.media.clients import MediaClient
from tests.signaling.helpers import Socket, console, grant, make_visit, open_socket

RED, BLUE = (220, 30, 30), (30, 30, 220)


@pytest.fixture
def pair(live_server_factory: ServerFactory, redis_url: str) -> tuple[LiveServer, LiveServer]:
    return live_server_factory(redis_url=redis_url), live_server_factory(redis_url=redis_url)


async def connect_retrying(
    client: MediaClient, socket: Socket, servers: list[dict[str, Any]]
) -> None:
    """Offer until a relay answers: right after a host dies, none may yet."""
    for _ in range(20):
        try:
            await client.connect(servers)
            return
        except (TimeoutError, AssertionError):
            errors = [m for m in socket.received if m.get("type") == "error"]
            assert all(e["code"] == "media_unavailable" for e in errors), errors
            socket.received.clear()
    raise AssertionError("no relay answered")


class TestMediaAcrossProcesses:
    async def test_negotiation_reaches_the_host_and_a_dead_host_is_replaced(
        self, pair: tuple[LiveServer, LiveServer], staff: Staff, db: Database
    ) -> None:
        a, b = pair
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        async with httpx.AsyncClient(base_url=b.url) as http:
            await grant(http, visit.token)
        async with open_socket(f"{b.ws_url}/ws/visits/{visit.token}") as patient_socket:
            await patient_socket.expect("waiting")
            patient = MediaClient(patient_socket, colour=RED, tone=440)
            try:
                async with console(a.ws_url, staff.clinician.token) as desk:
                    await desk.send({"type": "admit", "appointment_id": key})
                    admitted = await patient_socket.expect("admitted")
                    call = await desk.expect("call")
                    clinician = MediaClient(desk, colour=BLUE, tone=880, appointment_id=key)
                    # The relay runs on A (where the clinician admitted); the patient's offer
                    # goes from B to A through Redis, and the answer comes back.
                    await patient.connect(admitted["ice_servers"])
                    await clinician.connect(call["ice_servers"])
                    await clinician.wait_for_video(RED)
                    await patient.wait_for_video(BLUE)
                    a.process.send_signal(signal.SIGKILL)
                    a.process.wait()
                    await clinician.close_pc()
                # The clinician's console comes back on B; the call is handed over.
                async with console(b.ws_url, staff.clinician.token) as desk:
                    call = await desk.expect("call")
                    clinician = MediaClient(desk, colour=BLUE, tone=880, appointment_id=key)
                    try:
                        await connect_retrying(clinician, desk, call["ice_servers"])
                        again = await patient_socket.expect("admitted", within=10)
                        await patient.connect(again["ice_servers"])
                        await clinician.wait_for_video(RED)
                        await patient.wait_for_video(BLUE)
                    finally:
                        await clinician.close_pc()
            finally:
                await patient.close_pc()
