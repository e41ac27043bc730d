"""One owner per hosted call (signaling.hosting): everything that hosts, unhosts or drives the
relay for a call goes through the call's owner, one request at a time, in arrival order.

The relay is the real one (media.relay.Relay, no peers needed), with a probe that notes when each
of its MediaPlane steps begins and ends, and can be made slow (a step that waits) or failing (a
relay that raises), as a relay under load or broken would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.db import Database
from media.relay import Relay
from scheduling.models import Appointment
from signaling.broker import Broker, RedisBroker
from signaling.hosting import INBOX_LIMIT
from signaling.hub import CLINICIAN, PATIENT, Signaling
from signaling.media import Consent
from tests.media.harness import Log


class ProbedRelay(Relay):
    """The relay, noting each step's start and end; `slow` steps wait for `go`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps: list[tuple[str, str]] = []
        self.slow: set[str] = set()
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()  # a slow step began
        self.fail_open = False
        self.fail_offer = False

    async def _step(self, name: str) -> None:
        self.steps.append(("begin", name))
        if name in self.slow:
            self.waiting.set()
            await self.go.wait()

    async def open_call(
        self, call_id: uuid.UUID, *, consent: Consent, ice_servers: list[dict[str, Any]]
    ) -> None:
        await super().open_call(call_id, consent=consent, ice_servers=ice_servers)
        if self.fail_open:
            raise RuntimeError("the relay broke while opening the room")

    async def offer(self, call_id: uuid.UUID, role: str, sdp: str) -> None:
        await self._step("offer")
        if self.fail_offer:
            raise RuntimeError("the relay broke")
        self.steps.append(("end", "offer"))

    async def candidate(
        self, call_id: uuid.UUID, role: str, candidate: dict[str, Any] | None
    ) -> None:
        self.steps.append(("begin", "candidate"))

    async def record(self, call_id: uuid.UUID, action: str) -> None:
        await self._step(f"record {action}")
        await super().record(call_id, action)
        self.steps.append(("end", f"record {action}"))

    async def consent(self, call_id: uuid.UUID, consent: Consent) -> None:
        await self._step(f"consent {consent.seq}")
        await super().consent(call_id, consent)
        self.steps.append(("end", f"consent {consent.seq}"))


class Hub:
    def __init__(self, signaling: Signaling, relay: ProbedRelay, log: Log) -> None:
        self.signaling, self.relay, self.log = signaling, relay, log
        # What each participant was sent.
        self.sent: dict[str, list[dict[str, Any]]] = {PATIENT: [], CLINICIAN: []}

    def subscriptions(self, call_id: uuid.UUID) -> int:
        return len(self.signaling.broker._handlers.get(f"media:{call_id}", ()))

    async def listen(self, call_id: uuid.UUID) -> None:
        for role in (PATIENT, CLINICIAN):

            async def deliver(message: dict[str, Any], role: str = role) -> None:
                if "send" in message:
                    self.sent[role].append(message["send"])

            await self.signaling.broker.subscribe(f"participant:{call_id}:{role}", deliver)


async def make_hub(
    db: Database, settings: Settings, broker: Broker, folder: Path
) -> tuple[Signaling, ProbedRelay, Log]:
    signaling = Signaling(db=db, settings=settings, broker=broker, process_id=uuid.uuid4().hex)
    log = Log()
    relay = ProbedRelay(
        settings=Settings(
            environment="development", media_ips=["127.0.0.1"], recordings_dir=folder
        ),
        emit=signaling.to_participant,
        recordings=log,
    )
    signaling.media = relay
    await broker.start()
    return signaling, relay, log


@pytest.fixture
async def in_memory(db: Database, settings: Settings, tmp_path: Path) -> AsyncIterator[Hub]:
    """One process without Redis: a publish waits for the call's owner to apply it."""
    signaling, relay, log = await make_hub(db, settings, Broker(), tmp_path / "recordings")
    yield Hub(signaling, relay, log)
    await signaling.stop()


@pytest.fixture
async def with_redis(
    db: Database, settings: Settings, redis_url: str, tmp_path: Path
) -> AsyncIterator[Hub]:
    client = Redis.from_url(redis_url)
    signaling, relay, log = await make_hub(
        db, settings, RedisBroker(client), tmp_path / "recordings"
    )
    yield Hub(signaling, relay, log)
    await signaling.stop()
    await client.aclose()


def a_call() -> Appointment:
    now = dt.datetime.now(dt.UTC)
    return Appointment(id=uuid.uuid4(), start_at=now, end_at=now + dt.timedelta(minutes=20))


def consent(seq: int, *, recording: bool) -> dict[str, Any]:
    return {"video_visit": True, "recording": recording, "seq": seq}


async def slow_recording_start(hub: Hub) -> tuple[Appointment, asyncio.Task[None]]:
    """A hosted call with the recording consent, and a recording start under way that takes
    a while (a disk, a busy loop) until `hub.relay.go` is set."""
    call = a_call()
    await hub.listen(call.id)
    await hub.signaling.host_call(call)
    await hub.signaling.media_request(call.id, PATIENT, "consent", consent(1, recording=True))
    hub.relay.slow = {"record start"}
    started = asyncio.create_task(
        hub.signaling.media_request(call.id, CLINICIAN, "record", {"action": "start"})
    )
    await hub.relay.waiting.wait()
    return call, started


def withdraw(hub: Hub, call: Appointment, seq: int) -> asyncio.Task[None]:
    """The patient's recording consent withdrawn, as its event reaches the call's relay."""
    change = consent(seq, recording=False)
    return asyncio.create_task(
        hub.signaling.media_request(call.id, PATIENT, "consent", change, reroute=False)
    )


class TestHosting:
    async def test_fifty_hosts_at_once_then_an_unhost_racing_fifty_more(
        self, with_redis: Hub
    ) -> None:
        hub = with_redis
        call = a_call()
        await asyncio.gather(*(hub.signaling.host_call(call) for _ in range(50)))
        assert hub.subscriptions(call.id) == 1
        assert await hub.signaling.broker.publish(f"media:{call.id}", {"op": "ping"}) == 1
        # A close and fifty new hosts, posted in that order: the call ends hosted, once, with
        # its room (a relay with no channel, or a channel with no relay, is half a call).
        await asyncio.gather(
            hub.signaling.unhost_call(call.id),
            *(hub.signaling.host_call(call) for _ in range(50)),
        )
        assert hub.subscriptions(call.id) == 1
        assert hub.relay.has_call(call.id)

    async def test_an_unhost_racing_a_rehost_leaves_the_new_host_standing(
        self, with_redis: Hub
    ) -> None:
        hub = with_redis
        call = a_call()
        await hub.signaling.host_call(call)
        await asyncio.gather(hub.signaling.unhost_call(call.id), hub.signaling.host_call(call))
        assert hub.relay.has_call(call.id)
        assert hub.subscriptions(call.id) == 1
        # And the other way round: the later close wins.
        await asyncio.gather(hub.signaling.host_call(call), hub.signaling.unhost_call(call.id))
        assert not hub.relay.has_call(call.id)
        assert hub.subscriptions(call.id) == 0

    async def test_a_close_of_a_hosting_that_is_gone_leaves_the_next_one(
        self, in_memory: Hub
    ) -> None:
        # What the reconciliation and an undone admission do: close the hosting they saw.
        hub = in_memory
        call = a_call()
        seen = await hub.signaling.hosting.host(call)
        await hub.signaling.unhost_call(call.id)
        await hub.signaling.host_call(call)
        await hub.signaling.hosting.unhost(call.id, seen)
        assert hub.relay.has_call(call.id)
        assert hub.subscriptions(call.id) == 1

    async def test_a_relay_failing_to_open_leaves_nothing_half_open(self, in_memory: Hub) -> None:
        hub = in_memory
        call = a_call()
        hub.relay.fail_open = True
        with pytest.raises(RuntimeError):
            await hub.signaling.host_call(call)
        assert not hub.relay.has_call(call.id)
        assert hub.subscriptions(call.id) == 0
        hub.relay.fail_open = False
        await hub.signaling.host_call(call)
        assert hub.relay.has_call(call.id)
        assert hub.subscriptions(call.id) == 1

    async def test_a_failing_step_is_answered_and_the_call_goes_on(self, in_memory: Hub) -> None:
        hub = in_memory
        call = a_call()
        await hub.listen(call.id)
        await hub.signaling.host_call(call)
        hub.relay.fail_offer = True
        await hub.signaling.media_request(call.id, PATIENT, "offer", {"sdp": "v=0"})
        assert hub.sent[PATIENT][-1]["code"] == "media_error"
        hub.relay.fail_offer = False
        await hub.signaling.media_request(call.id, PATIENT, "offer", {"sdp": "v=0"})
        assert hub.relay.steps[-1] == ("end", "offer")
        assert hub.relay.has_call(call.id)
        assert hub.subscriptions(call.id) == 1


class TestOrder:
    async def test_a_recording_never_outlives_a_withdrawal_posted_after_it(
        self, in_memory: Hub
    ) -> None:
        hub = in_memory
        call, started = await slow_recording_start(hub)
        withdrawn = withdraw(hub, call, 2)
        for _ in range(5):
            await asyncio.sleep(0)
        hub.relay.go.set()
        await asyncio.gather(started, withdrawn)
        steps = hub.relay.steps[-4:]
        assert steps == [
            ("begin", "record start"),
            ("end", "record start"),
            ("begin", "consent 2"),
            ("end", "consent 2"),
        ]
        # Recorded from the start to the withdrawal, and stopped by it.
        assert [r["reason"] for r in hub.log.recordings] == ["consent_withdrawn"]
        states = [m["state"] for m in hub.sent[CLINICIAN] if m.get("type") == "recording"]
        assert states == ["on", "off"]


class TestInbox:
    async def test_a_full_inbox_refuses_steps_but_never_a_consent_change(
        self, in_memory: Hub
    ) -> None:
        hub = in_memory
        call, busy = await slow_recording_start(hub)
        # The owner is busy: its inbox fills, and what comes past the limit is refused.
        extra = 10
        steps = [
            asyncio.create_task(
                hub.signaling.media_request(call.id, PATIENT, "candidate", {"candidate": None})
            )
            for _ in range(INBOX_LIMIT + extra)
        ]
        for _ in range(3):
            await asyncio.sleep(0)
        # Consent changes while it is full: none refused; they give way to the latest.
        changes = [withdraw(hub, call, seq) for seq in (2, 3, 4)]
        for _ in range(3):
            await asyncio.sleep(0)
        hub.relay.go.set()
        await asyncio.gather(busy, *steps, *changes)
        refused = [m for m in hub.sent[PATIENT] if m.get("code") == "media_busy"]
        assert len(refused) == extra
        assert hub.relay.steps.count(("begin", "candidate")) == INBOX_LIMIT
        applied = [name for kind, name in hub.relay.steps if kind == "end"]
        assert applied[-1] == "consent 4"
        assert "consent 2" not in applied
        assert "consent 3" not in applied
        assert [r["reason"] for r in hub.log.recordings] == ["consent_withdrawn"]
