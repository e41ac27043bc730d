"""Consent as the relay checks it: the app's own relay, its database, aiortc peers in-process.

A decision written straight to the database is one whose announcement was lost (the process
that took it died before publishing, or Redis was down): the relay must find it by itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select, text

from app.audit import AuditEvent
from app.config import Settings
from app.db import Database
from app.main import create_app
from media.recording import Recorder
from media.relay import Relay
from media.room import Room
from scheduling.models import Recording
from signaling.errors import SignalingError
from signaling.hub import Signaling
from tests.factories import Staff
from tests.media.clients import until
from tests.media.harness import Outbox, Peer, sees
from tests.signaling.helpers import Visit, make_visit
from tests.test_consent import decide, put, row

RED, BLUE = (220, 30, 30), (30, 30, 220)
# The contract's bound: a withdrawal stops the patient's media within 1 s of the 201.
BOUND = 1.0


@pytest.fixture
async def app(settings: Settings, tmp_path: Path) -> AsyncIterator[FastAPI]:
    application = create_app(
        settings.model_copy(
            update={"media_ips": ["127.0.0.1"], "recordings_dir": tmp_path / "recordings"}
        )
    )
    async with LifespanManager(application):
        yield application


@dataclass
class Call:
    visit: Visit
    signaling: Signaling
    relay: Relay
    outbox: Outbox
    patient: Peer
    clinician: Peer

    @property
    def id(self) -> uuid.UUID:
        return self.visit.appointment_id


def frames(peer: Peer) -> int:
    return sum(t.video_frames + t.audio_frames for t in peer.tracks)


async def sleep_until(instant: float) -> None:
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


async def start_call(app: FastAPI, db: Database, staff: Staff) -> Call:
    """A call under way on this app's relay, both peers seeing each other."""
    visit = await make_visit(db, staff.clinician, by=staff.scheduler)
    await decide(db, visit, "granted", ["video_visit", "recording"])
    signaling: Signaling = app.state.signaling
    await put(
        db,
        visit,
        status="in_call",
        call_host=signaling.process_id,
        call_started_at=dt.datetime.now(dt.UTC),
    )
    await signaling.host_call(await row(db, visit))
    relay = signaling.media
    assert isinstance(relay, Relay)
    outbox = Outbox()
    for role in ("patient", "clinician"):

        async def deliver(message: dict[str, Any], role: str = role) -> None:
            if "send" in message:
                await outbox.emit(visit.appointment_id, role, message["send"])

        await signaling.broker.subscribe(f"participant:{visit.appointment_id}:{role}", deliver)
    patient = Peer(relay, outbox, visit.appointment_id, "patient", colour=RED, tone=440)
    clinician = Peer(relay, outbox, visit.appointment_id, "clinician", colour=BLUE, tone=880)
    await patient.join()
    await clinician.join()
    await until(lambda: sees(clinician, RED) and sees(patient, BLUE), 20)
    return Call(visit, signaling, relay, outbox, patient, clinician)


@pytest.fixture
async def call(app: FastAPI, db: Database, staff: Staff) -> AsyncIterator[Call]:
    started = await start_call(app, db, staff)
    try:
        yield started
    finally:
        await started.patient.close()
        await started.clinician.close()


class TestTheRelayReadsConsentItself:
    async def test_a_withdrawal_never_announced_stops_the_media_and_ends_the_call(
        self, call: Call, db: Database
    ) -> None:
        await decide(db, call.visit, "withdrawn", ["video_visit"])
        committed = time.monotonic()
        await sleep_until(committed + BOUND)
        at_bound = frames(call.clinician)
        await asyncio.sleep(1.0)
        assert frames(call.clinician) == at_bound  # nothing of the patient's after the bound
        # The relay told signaling, which announced the end (once) and closed the relay.
        ended = await call.outbox.expect(call.id, "clinician", "ended", within=5)
        assert ended["reason"] == "consent_withdrawn"
        await until(lambda: not call.relay.has_call(call.id), 5)
        with pytest.raises(TimeoutError):
            await call.outbox.expect(call.id, "clinician", "ended", within=0.5)

    async def test_the_end_of_a_withdrawn_call_is_announced_once(
        self, call: Call, db: Database
    ) -> None:
        await decide(db, call.visit, "withdrawn", ["video_visit"])
        # The process announcing the withdrawal and the relay's own reading, at once.
        await asyncio.gather(call.signaling.call_over(call.id), call.signaling.call_over(call.id))
        await call.outbox.expect(call.id, "patient", "ended", within=5)
        await call.outbox.expect(call.id, "clinician", "ended", within=5)
        with pytest.raises(TimeoutError):
            await call.outbox.expect(call.id, "clinician", "ended", within=1.0)

    async def test_a_relay_opened_for_a_call_already_over_closes_itself(
        self, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        """An admission whose relay opens just after a withdrawal ended its call."""
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        signaling: Signaling = app.state.signaling
        await put(db, visit, status="completed", call_host=signaling.process_id)
        await signaling.host_call(await row(db, visit))
        assert signaling.media is not None
        await until(lambda: signaling.media is not None and not signaling.media.has_call(
            visit.appointment_id
        ), 30)  # fmt: skip
        # The host is released after the relay closed (call_over), a few database round trips
        # later: a bound for a loaded machine, not a figure.
        for _ in range(300):
            if (await row(db, visit)).call_host is None:
                break
            await asyncio.sleep(0.1)
        assert (await row(db, visit)).call_host is None


class TestRecordingConsent:
    async def test_the_relay_refuses_to_record_on_its_own_reading(
        self, call: Call, db: Database
    ) -> None:
        """Withdrawn, never announced, and the clinician's request reaching the relay at once:
        the relay reads the consent before it starts."""
        await decide(db, call.visit, "withdrawn", ["recording"])
        await call.relay.record(call.id, "start")
        error = await call.outbox.expect(call.id, "clinician", "error")
        assert error["code"] == "recording_consent_required"
        assert call.relay.rooms[call.id].recorder is None

        async def refusals() -> list[AuditEvent]:
            async with db.session(write=False) as session:
                found = await session.execute(
                    select(AuditEvent).where(
                        AuditEvent.resource_id == str(call.id),
                        AuditEvent.action == "recording.start",
                    )
                )
                return list(found.scalars())

        for _ in range(50):  # written by a task of its own
            audited = await refusals()
            if audited:
                break
            await asyncio.sleep(0.1)
        assert [(e.actor_role, e.outcome) for e in audited] == [
            ("system", "recording_consent_required")
        ]
        async with db.session(write=False) as session:
            kept = await session.execute(
                select(Recording).where(Recording.appointment_id == call.id)
            )
            assert list(kept.scalars()) == []


class TestDoubt:
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    async def test_while_consent_cannot_be_read_the_patients_media_is_held(
        self, call: Call, db: Database
    ) -> None:
        """Readings hang (the table is locked); the relay fails closed, and opens again after."""
        async with db.engine.connect() as locker, locker.begin():
            await locker.execute(text("LOCK TABLE appointments IN ACCESS EXCLUSIVE MODE"))
            locked = time.monotonic()
            await sleep_until(locked + BOUND)
            held, other_way = frames(call.clinician), frames(call.patient)
            await asyncio.sleep(1.0)
            assert frames(call.clinician) == held
            assert frames(call.patient) > other_way  # the clinician's media is not held
        await until(lambda: frames(call.clinician) > held + 50, 15)
        assert call.relay.has_call(call.id)

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    async def test_a_moment_in_doubt_holds_media_and_the_recording_goes_on(
        self, call: Call, db: Database
    ) -> None:
        """Readings late for a moment (the table locked until the call is in doubt, then a
        second more): the patient's media is held, the recording is not stopped."""
        room = call.relay.rooms[call.id]
        await call.relay.record(call.id, "start")
        assert (await call.outbox.expect(call.id, "patient", "recording"))["state"] == "on"
        recorder = room.recorder
        assert recorder is not None
        async with db.engine.connect() as locker, locker.begin():
            await locker.execute(text("LOCK TABLE appointments IN ACCESS EXCLUSIVE MODE"))
            await until(lambda: room.in_doubt, 15)
            await asyncio.sleep(0.5)  # what was on its way when the gate closed arrives
            held = frames(call.clinician)
            await asyncio.sleep(1.0)
            assert frames(call.clinician) == held
            assert room.recorder is recorder
        await until(lambda: frames(call.clinician) > held + 50, 15)
        assert room.recorder is recorder
        await call.relay.record(call.id, "stop")
        assert (await call.outbox.expect(call.id, "patient", "recording"))["state"] == "off"
        assert await stop_reasons(db, call) == ["stopped"]

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    async def test_readings_failing_on_stop_the_recording_as_consent_unknown(
        self, call: Call, db: Database
    ) -> None:
        """The database out of reach for longer than UNKNOWN_SECONDS: the recording stops
        (everyone told), the call goes on and its media flows again once readings answer."""
        room = call.relay.rooms[call.id]
        await call.relay.record(call.id, "start")
        assert (await call.outbox.expect(call.id, "patient", "recording"))["state"] == "on"
        async with db.engine.connect() as locker, locker.begin():
            await locker.execute(text("LOCK TABLE appointments IN ACCESS EXCLUSIVE MODE"))
            off = await call.outbox.expect(call.id, "patient", "recording", within=30)
            assert off["state"] == "off"
            assert room.recorder is None
            held = frames(call.clinician)
        await until(lambda: frames(call.clinician) > held + 50, 15)
        assert await stop_reasons(db, call) == ["consent_unknown"]
        assert call.relay.has_call(call.id)


async def stop_reasons(db: Database, call: Call) -> list[str | None]:
    """The call's recordings' stop reasons, once each row is written (after its file closed)."""
    stopped: list[str | None] = []
    for _ in range(100):
        async with db.session(write=False) as session:
            found = await session.execute(
                select(Recording.stop_reason).where(Recording.appointment_id == call.id)
            )
            stopped = list(found.scalars())
        if stopped and None not in stopped:
            break
        await asyncio.sleep(0.1)
    return stopped


class TestRecordingRacingAWithdrawal:
    async def test_nothing_that_arrived_after_the_withdrawal_is_kept(
        self, call: Call, db: Database, staff: Staff
    ) -> None:
        """The clinician's `record` and a withdrawal of the recording consent, never announced
        (the relay must read it itself), the withdrawal after 0 to 0.8 s."""
        kept_any = False
        room = call.relay.rooms[call.id]
        for delay in (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8):
            await decide(db, call.visit, "granted", ["recording"])
            await until(lambda: room.consent.recording, 5)
            recorders: list[Recorder] = []
            watching = asyncio.create_task(_collect(room, recorders))

            async def start() -> str:
                try:
                    await call.signaling.record(staff.clinician.id, call.id, "start")
                except SignalingError as exc:
                    return exc.code  # refused by signaling's own look at the consent
                return "asked"

            async def withdraw(after: float = delay) -> float:
                await asyncio.sleep(after)
                await decide(db, call.visit, "withdrawn", ["recording"])
                return time.monotonic()

            started, committed = await asyncio.gather(start(), withdraw())
            assert started in ("asked", "recording_consent_required")
            await until(lambda: room.recorder is None, 5)
            watching.cancel()
            for recorder in recorders:
                assert recorder.last_kept is None or recorder.last_kept < committed
                kept_any = kept_any or recorder.last_kept is not None
        assert kept_any  # the later withdrawals left something recorded before them

        async def reasons() -> list[str | None]:
            async with db.session(write=False) as session:
                found = await session.execute(
                    select(Recording.stop_reason).where(Recording.appointment_id == call.id)
                )
                return list(found.scalars())

        # Each stop's row is written once its file is closed, after the room lets go of it.
        for _ in range(50):
            stopped = await reasons()
            if None not in stopped:
                break
            await asyncio.sleep(0.1)
        assert stopped
        assert set(stopped) == {"consent_withdrawn"}
        assert call.relay.has_call(call.id)  # the call itself goes on


async def _collect(room: Room, into: list[Recorder]) -> None:
    """Every recorder the room holds, however briefly."""
    while True:
        recorder = room.recorder
        if recorder is not None and recorder not in into:
            into.append(recorder)
        await asyncio.sleep(0)
