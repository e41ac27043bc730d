"""Real calls through the real server: aiortc peers as patient and clinician, media on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from app.db import Database
from tests.factories import Staff
from tests.live import LiveServer
from tests.media.clients import MediaClient
from tests.signaling.helpers import Socket, Visit, console, grant, make_visit, open_socket

RED, BLUE = (220, 30, 30), (30, 30, 220)
PATIENT_TONE, CLINICIAN_TONE = 440.0, 1000.0


@dataclass
class Call:
    visit: Visit
    patient_socket: Socket
    desk: Socket
    patient: MediaClient
    clinician: MediaClient


@asynccontextmanager
async def admitted_call(
    server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
) -> AsyncIterator[Call]:
    visit = await make_visit(db, staff.clinician, by=staff.scheduler)
    await grant(http, visit.token, scopes=("video_visit", "recording"))
    async with (
        console(server.ws_url, staff.clinician.token) as desk,
        open_socket(f"{server.ws_url}/ws/visits/{visit.token}") as patient_socket,
    ):
        await patient_socket.expect("waiting")
        await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
        admitted = await patient_socket.expect("admitted")
        call = await desk.expect("call")
        patient = MediaClient(patient_socket, colour=RED, tone=PATIENT_TONE)
        clinician = MediaClient(
            desk, colour=BLUE, tone=CLINICIAN_TONE, appointment_id=str(visit.appointment_id)
        )
        try:
            await patient.connect(admitted["ice_servers"])
            await clinician.connect(call["ice_servers"])
            yield Call(visit, patient_socket, desk, patient, clinician)
        finally:
            await patient.close_pc()
            await clinician.close_pc()


class TestCall:
    async def test_each_side_sees_and_hears_the_other(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.patient.wait_for_video(BLUE)
            await call.clinician.wait_for_video(RED)
            await call.patient.wait_for_audio()
            await call.clinician.wait_for_audio()
            assert abs((call.patient.received.pitch() or 0) - CLINICIAN_TONE) < 30
            assert abs((call.clinician.received.pitch() or 0) - PATIENT_TONE) < 30
