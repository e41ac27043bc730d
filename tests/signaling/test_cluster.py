"""Two server processes sharing the database and Redis: one queue, one call, and handover."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import httpx
import pytest

from app.db import Database
from tests.conftest import ServerFactory
from tests.factories import Staff
from tests.live import LiveServer
from tests.signaling.helpers import consented_visit, console, grant, items, make_visit, open_socket


@pytest.fixture
def pair(live_server_factory: ServerFactory, redis_url: str) -> tuple[LiveServer, LiveServer]:
    return live_server_factory(redis_url=redis_url), live_server_factory(redis_url=redis_url)


@pytest.fixture
async def http(pair: tuple[LiveServer, LiveServer]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pair[1].url) as client:
        yield client


class TestTwoProcesses:
    async def test_patient_on_one_process_clinician_on_the_other(
        self,
        pair: tuple[LiveServer, LiveServer],
        staff: Staff,
        db: Database,
        http: httpx.AsyncClient,
    ) -> None:
        a, b = pair
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        async with console(b.ws_url, staff.clinician.token) as desk:
            await desk.expect("queue")
            async with open_socket(f"{a.ws_url}/ws/visits/{visit.token}") as patient:
                assert (await patient.expect("waiting"))["position"] == 1
                queue = await desk.expect("queue", within=2)
                assert items(queue)[key]["status"] == "waiting"

                await desk.send({"type": "admit", "appointment_id": key})
                assert "ice_servers" in await patient.expect("admitted")
                await desk.expect("call")
                await patient.expect("peer", event="joined")

                await patient.send({"type": "ping"})
                await patient.expect("pong")
                await desk.send({"type": "end", "appointment_id": key})
                assert (await patient.expect("ended"))["reason"] == "ended"
                assert (await desk.expect("ended"))["appointment_id"] == key

    async def test_withdrawal_on_one_process_ends_the_call_held_by_the_other(
        self,
        pair: tuple[LiveServer, LiveServer],
        staff: Staff,
        db: Database,
    ) -> None:
        a, b = pair
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        async with httpx.AsyncClient(base_url=a.url) as on_a:
            await grant(on_a, visit.token)
            async with (
                console(b.ws_url, staff.clinician.token) as desk,
                open_socket(f"{b.ws_url}/ws/visits/{visit.token}") as patient,
            ):
                await patient.expect("waiting")
                await desk.send({"type": "admit", "appointment_id": key})
                await patient.expect("admitted")
                # The patient's page talks to process A over HTTP; their socket is on B.
                await grant(on_a, visit.token, decision="withdrawn")
                assert (await patient.expect("ended"))["reason"] == "consent_withdrawn"
                assert (await desk.expect("ended"))["reason"] == "consent_withdrawn"

    async def test_a_process_that_dies_hands_its_patients_over(
        self,
        pair: tuple[LiveServer, LiveServer],
        staff: Staff,
        db: Database,
        http: httpx.AsyncClient,
    ) -> None:
        a, b = pair
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        async with console(b.ws_url, staff.clinician.token) as desk:
            async with open_socket(f"{a.ws_url}/ws/visits/{visit.token}") as patient:
                await patient.expect("waiting")
                queue = await desk.expect("queue")
                while items(queue).get(key, {}).get("status") != "waiting":
                    queue = await desk.expect("queue")
                a.process.send_signal(signal.SIGKILL)
                a.process.wait()
                await patient.expect_close(within=5)
            # B notices A is gone (its heartbeat goes stale) and shows the patient reconnecting.
            while items(queue).get(key, {}).get("status") != "reconnecting":
                queue = await desk.expect("queue", within=15)
            # The patient's page reconnects, now to B, and the visit goes on.
            async with open_socket(f"{b.ws_url}/ws/visits/{visit.token}") as back:
                assert (await back.expect("waiting"))["position"] == 1
                await desk.send({"type": "admit", "appointment_id": key})
                await back.expect("admitted")
