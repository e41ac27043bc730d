"""Consent per person in a call: each guest's own decisions gate their media and the recording.

The relay runs in the test's process with real aiortc peers (tests.media.harness). A guest's
decisions reach it as announcements (MediaPlane.guest_consent) and as the consent guard's
readings (Consent.guests); a guest's withdrawal takes only their media out, the call goes on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from media.frames import EncodedFrame
from media.recording import Recorder
from media.relay import Relay
from media.tracks import Publisher
from signaling.media import Consent, GuestConsent
from tests.media.clients import until
from tests.media.harness import (
    Guard,
    Log,
    Outbox,
    Peer,
    Recorded,
    close_to,
    consent,
    decode_recording,
    guarded_relay,
    sees,
)

RED, BLUE, GREEN, YELLOW = (220, 30, 30), (30, 30, 220), (30, 200, 30), (220, 200, 30)
INTERPRETER = f"interpreter:{uuid.uuid4()}"
CAREGIVER = f"caregiver:{uuid.uuid4()}"
BOTH = GuestConsent(video_visit=True, recording=True, seq=1)
NO_RECORDING = GuestConsent(video_visit=True, recording=False, seq=1)


def small(
    plane: Relay, outbox: Outbox, call: uuid.UUID, key: str, colour: tuple[int, int, int]
) -> Peer:
    return Peer(plane, outbox, call, key, colour=colour, tone=440, size=(160, 120), estimates=False)


def forwards(plane: Relay, call: uuid.UUID, key: str) -> bool:
    """Whether any of this participant's publishers passes the gate."""
    publishers = [p for (role, _f), p in plane.rooms[call].publishers.items() if role == key]
    return bool(publishers) and all(p.allowed for p in publishers)


@pytest.fixture
async def recording_relay(tmp_path: Path) -> AsyncIterator[tuple[Relay, Outbox, Log]]:
    outbox, log = Outbox(), Log()
    settings = Settings(
        environment="development", media_ips=["127.0.0.1"], recordings_dir=tmp_path / "rec"
    )
    relay = Relay(settings=settings, emit=outbox.emit, recordings=log)
    yield relay, outbox, log
    await relay.shutdown()


class TestGuestGate:
    async def test_a_guest_is_forwarded_only_while_their_own_consent_stands(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        plane, outbox = relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(), ice_servers=[])  # no guest named
        peers = [
            small(plane, outbox, call, "patient", RED),
            small(plane, outbox, call, "clinician", BLUE),
            small(plane, outbox, call, INTERPRETER, GREEN),
        ]
        patient, clinician, interpreter = peers
        try:
            for peer in peers:
                await peer.join()
            # A guest the consent does not name is allowed nothing; they get the others.
            await until(lambda: sees(interpreter, RED) and sees(interpreter, BLUE), 20)
            await until(lambda: sees(patient, BLUE) and sees(clinician, RED), 20)
            assert not forwards(plane, call, INTERPRETER)
            assert not sees(patient, GREEN)
            assert not sees(clinician, GREEN)

            await plane.guest_consent(call, INTERPRETER, BOTH)
            await until(lambda: sees(patient, GREEN) and sees(clinician, GREEN), 20)

            # Their withdrawal: only their media stops, at once; the call goes on.
            withdrawn = GuestConsent(video_visit=False, recording=False, seq=2)
            await plane.guest_consent(call, INTERPRETER, withdrawn)
            assert not forwards(plane, call, INTERPRETER)
            assert forwards(plane, call, "patient")
            assert plane.has_call(call)
            assert plane.rooms[call].consent.video_visit
            # An older decision arriving late changes nothing.
            await plane.guest_consent(call, INTERPRETER, BOTH)
            assert not forwards(plane, call, INTERPRETER)
            # The patient's own decision, announced, keeps what the room knows of the guest.
            await plane.consent(call, Consent(video_visit=True, recording=True, seq=5))
            assert not forwards(plane, call, INTERPRETER)
            frames = sum(t.video_frames for t in patient.tracks)
            await until(lambda: sum(t.video_frames for t in patient.tracks) > frames + 10, 10)
        finally:
            for peer in peers:
                await peer.close()


class TestGuestReadings:
    async def test_a_guest_the_readings_no_longer_name_is_cut_off_and_the_call_goes_on(
        self, tmp_path: Path
    ) -> None:
        guard = Guard(Consent(True, True, seq=1, guests={INTERPRETER: BOTH}))
        plane, outbox, _log = guarded_relay(tmp_path / "r", guard)
        call = uuid.uuid4()
        await plane.open_call(call, consent=guard.standing, ice_servers=[])
        peers = [
            small(plane, outbox, call, "clinician", BLUE),
            small(plane, outbox, call, INTERPRETER, GREEN),
        ]
        clinician, _interpreter = peers
        try:
            for peer in peers:
                await peer.join()
            await until(lambda: sees(clinician, GREEN), 20)
            assert forwards(plane, call, INTERPRETER)
            # Never announced (an event lost): the relay's own reading finds them gone.
            guard.standing = Consent(True, True, seq=1, guests={})
            await until(lambda: not forwards(plane, call, INTERPRETER), 5)
            await asyncio.sleep(1.0)  # readings go on: still cut off, and the call not over
            assert not forwards(plane, call, INTERPRETER)
            assert guard.over == []
            assert plane.has_call(call)
            # Named again (consented again): forwarded again.
            guard.standing = Consent(True, True, seq=1, guests={INTERPRETER: BOTH})
            await until(lambda: forwards(plane, call, INTERPRETER), 5)
        finally:
            for peer in peers:
                await peer.close()
            await plane.shutdown()


class TestRecordingNeedsEveryone:
    async def test_recording_waits_for_every_guest_present_and_one_without_it_stops_it(
        self, recording_relay: tuple[Relay, Outbox, Log]
    ) -> None:
        plane, outbox, log = recording_relay
        call = uuid.uuid4()
        guests = {INTERPRETER: NO_RECORDING, CAREGIVER: NO_RECORDING}
        await plane.open_call(call, consent=consent(guests=guests), ice_servers=[])
        peers = [
            small(plane, outbox, call, "patient", RED),
            small(plane, outbox, call, "clinician", BLUE),
            small(plane, outbox, call, INTERPRETER, GREEN),
        ]
        caregiver = small(plane, outbox, call, CAREGIVER, YELLOW)
        try:
            for peer in peers:
                await peer.join()
            await until(lambda: sees(peers[0], GREEN), 20)
            # The interpreter present has not consented to recording: refused.
            await plane.record(call, "start")
            refusal = await outbox.expect(call, "clinician", "error")
            assert refusal["code"] == "recording_consent_required"
            assert not log.recordings

            await plane.guest_consent(call, INTERPRETER, GuestConsent(True, True, seq=2))
            await plane.record(call, "start")
            for role in ("patient", "clinician", INTERPRETER):
                assert (await outbox.expect(call, role, "recording"))["state"] == "on"

            # A guest without the recording consent joins: the recording stops, all are told.
            await caregiver.join()
            for role in ("patient", "clinician", INTERPRETER):
                assert (await outbox.expect(call, role, "recording"))["state"] == "off"
            [recording] = log.recordings
            assert recording["reason"] == "participant_without_consent"
            assert not any(
                m.get("type") == "recording" and m.get("state") == "on"
                for m in outbox.messages[(call, CAREGIVER)]
            )

            # The caregiver consents; recording again; the interpreter withdraws it: stopped.
            await plane.guest_consent(call, CAREGIVER, GuestConsent(True, True, seq=2))
            await plane.record(call, "start")
            assert (await outbox.expect(call, "patient", "recording"))["state"] == "on"
            await plane.guest_consent(call, INTERPRETER, GuestConsent(True, False, seq=3))
            assert (await outbox.expect(call, "patient", "recording"))["state"] == "off"
            assert log.recordings[1]["reason"] == "participant_without_consent"
            assert plane.has_call(call)
        finally:
            for peer in [*peers, caregiver]:
                await peer.close()


def recorded(plane: Relay, tmp_path: Path, recording: dict[str, Any]) -> Recorded:
    """A recording part the `recording_relay` fixture's relay wrote, decoded."""
    return decode_recording(
        tmp_path / "rec" / recording["file"], plane.settings.recordings_seal_key()
    )


class TestRecordingAsPeopleComeAndGo:
    async def test_a_guest_admitted_while_recording_is_in_its_next_file(
        self, recording_relay: tuple[Relay, Outbox, Log], tmp_path: Path
    ) -> None:
        plane, outbox, log = recording_relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(guests={INTERPRETER: BOTH}), ice_servers=[])
        patient = small(plane, outbox, call, "patient", RED)
        clinician = small(plane, outbox, call, "clinician", BLUE)
        interpreter = small(plane, outbox, call, INTERPRETER, GREEN)
        peers = [patient, clinician, interpreter]
        try:
            await patient.join()
            await clinician.join()
            await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 20)
            await plane.record(call, "start")
            for role in ("patient", "clinician"):
                assert (await outbox.expect(call, role, "recording"))["state"] == "on"
            await asyncio.sleep(1.5)

            # The interpreter, consenting to recording, joins the recording call: the first
            # file is finished and the recording goes on in a second, which has them too.
            await interpreter.join()
            assert (await outbox.expect(call, INTERPRETER, "recording"))["state"] == "on"
            await until(lambda: sees(patient, GREEN), 20)
            # (the next part begins before the first is finished: wait for both)
            await until(lambda: len(log.recordings) == 2 and "reason" in log.recordings[0], 10)
            first, second = log.recordings
            assert first["reason"] == "participant_joined"
            await asyncio.sleep(2.5)
            # Nobody was told the recording stopped in between.
            for role in ("patient", "clinician", INTERPRETER):
                said = [m for m in outbox.messages[(call, role)] if m["type"] == "recording"]
                assert said == [], (role, said)
            await plane.record(call, "stop")
            for role in ("patient", "clinician", INTERPRETER):
                assert (await outbox.expect(call, role, "recording"))["state"] == "off"
            assert second["reason"] == "stopped"

            before = recorded(plane, tmp_path, first)
            assert before.kinds.count("audio") == 2
            assert len(before.colours) == 2
            assert any(close_to(c, RED) for c in before.colours)
            assert any(close_to(c, BLUE) for c in before.colours)
            assert not any(close_to(c, GREEN) for c in before.colours)
            after = recorded(plane, tmp_path, second)
            assert after.kinds.count("audio") == 3
            assert len(after.colours) == 3
            for colour in (RED, BLUE, GREEN):
                assert any(close_to(c, colour) for c in after.colours), colour
        finally:
            for peer in peers:
                await peer.close()

    async def test_a_screen_shared_while_recording_is_in_its_next_file_once(
        self, recording_relay: tuple[Relay, Outbox, Log], tmp_path: Path
    ) -> None:
        plane, outbox, log = recording_relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(), ice_servers=[])
        patient = small(plane, outbox, call, "patient", RED)
        clinician = small(plane, outbox, call, "clinician", BLUE)
        try:
            await patient.join()
            await clinician.join()
            await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 20)
            await plane.record(call, "start")
            assert (await outbox.expect(call, "patient", "recording"))["state"] == "on"
            await clinician.add_video(YELLOW)
            await asyncio.sleep(1.0)
            assert len(log.recordings) == 1  # a screen not shared yet is not recorded
            await plane.screen(call, "clinician", enabled=True)
            await until(lambda: sees(patient, YELLOW), 20)
            # (the next part begins before the first is finished: wait for both)
            await until(lambda: len(log.recordings) == 2 and "reason" in log.recordings[0], 10)
            assert log.recordings[0]["reason"] == "participant_joined"
            # Stopping and sharing again: the same publisher, already in the file.
            await plane.screen(call, "clinician", enabled=False)
            await asyncio.sleep(0.5)
            await plane.screen(call, "clinician", enabled=True)
            await asyncio.sleep(2.0)
            await plane.record(call, "stop")
            assert (await outbox.expect(call, "patient", "recording"))["state"] == "off"
            assert [r["reason"] for r in log.recordings] == ["participant_joined", "stopped"]
            after = recorded(plane, tmp_path, log.recordings[1])
            assert after.kinds.count("audio") == 2
            assert len(after.colours) == 3
            for colour in (RED, BLUE, YELLOW):
                assert any(close_to(c, colour) for c in after.colours), colour
        finally:
            for peer in (patient, clinician):
                await peer.close()

    async def test_a_guest_removed_while_recording_leaves_it_going(self, tmp_path: Path) -> None:
        guard = Guard(Consent(True, True, seq=1, guests={INTERPRETER: BOTH}))
        plane, outbox, log = guarded_relay(tmp_path / "r", guard)
        call = uuid.uuid4()
        await plane.open_call(call, consent=guard.standing, ice_servers=[])
        peers = [
            small(plane, outbox, call, "patient", RED),
            small(plane, outbox, call, "clinician", BLUE),
            small(plane, outbox, call, INTERPRETER, GREEN),
        ]
        try:
            for peer in peers:
                await peer.join()
            await until(lambda: sees(peers[0], GREEN), 20)
            await plane.record(call, "start")
            assert (await outbox.expect(call, "patient", "recording"))["state"] == "on"
            # Removed (committed; the relay's reading finds them gone before their `leave`
            # arrives): their media stops at once, and the recording goes on without them.
            guard.standing = Consent(True, True, seq=1, guests={})
            await until(lambda: not forwards(plane, call, INTERPRETER), 5)
            await asyncio.sleep(1.5)  # readings go on, their peer still in the room
            assert INTERPRETER in plane.rooms[call].present()
            assert plane.rooms[call].recorder is not None
            assert "reason" not in log.recordings[0]
            assert not any(
                m["type"] == "recording" and m["state"] == "off"
                for m in outbox.messages[(call, "patient")]
            )
            # A guest who withdraws only the recording consent, still taking part, stops it.
            guard.standing = Consent(
                True, True, seq=2, guests={INTERPRETER: GuestConsent(True, False, seq=2)}
            )
            assert (await outbox.expect(call, "patient", "recording"))["state"] == "off"
            assert log.recordings[0]["reason"] == "participant_without_consent"
        finally:
            for peer in peers:
                await peer.close()
            await plane.shutdown()


class TestRecorderKeepsOnlyTheConsented:
    async def test_frames_of_someone_whose_recording_consent_does_not_stand_are_not_kept(
        self, tmp_path: Path
    ) -> None:
        kept, refused = Publisher("patient", "audio"), Publisher(CAREGIVER, "audio")
        recorder = Recorder(
            tmp_path, uuid.uuid4(), [kept, refused], "vp8", key=b"k" * 32,
            recordable=lambda role: role != CAREGIVER,
        )  # fmt: skip
        try:
            for publisher in (kept, refused):
                publisher.attach_source("source", lambda: None)
                frame = EncodedFrame(data=b"\x00" * 10, timestamp=960, keyframe=True, received=0.0)
                publisher.on_frame("opus", frame, "source")
            assert recorder.discarded == 1
        finally:
            await recorder.close()
