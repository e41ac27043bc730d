"""The relay in-process: fan-out, consent gate, reconnects, recording, registry, ICE rules."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Settings
from media import owner as owner_module
from media.relay import Relay
from signaling.media import GuestConsent
from tests.media.clients import until
from tests.media.harness import Log, Outbox, Peer, close_to, consent, decode_recording, sees

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[Relay, Outbox, Log]]:
    outbox, log = Outbox(), Log()
    settings = Settings(
        environment="development",
        media_ips=["127.0.0.1"],
        recordings_dir=tmp_path / "recordings",
    )
    relay = Relay(settings=settings, emit=outbox.emit, recordings=log)
    yield relay, outbox, log
    await relay.shutdown()


async def open_call(relay: Relay, *, video_consent: bool = True) -> uuid.UUID:
    call_id = uuid.uuid4()
    await relay.open_call(call_id, consent=consent(video=video_consent), ice_servers=[])
    return call_id


class TestFanOut:
    async def test_two_participants_see_each_other(self, relay: tuple[Relay, Outbox, Log]) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 15)
        room = plane.rooms[call]
        assert not room.transcoding
        for publisher in room.publishers.values():
            assert publisher.frames > 0
        await patient.close()
        await clinician.close()

    async def test_a_third_participant_is_seen_by_both_and_sees_both(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = uuid.uuid4()
        guest = f"interpreter:{uuid.uuid4()}"
        guests = {guest: GuestConsent(video_visit=True, recording=True)}
        await plane.open_call(call, consent=consent(guests=guests), ice_servers=[])
        peers = [
            Peer(plane, outbox, call, "patient", colour=RED, tone=440),
            Peer(plane, outbox, call, "clinician", colour=BLUE, tone=660),
            Peer(plane, outbox, call, guest, colour=GREEN, tone=880),
        ]
        for peer in peers:
            await peer.join()
        # The first two got the relay's own offer, adding the third's tracks.
        await until(
            lambda: all(
                sum(sees(peer, other.colour) for other in peers if other is not peer) == 2
                for peer in peers
            ),
            20,
        )
        for peer in peers:
            await peer.close()


class TestBounds:
    async def test_a_flood_of_media_messages_is_refused_and_a_leave_still_goes_through(
        self, relay: tuple[Relay, Outbox, Log], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(owner_module, "WORK_LIMIT", 5)
        plane, outbox, _log = relay
        call = await open_call(plane)
        candidate = {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}
        for _ in range(20):  # no await yields in between: the worker has not run yet
            await plane.candidate(call, "patient", candidate)
        owner = plane.rooms[call].owner
        assert owner.waiting("patient") == 5
        await plane.leave(call, "patient")  # replaces what waits: it must not be lost
        assert owner.waiting("patient") == 1
        await until(lambda: owner.waiting() == 0, 5)
        errors = [m for m in outbox.messages[(call, "patient")] if m.get("type") == "error"]
        assert errors
        assert {m["code"] for m in errors} == {"media_busy"}


class TestOfferOrder:
    async def test_a_client_that_offers_video_before_audio(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440, video_first=True)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 15)
        await patient.close()
        await clinician.close()


class TestTranscoding:
    async def test_legs_that_cannot_agree_are_transcoded_and_say_so(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440, video_codec="VP8")
        clinician = Peer(
            plane, outbox, call, "clinician", colour=BLUE, tone=880, video_codec="H264"
        )
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 20)
        assert plane.rooms[call].transcoding
        await patient.close()
        await clinician.close()

    async def test_agreeing_legs_forward(self, relay: tuple[Relay, Outbox, Log]) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440, video_codec="H264")
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 20)
        # The call took the first offer's codec (H.264); the relay made the second leg agree.
        assert plane.rooms[call].video_codec == "h264"
        assert not plane.rooms[call].transcoding
        await patient.close()
        await clinician.close()


class TestStall:
    async def test_a_stalled_participant_is_told_to_reconnect_and_the_other_keeps_its_connection(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED), 15)
        kept = clinician.pc
        patient.cut_off()
        again = await outbox.expect(call, "patient", "admitted", within=10)
        assert again["ice_servers"] == []
        await patient.close()
        back = Peer(plane, outbox, call, "patient", colour=GREEN, tone=440)
        await back.join()
        await until(
            lambda: (
                clinician.tracks[-1].last_colour is not None
                and close_to(clinician.tracks[-1].last_colour, GREEN)
            ),
            15,
        )
        assert clinician.pc is kept
        await back.close()
        await clinician.close()


class TestConsentGate:
    async def test_nothing_of_the_patient_is_forwarded_without_consent(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane, video_consent=False)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(patient, BLUE), 15)
        await asyncio.sleep(1.0)
        assert not clinician.colours()  # the patient's camera reached nobody
        assert sum(t.audio_frames for t in clinician.tracks) == 0

        await plane.consent(call, consent(video=True))
        await until(lambda: sees(clinician, RED), 15)

        await plane.consent(call, consent(video=False))
        frames = sum(t.video_frames for t in clinician.tracks)
        await asyncio.sleep(1.0)
        # At most what was already in flight when the consent went.
        assert sum(t.video_frames for t in clinician.tracks) - frames <= 3
        await patient.close()
        await clinician.close()


class TestReconnect:
    async def test_one_side_reconnects_while_the_other_keeps_its_connection(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED), 15)
        kept = clinician.pc

        await patient.close()
        again = Peer(plane, outbox, call, "patient", colour=GREEN, tone=440)
        await again.join()
        # The clinician's connection is the same; the new camera shows from a fresh keyframe.
        await until(lambda: clinician.tracks[-1].last_colour is not None
                    and close_to(clinician.tracks[-1].last_colour, GREEN), 15)  # fmt: skip
        assert clinician.pc is kept
        await until(lambda: sees(again, BLUE), 15)
        await again.close()
        await clinician.close()


class TestRecording:
    async def test_a_recording_decodes_with_pyav(
        self, relay: tuple[Relay, Outbox, Log], tmp_path: Path
    ) -> None:
        plane, outbox, log = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 15)
        await plane.record(call, "start")
        assert (await outbox.expect(call, "patient", "recording"))["state"] == "on"
        assert (await outbox.expect(call, "clinician", "recording"))["state"] == "on"
        await asyncio.sleep(3)
        await plane.record(call, "stop")
        assert (await outbox.expect(call, "clinician", "recording"))["state"] == "off"
        [recording] = log.recordings
        assert recording["reason"] == "stopped"
        assert recording["bytes"] > 10_000
        path = tmp_path / "recordings" / recording["file"]
        assert path.name.endswith(".webm.sealed")
        recorded = decode_recording(path, plane.settings.recordings_seal_key())
        assert sorted(recorded.kinds) == ["audio", "audio", "video", "video"]
        assert recorded.audio_frames > 100  # both voices, 20 ms frames, 3 s
        last = recorded.colours
        assert len(last) == 2
        assert any(close_to(c, RED) for c in last)
        assert any(close_to(c, BLUE) for c in last)
        await patient.close()
        await clinician.close()

    async def test_withdrawing_recording_consent_stops_it(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, log = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        await patient.join()
        await plane.record(call, "start")
        await outbox.expect(call, "patient", "recording")
        await plane.consent(call, consent(video=True, recording=False))
        assert (await outbox.expect(call, "patient", "recording"))["state"] == "off"
        assert log.recordings[0]["reason"] == "consent_withdrawn"
        await patient.close()


class TestRegistry:
    async def test_calls_opened_and_closed_leave_nothing_behind(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, log = relay

        async def one_call() -> None:
            call = await open_call(plane)
            patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
            clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
            await patient.join()
            await clinician.join()
            await until(lambda: sees(clinician, RED), 15)
            await plane.close_call(call)
            await patient.close()
            await clinician.close()

        await one_call()  # warm: lazily created executors and caches
        await asyncio.sleep(0.5)
        gc.collect()
        tasks, threads = len(asyncio.all_tasks()), threading.active_count()
        for _ in range(10):
            await one_call()
        await asyncio.sleep(1.0)
        gc.collect()
        assert len(plane.registry) == 0
        assert not plane.rooms
        assert len(asyncio.all_tasks()) <= tasks + 2
        assert threading.active_count() <= threads + 2
        assert len(log.summaries) == 11


class TestIce:
    async def test_the_relay_contacts_no_server_that_was_not_configured(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        await patient.join()
        [peer] = plane.registry.of_call(call)
        gatherers = [
            t.sender.transport.transport.iceGatherer
            for t in peer.pc.getTransceivers()
            if t.sender.transport
        ]
        for gatherer in gatherers:
            # aioice's connection: no STUN or TURN server at all (aiortc's default is Google's).
            connection = gatherer._connection
            assert connection.stun_server is None
            assert connection.turn_server is None
        addresses = {c.ip for g in gatherers for c in g.getLocalCandidates()}
        assert addresses == {"127.0.0.1"}
        await patient.close()

    async def test_candidates_outside_the_allowed_networks_are_dropped(
        self, relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, _ = relay
        call = await open_call(plane)
        addresses = ("169.254.169.254", "224.0.0.1", "printer.local", "127.0.0.2")

        class Probing(Peer):
            def rewrite(self, sdp: str) -> str:
                extra = "".join(
                    f"a=candidate:9 1 udp 2122260223 {address} 50000 typ host\r\n"
                    for address in addresses
                )
                # Into every media section: a bundled transport reads the last one.
                return sdp.replace("a=end-of-candidates", extra + "a=end-of-candidates")

        patient = Probing(plane, outbox, call, "patient", colour=RED, tone=440)
        await patient.join()
        [peer] = plane.registry.of_call(call)
        transport = peer.pc.getTransceivers()[0].receiver.transport.transport
        remote = {c.ip for c in transport.getRemoteCandidates()}
        assert "127.0.0.2" in remote  # allowed by default (loopback)
        assert not remote & {"169.254.169.254", "224.0.0.1", "printer.local"}
        await patient.close()


class TestPeerFilter:
    def test_default_refuses_metadata_link_local_multicast_and_hostnames(self) -> None:
        from media.peers import PeerFilter

        default = PeerFilter([])
        for address in ("169.254.169.254", "fe80::1", "239.1.1.1", "0.0.0.0", "x.local"):  # noqa: S104
            assert not default.allows(address), address
        for address in ("127.0.0.1", "10.0.0.8", "203.0.113.7", "2001:db8::1"):
            assert default.allows(address), address

    def test_an_allow_list_admits_only_its_networks(self) -> None:
        from media.peers import PeerFilter

        strict = PeerFilter(["198.51.100.0/24"])
        assert strict.allows("198.51.100.20")
        assert not strict.allows("10.0.0.8")
        assert not strict.candidate_allowed("candidate:1 1 udp 2122260223 10.0.0.8 50000 typ host")
        assert strict.candidate_allowed("candidate:1 1 udp 1 198.51.100.20 9 typ srflx")
