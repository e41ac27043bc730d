"""Real calls through the real server: aiortc peers as patient and clinician, media on loopback."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from app.db import Database
from app.sealed import HEADER_BYTES, MAGIC, SEGMENT, SealError, key_for, open_sealed
from tests.conftest import TEST_SECRET, ServerFactory
from tests.factories import Staff
from tests.live import LiveServer
from tests.media.clients import ColourCamera, MediaClient, rtc_configuration, until
from tests.signaling.helpers import (
    Socket,
    Visit,
    console,
    grant,
    items,
    make_visit,
    open_socket,
)


def queue_item(queue: dict[str, Any], key: str) -> dict[str, Any]:
    item: dict[str, Any] = items(queue).get(key, {})
    return item


RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)
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
            assert call.clinician.last_answer["appointment_id"] == str(call.visit.appointment_id)
            assert "appointment_id" not in call.patient.last_answer
            await call.patient.wait_for_audio()
            await call.clinician.wait_for_audio()
            assert abs((call.patient.received.pitch() or 0) - CLINICIAN_TONE) < 30
            assert abs((call.clinician.received.pitch() or 0) - PATIENT_TONE) < 30


class TestQualityAndConsent:
    async def test_the_clinician_gets_call_quality_every_few_seconds(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            stats = await call.desk.expect("stats", within=10)
            assert stats["appointment_id"] == str(call.visit.appointment_id)
            assert stats["mode"] == "forwarding"
            roles = {row["role"]: row for row in stats["participants"]}
            assert set(roles) == {"patient", "clinician"}
            later = await call.desk.expect("stats", within=10)
            patient = {row["role"]: row for row in later["participants"]}["patient"]
            assert patient["kbps"] is not None
            assert patient["kbps"] > 0
            assert set(patient) >= {"role", "rtt_ms", "loss", "jitter_ms", "kbps"}

    async def test_the_call_summary_is_kept_with_the_appointment(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            await call.desk.expect("stats", within=10)
            key = str(call.visit.appointment_id)
            await call.desk.send({"type": "end", "appointment_id": key})
            await call.desk.expect("ended")

            async def summary() -> dict[str, Any] | None:
                response = await http.get(
                    f"/api/v1/appointments/{key}", headers=staff.scheduler.headers
                )
                found: dict[str, Any] | None = response.json()["call_summary"]
                return found

            for _ in range(50):
                kept = await summary()
                if kept is not None:
                    break
                await asyncio.sleep(0.1)
            assert kept is not None
            assert kept["mode"] == "forwarding"
            assert kept["duration_seconds"] > 0
            assert set(kept["participants"]) == {"patient", "clinician"}
            assert kept["participants"]["patient"]["samples"] >= 1

    async def test_withdrawal_stops_the_patients_media_and_ends_the_call(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            await grant(http, call.visit.token, decision="withdrawn")
            await call.desk.expect("ended")
            await asyncio.sleep(0.5)
            frames = call.clinician.received.video_frames
            await asyncio.sleep(1.5)
            assert call.clinician.received.video_frames == frames
            summary = await http.get(
                f"/api/v1/appointments/{call.visit.appointment_id}", headers=staff.admin.headers
            )
            assert summary.json()["status"] == "completed"


class TestSoundOnlyThroughTheServer:
    async def test_either_side_asks_for_sound_only_and_both_are_told(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            appointment = str(call.visit.appointment_id)
            await call.patient_socket.send({"type": "video", "enabled": False})
            told = {
                "appointment_id": appointment,
                "role": "patient",
                "state": "paused",
                "reason": "requested",
            }
            await call.desk.expect("video", within=10, **told)
            await call.patient_socket.expect("video", within=10, **told)
            await asyncio.sleep(1.0)  # what was on its way arrives
            frames = call.clinician.received.video_frames
            await asyncio.sleep(1.5)
            assert call.clinician.received.video_frames == frames
            await call.patient_socket.send({"type": "video", "enabled": True})
            told.update(state="resumed")
            await call.desk.expect("video", within=10, **told)
            await call.clinician.wait_for_video(RED)
            frames = call.clinician.received.video_frames
            await until(lambda: call.clinician.received.video_frames > frames + 10, 10)
            await call.desk.send({"type": "video", "appointment_id": appointment, "enabled": False})
            await call.patient_socket.expect("video", within=10, role="clinician", state="paused")
            await call.patient_socket.send({"type": "video", "enabled": "sometimes"})
            await call.patient_socket.expect("error", within=5)


class TestReconnectThroughTheServer:
    async def test_the_patient_comes_back_with_a_new_connection(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            kept = call.clinician.pc
            await call.patient.close_pc()
            async with open_socket(
                f"{live_server.ws_url}/ws/visits/{call.visit.token}"
            ) as patient_socket:
                admitted = await patient_socket.expect("admitted")
                again = MediaClient(patient_socket, colour=GREEN, tone=PATIENT_TONE)
                try:
                    await again.connect(admitted["ice_servers"])
                    await call.clinician.wait_for_video(GREEN)  # from a fresh keyframe
                    await again.wait_for_video(BLUE)
                    assert call.clinician.pc is kept
                finally:
                    await again.close_pc()


class TestRecordingThroughTheServer:
    async def test_record_list_and_download(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database, tmp_path: Path
    ) -> None:
        folder = tmp_path / "recordings"
        server = live_server_factory(recordings_dir=str(folder))
        async with (
            httpx.AsyncClient(base_url=server.url) as http,
            admitted_call(server, staff, db, http) as call,
        ):
            await call.clinician.wait_for_video(RED)
            key = str(call.visit.appointment_id)
            await call.desk.send({"type": "record", "appointment_id": key, "action": "start"})
            assert (await call.patient_socket.expect("recording"))["state"] == "on"
            assert (await call.desk.expect("recording"))["state"] == "on"
            await asyncio.sleep(2.5)
            # Mid-call, as a crash would leave it: sealed segments, never WebM in clear, and
            # read back it is refused as cut short (no segment is marked last yet).
            [writing] = list(folder.iterdir())
            await until(lambda: writing.stat().st_size > HEADER_BYTES + SEGMENT, within=30)
            crashed = tmp_path / "as-left-by-a-crash"
            crashed.write_bytes(writing.read_bytes())
            assert crashed.read_bytes().startswith(MAGIC)
            with pytest.raises(SealError):
                b"".join(open_sealed(crashed, key_for(None, TEST_SECRET)))
            await call.desk.send({"type": "record", "appointment_id": key, "action": "stop"})
            assert (await call.patient_socket.expect("recording"))["state"] == "off"
            url = f"/api/v1/appointments/{key}/recordings"
            listed = await http.get(url, headers=staff.clinician.headers)
            assert listed.status_code == 200
            [item] = listed.json()["items"]
            assert set(item) >= {"id", "started_at", "ended_at", "bytes"}
            assert item["bytes"] > 10_000
            assert (await http.get(url, headers=staff.scheduler.headers)).status_code == 403
            other = await http.get(url, headers=staff.other_clinician.headers)
            assert other.status_code == 404
            # On disk: sealed while written, never a WebM in clear, readable by the owner only.
            [on_disk] = list(folder.iterdir())
            assert on_disk.name.endswith(".webm.sealed")
            assert stat.S_IMODE(on_disk.stat().st_mode) == 0o600
            raw = on_disk.read_bytes()
            assert not raw.startswith(b"\x1a\x45\xdf\xa3")  # EBML: what a WebM begins with
            assert b"webm" not in raw
            for path in (
                f"{url}/{item['id']}/file",
                f"/api/v1/recordings/{item['id']}/file",
            ):
                download = await http.get(path, headers=staff.admin.headers)
                assert download.status_code == 200
                assert download.headers["cache-control"] == "no-store"
                assert len(download.content) == item["bytes"]
                saved = tmp_path / "download.webm"
                saved.write_bytes(download.content)
                with av.open(str(saved)) as container:
                    assert sum(1 for _ in container.decode(video=0)) > 10

    async def test_recording_needs_the_patients_recording_consent(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            await grant(http, visit.token)  # video only
            async with (
                console(live_server.ws_url, staff.clinician.token) as desk,
                open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
            ):
                await patient.expect("waiting")
                key = str(visit.appointment_id)
                await desk.send({"type": "admit", "appointment_id": key})
                await desk.expect("call")
                await desk.send({"type": "record", "appointment_id": key, "action": "start"})
                assert (await desk.expect("error"))["code"] == "recording_consent_required"


class TestTurn:
    async def test_a_call_through_coturn_with_relay_candidates_only(
        self,
        live_server_factory: ServerFactory,
        turn_server: tuple[str, str],
        staff: Staff,
        db: Database,
    ) -> None:
        url, secret = turn_server
        server = live_server_factory(turn_urls=url, turn_secret=secret)
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        async with httpx.AsyncClient(base_url=server.url) as http:
            await grant(http, visit.token)
            async with (
                console(server.ws_url, staff.clinician.token) as desk,
                open_socket(f"{server.ws_url}/ws/visits/{visit.token}") as patient_socket,
            ):
                await patient_socket.expect("waiting")
                await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
                admitted = await patient_socket.expect("admitted")
                [turn] = admitted["ice_servers"]
                assert turn["urls"] == [url]
                expiry = int(turn["username"].split(":")[0])
                assert expiry > time.time()
                call = await desk.expect("call")
                patient = MediaClient(
                    patient_socket, colour=RED, tone=PATIENT_TONE, relay_only=True
                )
                clinician = MediaClient(
                    desk, colour=BLUE, tone=CLINICIAN_TONE, appointment_id=str(visit.appointment_id)
                )
                try:
                    await patient.connect(admitted["ice_servers"])
                    await clinician.connect(call["ice_servers"])
                    await clinician.wait_for_video(RED, within=20)
                    await patient.wait_for_video(BLUE, within=20)
                    assert patient.pc is not None
                    gatherer = patient.pc.getTransceivers()[
                        0
                    ].sender.transport.transport.iceGatherer
                    kinds = {c.type for c in gatherer.getLocalCandidates()}
                    assert kinds == {"relay"}  # every packet of the patient went through coturn
                finally:
                    await patient.close_pc()
                    await clinician.close_pc()


class TestDeviceCheck:
    async def test_the_connection_test_connects_and_the_verdict_reaches_the_queue(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            shown = (await http.get(f"/api/v1/visits/{visit.token}")).json()
            assert shown["ice_servers"] == []
            probe = RTCPeerConnection(rtc_configuration(shown["ice_servers"]))
            probe.createDataChannel("check")
            await probe.setLocalDescription(await probe.createOffer())
            answered = await http.post(
                f"/api/v1/visits/{visit.token}/connection-test",
                json={"sdp": probe.localDescription.sdp},
            )
            assert answered.status_code == 200, answered.text
            await probe.setRemoteDescription(
                RTCSessionDescription(sdp=answered.json()["sdp"], type="answer")
            )
            await until(lambda: probe.connectionState == "connected", 15)
            await probe.close()
            bad = await http.post(
                f"/api/v1/visits/{visit.token}/connection-test", json={"sdp": "v=0 nonsense"}
            )
            assert bad.status_code == 422
            await grant(http, visit.token)
        async with (
            console(live_server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            await patient.send({"type": "device_check", "verdict": "direct"})
            queue = await desk.expect("queue")
            key = str(visit.appointment_id)
            while queue_item(queue, key).get("connection") != "direct":
                queue = await desk.expect("queue")


class TestScreenShareThroughTheServer:
    async def test_the_clinician_shares_a_screen_and_the_patient_is_told_which_track_it_is(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.url) as http,
            admitted_call(live_server, staff, db, http) as call,
        ):
            await call.patient.wait_for_video(BLUE)
            appointment = str(call.visit.appointment_id)
            desk, pc = call.desk, call.clinician.pc
            assert pc is not None
            assert call.patient.pc is not None
            # The console adds its screen as a second video and offers on the same connection.
            pc.addTrack(ColourCamera(GREEN))
            await pc.setLocalDescription(await pc.createOffer())
            sdp = pc.localDescription.sdp
            await desk.send({"type": "offer", "appointment_id": appointment, "sdp": sdp})
            answer = await desk.expect("answer", within=15)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            await desk.send({"type": "screen", "appointment_id": appointment, "enabled": True})
            # The patient's page gets the relay's offer of a new video, and is told it is the
            # clinician's screen.
            offer = await call.patient_socket.expect("offer", within=15)
            patient_pc = call.patient.pc
            await patient_pc.setRemoteDescription(
                RTCSessionDescription(sdp=offer["sdp"], type="offer")
            )
            await patient_pc.setLocalDescription(await patient_pc.createAnswer())
            await call.patient_socket.send(
                {"type": "answer", "sdp": patient_pc.localDescription.sdp}
            )

            def screens(message: dict[str, Any]) -> list[dict[str, Any]]:
                return [item for item in message["items"] if item["source"] == "screen"]

            async def told_screen() -> dict[str, Any]:
                while True:
                    message = await call.patient_socket.expect("streams", within=15)
                    if screens(message):
                        return message

            streams = await told_screen()
            [screen] = screens(streams)
            assert screen["participant"] == "clinician"
            assert screen["kind"] == "video"
            mids = [t.mid for t in patient_pc.getTransceivers()]
            assert screen["mid"] in mids
            await call.patient.wait_for_video(GREEN)

            bad = {"type": "screen", "appointment_id": appointment, "enabled": "sometimes"}
            await desk.send(bad)
            await desk.expect("error", within=5, code="invalid_message")
            await call.patient_socket.send({"type": "screen", "enabled": True})
            await call.patient_socket.expect("error", within=5, code="invalid_message")
            await desk.send({"type": "screen", "appointment_id": appointment, "enabled": False})
            while True:
                message = await call.patient_socket.expect("streams", within=15)
                if not screens(message):
                    break
