"""A guest's media through the real server: admitted into a running call, seen by the patient
and the clinician (and seeing them), after the patient was told who joined. aiortc peers on
loopback, no ICE servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCSessionDescription
from sqlalchemy import select

from app.audit import AuditEvent
from app.db import Database
from tests.conftest import ServerFactory
from tests.factories import Staff
from tests.live import LiveServer
from tests.media.clients import MediaClient, until
from tests.media.test_call import BLUE, RED, Call, admitted_call
from tests.signaling.helpers import Socket, add_guest, open_socket

GREEN = (30, 200, 30)
GUEST_TONE = 700.0


@asynccontextmanager
async def answering(client: MediaClient) -> AsyncIterator[None]:
    """Answer the relay's own offers (it renegotiates when someone joins the call), as a
    browser's page does."""

    async def answer() -> None:
        while True:
            offer = await client.socket.take("offer", within=3600)
            assert client.pc is not None
            await client.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await client.pc.setLocalDescription(await client.pc.createAnswer())
            sdp = client.pc.localDescription.sdp
            await client.socket.send(client._message(type="answer", sdp=sdp))

    task = asyncio.ensure_future(answer())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, AssertionError):
            await task


@asynccontextmanager
async def answered_call(
    server: LiveServer, staff: Staff, db: Database
) -> AsyncIterator[tuple[Call, httpx.AsyncClient]]:
    """A call, both sides answering the relay's own offers, the clinician seeing the patient;
    and an HTTP client of the server."""
    async with (
        httpx.AsyncClient(base_url=server.url) as http,
        admitted_call(server, staff, db, http) as call,
        answering(call.patient),
        answering(call.clinician),
    ):
        await call.clinician.wait_for_video(RED)
        yield call, http


class TestGuestMedia:
    async def test_an_admitted_guest_sees_and_is_seen_by_both(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with answered_call(live_server, staff, db) as (call, http):
            await call.patient.wait_for_video(BLUE)
            guest = await add_guest(http, call.visit, staff.clinician.headers)
            url = f"{live_server.ws_url}/ws/visits/{guest.token}"
            async with open_socket(url) as socket:
                await socket.expect("waiting")
                await call.desk.send(
                    {
                        "type": "admit",
                        "appointment_id": str(call.visit.appointment_id),
                        "participant_id": guest.id,
                    }
                )
                admitted = await socket.expect("admitted")
                client = MediaClient(socket, colour=GREEN, tone=GUEST_TONE)
                try:
                    await client.connect(admitted["ice_servers"])
                    # Then the relay's own offers (it adds the others' tracks), in order.
                    async with answering(client):
                        # The patient sees the guest; when the first frame of theirs shows,
                        # the patient had been told who joined (name and role).
                        told: list[list[dict[str, object]]] = []

                        def guest_seen() -> bool:
                            if not call.patient.sees(GREEN):
                                return False
                            told.append(
                                [
                                    m
                                    for m in call.patient_socket.log
                                    if m["type"] == "peer" and m.get("participant") == guest.key
                                ]
                            )
                            return True

                        await until(guest_seen, 30)
                        assert told[0], "the guest was heard before the patient was told"
                        assert told[0][0]["name"] == guest.name
                        assert told[0][0]["role"] == "interpreter"
                        await call.clinician.wait_for_video(GREEN, within=30)
                        # The guest sees both (each camera's colour reaches them).
                        await client.wait_for_video(RED, within=30)
                        await client.wait_for_video(BLUE, within=30)
                        await until(lambda: client.received.audio_frames > 50, 15)
                finally:
                    await client.close_pc()


@asynccontextmanager
async def caregiver_admitted(
    server: LiveServer, call: Call, http: httpx.AsyncClient
) -> AsyncIterator[tuple[Socket, dict[str, Any]]]:
    """A caregiver who consented to the video visit, not to recording, admitted into the call
    (their media not connected): their socket and their `admitted` message."""
    guest = await add_guest(
        http, call.visit, call.visit.clinician.headers, role="caregiver", name="Cara"
    )
    async with open_socket(f"{server.ws_url}/ws/visits/{guest.token}") as socket:
        await socket.expect("waiting")
        key = str(call.visit.appointment_id)
        await call.desk.send({"type": "admit", "appointment_id": key, "participant_id": guest.id})
        yield socket, await socket.expect("admitted")


class TestRecordingWithGuests:
    async def test_a_guest_without_the_recording_consent_stops_it_and_blocks_a_new_one(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database, tmp_path: Path
    ) -> None:
        server = live_server_factory(recordings_dir=str(tmp_path / "recordings"))
        async with answered_call(server, staff, db) as (call, http):
            key = str(call.visit.appointment_id)
            start = {"type": "record", "appointment_id": key, "action": "start"}
            await call.desk.send(start)
            assert (await call.patient_socket.expect("recording"))["state"] == "on"
            async with caregiver_admitted(server, call, http) as (socket, admitted):
                client = MediaClient(socket, colour=GREEN, tone=GUEST_TONE)
                try:
                    await client.connect(admitted["ice_servers"])
                    async with answering(client):
                        # Everyone is told the recording stopped.
                        off = await call.patient_socket.expect("recording", within=30)
                        assert off["state"] == "off"
                        assert (await call.desk.expect("recording", state="off"))["state"]
                        # And it cannot start again while they are in the call.
                        await call.desk.send(start)
                        refused = await call.desk.expect("error")
                        assert refused["code"] == "recording_consent_required"
                finally:
                    await client.close_pc()

    async def test_a_guest_admitted_without_it_refuses_a_start_before_their_media_arrives(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database, tmp_path: Path
    ) -> None:
        """Admitted, their media not yet at the relay (which counts only those with media in
        its room): signaling's look counts everyone in the call and refuses at once, as the
        clinician's refusal, rather than the relay starting a recording their media would stop."""
        server = live_server_factory(recordings_dir=str(tmp_path / "recordings"))
        async with (
            answered_call(server, staff, db) as (call, http),
            caregiver_admitted(server, call, http),
        ):
            key = str(call.visit.appointment_id)
            await call.desk.send({"type": "record", "appointment_id": key, "action": "start"})
            refused = await call.desk.expect("error")
            assert refused["code"] == "recording_consent_required"
        async with db.session(write=False) as session:
            audited = await session.execute(
                select(AuditEvent.actor_role, AuditEvent.outcome).where(
                    AuditEvent.resource_id == key, AuditEvent.action == "recording.start"
                )
            )
            assert list(audited.all()) == [("clinician", "recording_consent_required")]
