"""One owner per room: every change to a call's room is a step its owner runs, in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.participants import PATIENT
from media import consent as consent_steps
from media import negotiation
from media import relay as relay_module
from media.relay import Relay
from media.tracks import Publisher
from signaling.media import Consent, SignalingError
from tests.media.clients import until
from tests.media.harness import Guard, Log, Outbox, Peer, consent

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def forwards(publisher: Publisher) -> bool:
    """Its gate is open (read through a call, so a type checker does not narrow it)."""
    return publisher.allowed


class SlowLog(Log):
    """A recording log whose `started` waits until let go (a database that is slow to write)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()

    async def started(self, call_id: uuid.UUID, recording_id: uuid.UUID, file_name: str) -> None:
        self.waiting.set()
        await self.go.wait()
        await super().started(call_id, recording_id, file_name)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[Relay, Outbox, SlowLog]]:
    outbox, log = Outbox(), SlowLog()
    settings = Settings(
        environment="development",
        media_ips=["127.0.0.1"],
        recordings_dir=tmp_path / "recordings",
    )
    relay = Relay(settings=settings, emit=outbox.emit, recordings=log)
    yield relay, outbox, log
    log.go.set()
    await relay.shutdown()


async def open_call(relay: Relay) -> uuid.UUID:
    call_id = uuid.uuid4()
    await relay.open_call(call_id, consent=consent(), ice_servers=[])
    return call_id


def traced(
    trace: list[str], name: str, step: Callable[..., Awaitable[None]], *, pause: float = 0.0
) -> Callable[..., Awaitable[None]]:
    """The step, noting when it begins and ends (after `pause`, so a later one could cut in)."""

    async def run(*args: Any, **kwargs: Any) -> None:
        trace.append(f"{name} begins")
        await asyncio.sleep(pause)
        await step(*args, **kwargs)
        trace.append(f"{name} ends")

    return run


class TestOrder:
    async def test_offer_leave_withdrawal_and_record_are_applied_as_they_arrived(
        self, relay: tuple[Relay, Outbox, SlowLog], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        plane, outbox, log = relay
        log.go.set()
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        await patient.join()
        trace: list[str] = []
        monkeypatch.setattr(
            relay_module, "on_offer", traced(trace, "offer", negotiation.on_offer, pause=0.2)
        )
        monkeypatch.setattr(relay_module, "leave", traced(trace, "leave", negotiation.leave))
        monkeypatch.setattr(
            consent_steps, "announced", traced(trace, "consent", consent_steps.announced)
        )
        monkeypatch.setattr(consent_steps, "record", traced(trace, "record", consent_steps.record))
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        joining = asyncio.create_task(clinician.join())  # its offer is posted at once
        await until(lambda: bool(trace), 5)
        await plane.leave(call, "patient")
        withdrawing = asyncio.create_task(
            plane.consent(call, consent(video=False, recording=False))
        )
        recording = asyncio.create_task(plane.record(call, "start"))
        await asyncio.gather(joining, withdrawing, recording)
        await until(lambda: len(trace) == 8, 10)
        assert trace == [
            "offer begins",
            "offer ends",
            "leave begins",
            "leave ends",
            "consent begins",
            "consent ends",
            "record begins",
            "record ends",
        ]
        room = plane.rooms[call]
        assert room.participants[PATIENT].peer is None
        assert not room.consent.video_visit
        assert room.recorder is None  # refused: the withdrawal came first
        refused = await outbox.expect(call, "clinician", "error")
        assert refused["code"] == "recording_consent_required"
        await patient.close()
        await clinician.close()


class TestBrake:
    async def test_a_withdrawal_stops_the_patient_at_once_while_the_owner_is_busy(
        self, relay: tuple[Relay, Outbox, SlowLog]
    ) -> None:
        plane, outbox, log = relay
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        room = plane.rooms[call]
        await until(lambda: (PATIENT, "video") in room.publishers, 10)
        video = room.publishers[(PATIENT, "video")]
        await until(lambda: video.frames > 0, 10)
        recording = asyncio.create_task(plane.record(call, "start"))
        await asyncio.wait_for(log.waiting.wait(), 10)  # the owner waits on the database
        withdrawal = consent(video=False)
        withdrawing = asyncio.create_task(plane.consent(call, withdrawal))
        await until(lambda: room.withdrawals_waiting == 1, 5)
        assert not forwards(video)  # before the owner has run the withdrawal
        assert room.consent == consent()  # which it has not
        assert not withdrawing.done()
        frames = video.frames
        log.go.set()
        await asyncio.gather(recording, withdrawing)
        assert room.consent == withdrawal
        assert room.withdrawals_waiting == 0
        assert not forwards(video)
        await plane.consent(call, consent(video=True, recording=False))
        assert forwards(video)  # a grant opens it, in its turn
        assert video.frames >= frames
        await patient.close()
        await clinician.close()


class TestReadingBrake:
    async def test_a_withdrawal_the_relay_reads_stops_the_patient_while_the_owner_is_busy(
        self, tmp_path: Path
    ) -> None:
        """Never announced (its event lost): the relay's own reading finds it, and the gate
        closes then, not when the owner is done with a slow step."""
        outbox, log, guard = Outbox(), SlowLog(), Guard()
        settings = Settings(
            environment="development",
            media_ips=["127.0.0.1"],
            recordings_dir=tmp_path / "recordings",
        )
        plane = Relay(settings=settings, emit=outbox.emit, recordings=log, guard=guard)
        call = uuid.uuid4()
        await plane.open_call(call, consent=guard.standing, ice_servers=[])
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        try:
            await patient.join()
            await clinician.join()
            room = plane.rooms[call]
            await until(lambda: (PATIENT, "video") in room.publishers, 10)
            video = room.publishers[(PATIENT, "video")]
            await until(lambda: video.frames > 0 and forwards(video), 10)
            recording = asyncio.create_task(plane.record(call, "start"))
            await asyncio.wait_for(log.waiting.wait(), 10)  # the owner waits on the database
            guard.standing = Consent(video_visit=False, recording=False, seq=2)
            await until(lambda: not forwards(video), 2)
            assert room.consent.seq == 1  # the owner has not applied it yet
            assert not recording.done()
            log.go.set()
            await recording
            await until(lambda: room.consent.seq == 2, 5)
            assert not forwards(video)
            await until(lambda: guard.over == [call], 5)
        finally:
            log.go.set()
            await patient.close()
            await clinician.close()
            await plane.shutdown()


class TestClose:
    async def test_a_close_while_steps_wait_leaves_no_task_and_no_peer_connection(
        self, relay: tuple[Relay, Outbox, SlowLog]
    ) -> None:
        plane, outbox, log = relay
        warm = await open_call(plane)  # the relay's ticker runs from the first call on
        await plane.close_call(warm)
        tasks = {t for t in asyncio.all_tasks() if not t.done()}
        call = await open_call(plane)
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await patient.join()
        await clinician.join()
        owner = plane.rooms[call].owner
        starting = asyncio.create_task(plane.record(call, "start"))
        await asyncio.wait_for(log.waiting.wait(), 10)  # the owner waits on the database
        late = Peer(plane, outbox, call, "interpreter", colour=GREEN, tone=660)
        joining = asyncio.create_task(late.join())
        await until(lambda: owner.waiting("interpreter") == 1, 5)  # its offer waits
        for _ in range(50):
            await plane.candidate(call, "patient", {"candidate": "", "sdpMid": "0"})
        stopping = asyncio.create_task(plane.record(call, "stop"))
        await until(lambda: owner.waiting("clinician") == 1, 5)
        closing = asyncio.create_task(plane.close_call(call))
        await until(lambda: owner.closing, 5)
        assert owner.waiting() == 1  # the close alone
        log.go.set()
        await closing
        await starting  # the step that was running ran to its end
        with pytest.raises(SignalingError) as refused:
            await stopping  # dropped, and its caller told so
        assert refused.value.code == "not_in_call"
        assert owner.task.done()
        assert not plane.has_call(call)
        assert len(plane.registry) == 0  # the interpreter's offer never made a connection
        assert outbox.messages[(call, "interpreter")] == []
        assert [r["reason"] for r in log.recordings] == ["ended"]  # the close, not the stop
        joining.cancel()
        await patient.close()
        await clinician.close()
        await late.close()
        await asyncio.sleep(0.5)
        left = {t for t in asyncio.all_tasks() if not t.done()} - tasks
        assert not [t for t in left if t.get_name().startswith("relay-")]
