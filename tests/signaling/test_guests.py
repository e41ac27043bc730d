"""Guests in a visit through real sockets on a real server: the waiting room, admission into the
running call, who is told what and when, removal, each person's consent, reconnection; and the
same across two processes sharing Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.audit import AuditEvent
from app.db import Database
from tests.conftest import ServerFactory
from tests.factories import Staff
from tests.live import LiveServer
from tests.signaling.helpers import (
    Call,
    Guest,
    Socket,
    add_guest,
    consented_visit,
    console,
    grant,
    items,
    open_socket,
    running_call,
)


@asynccontextmanager
async def waiting(ws: str, guest: Guest) -> AsyncIterator[Socket]:
    async with open_socket(f"{ws}/ws/visits/{guest.token}") as socket:
        await socket.expect("waiting")
        yield socket


@asynccontextmanager
async def in_the_call(ws: str, call: Call, guest: Guest) -> AsyncIterator[Socket]:
    """The guest's socket, waiting, then admitted by the clinician."""
    async with waiting(ws, guest) as socket:
        await call.admit(guest)
        await socket.expect("admitted")
        yield socket


async def remove(http: httpx.AsyncClient, call: Call, guest: Guest, socket: Socket) -> None:
    """The clinician removes the guest over HTTP: their socket is told and closed at once."""
    removed = await http.delete(
        f"/api/v1/appointments/{call.id}/participants/{guest.id}",
        headers=call.visit.clinician.headers,
    )
    assert removed.status_code == 204
    assert (await socket.expect("error"))["code"] == "participant_removed"
    assert await socket.expect_close() == 4410


def guest_item(queue: dict[str, Any], appointment_id: str, guest: Guest) -> dict[str, Any]:
    found = [p for p in items(queue)[appointment_id]["participants"] if p["id"] == guest.id]
    assert len(found) == 1, queue
    item: dict[str, Any] = found[0]
    return item


async def until_guest_status(desk: Socket, appointment_id: str, guest: Guest, status: str) -> None:
    """Queue snapshots until the guest is listed under the patient with this status."""
    queue = await desk.latest("queue")
    while guest_item(queue, appointment_id, guest)["status"] != status:
        queue = await desk.expect("queue", within=10)


class TestWaitingRoom:
    async def test_a_guest_waits_and_the_console_lists_them_under_the_patient(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        guest = await add_guest(http, visit, staff.scheduler.headers, role="caregiver", name="Cy")
        async with (
            console(ws, staff.clinician.token) as desk,
            open_socket(f"{ws}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            queue = await desk.latest("queue")
            assert guest_item(queue, key, guest) == {
                "id": guest.id,
                "role": "caregiver",
                "name": "Cy",
                "status": "invited",
            }
            async with open_socket(f"{ws}/ws/visits/{guest.token}") as socket:
                assert (await socket.expect("waiting"))["type"] == "waiting"
                await until_guest_status(desk, key, guest, "waiting")
            # Their socket dropped: their place waits the grace period.
            await until_guest_status(desk, key, guest, "reconnecting")

    async def test_a_guest_without_their_own_consent_is_refused(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        # The patient consented; the guest did not: the patient's consent is not theirs.
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        guest = await add_guest(http, visit, staff.scheduler.headers, consent=None)
        async with open_socket(f"{live_server.ws_url}/ws/visits/{guest.token}") as socket:
            assert (await socket.expect("error"))["code"] == "consent_required"
            assert await socket.expect_close() == 4403
        await grant(http, guest.token, decision="declined")
        async with open_socket(f"{live_server.ws_url}/ws/visits/{guest.token}") as socket:
            assert (await socket.expect("error"))["code"] == "consent_required"
            assert await socket.expect_close() == 4403

    async def test_the_same_guest_link_in_a_second_window_replaces_the_first(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        # Slow heartbeats: the takeover's news closes the first, not the reconciliation.
        server = live_server_factory(liveness_seconds="60")
        async with httpx.AsyncClient(base_url=server.url) as http:
            visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
            guest = await add_guest(http, visit, staff.scheduler.headers)
        async with waiting(server.ws_url, guest) as first, waiting(server.ws_url, guest):
            assert (await first.expect("error"))["code"] == "replaced"
            assert await first.expect_close() == 4409

    async def test_media_before_admission_is_refused(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        guest = await add_guest(http, visit, staff.scheduler.headers)
        async with waiting(live_server.ws_url, guest) as socket:
            await socket.send({"type": "offer", "sdp": "v=0"})
            assert (await socket.expect("error"))["code"] == "not_in_call"


class TestAdmission:
    async def test_admitted_mid_call_after_everyone_is_told_who_joins(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http, name="Ines")
            async with waiting(ws, guest) as socket:
                await until_guest_status(call.desk, call.id, guest, "waiting")
                await call.admit(guest)
                admitted = await socket.expect("admitted")
                assert admitted["ice_servers"] == []
                joined = {
                    "type": "peer",
                    "event": "joined",
                    "role": "interpreter",
                    "participant": guest.key,
                    "participant_id": guest.id,
                    "name": "Ines",
                }
                assert await call.patient.expect("peer", participant=guest.key) == joined
                seen = await call.desk.expect("peer", participant=guest.key)
                assert seen == {**joined, "appointment_id": call.id}
                # The guest learnt who is in the call (names, roles) before `admitted`.
                before = socket.log[: socket.log.index(admitted)]
                peers = {m["participant"]: m for m in before if m["type"] == "peer"}
                assert peers["patient"]["name"] == "Pat Patient"
                assert peers["patient"]["role"] == "patient"
                assert peers["clinician"]["role"] == "clinician"
                assert peers["clinician"]["name"]
                await until_guest_status(call.desk, call.id, guest, "in_call")
        async with db.session(write=False) as session:
            actions = (
                await session.execute(
                    select(AuditEvent.action).where(AuditEvent.resource_id == guest.id)
                )
            ).scalars()
            assert "guest.admit" in set(actions)

    async def test_refusals_say_why(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        guest = await add_guest(http, visit, staff.scheduler.headers)
        absent = await add_guest(http, visit, staff.scheduler.headers, name="Absent")
        admit = {"type": "admit", "appointment_id": key, "participant_id": guest.id}
        async with (
            console(ws, staff.clinician.token) as desk,
            open_socket(f"{ws}/ws/visits/{visit.token}") as patient,
            waiting(ws, guest) as socket,
        ):
            await patient.expect("waiting")
            # Waiting, but the call does not run: the patient is admitted first.
            await desk.send(admit)
            assert (await desk.expect("error"))["code"] == "not_in_call"
            await desk.send({"type": "admit", "appointment_id": key})
            await patient.expect("admitted")
            # Not in the waiting room (never connected).
            await desk.send({**admit, "participant_id": absent.id})
            assert (await desk.expect("error"))["code"] == "not_waiting"
            await desk.send(admit)
            await socket.expect("admitted")
            # In the call already.
            await desk.send(admit)
            assert (await desk.expect("error"))["code"] == "not_waiting"
            await desk.send({**admit, "participant_id": "00000000-0000-4000-8000-000000000000"})
            assert (await desk.expect("error"))["code"] == "not_found"
            async with console(ws, staff.other_clinician.token) as intruder:
                await intruder.send({**admit, "participant_id": absent.id})
                assert (await intruder.expect("error"))["code"] == "not_found"

    async def test_no_fifth_person(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        """A call holds the patient, the clinician and two guests; a fifth person cannot even be
        invited (the database holds two guest slots per visit), so an `admit` of a fifth never
        has anyone to admit: the limit shows as the API's 409 `participant_limit`."""
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            first = await call.invite(http, name="One")
            second = await call.invite(http, name="Two")
            third = await http.post(
                f"/api/v1/appointments/{call.id}/participants",
                json={"role": "caregiver", "name": "Three"},
                headers=staff.clinician.headers,
            )
            assert third.status_code == 409
            assert third.json()["error"]["code"] == "participant_limit"
            async with in_the_call(ws, call, first) as one, in_the_call(ws, call, second):
                # Four in the call: each guest was told of the other.
                assert (await one.expect("peer", participant=second.key))["event"] == "joined"
                assert (await call.patient.expect("peer", participant=second.key))["name"] == "Two"


class TestDepartures:
    async def test_a_removed_guest_is_closed_at_once_and_their_link_is_gone(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        # The reconciliation (which would close the socket too, on a heartbeat) slowed down:
        # the removal's own news closes it.
        server = live_server_factory(liveness_seconds="60")
        ws = server.ws_url
        async with httpx.AsyncClient(base_url=server.url) as http:
            await self._removed(ws, staff, db, http)

    async def _removed(self, ws: str, staff: Staff, db: Database, http: httpx.AsyncClient) -> None:
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            async with in_the_call(ws, call, guest) as socket:
                await remove(http, call, guest, socket)
                left = await call.patient.expect("peer", participant=guest.key, event="left")
                assert left["role"] == "interpreter"
                await call.desk.expect("peer", participant=guest.key, event="left")
            assert (await http.get(f"/api/v1/visits/{guest.token}")).status_code == 410
            async with open_socket(f"{ws}/ws/visits/{guest.token}") as again:
                assert (await again.expect("error"))["code"] == "visit_closed"
                assert await again.expect_close() == 4410
            # The call goes on.
            await call.patient.send({"type": "ping"})
            await call.patient.expect("pong")

    async def test_a_guests_withdrawal_takes_only_them_out(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            async with in_the_call(ws, call, guest) as socket:
                await grant(http, guest.token, decision="withdrawn")
                assert (await socket.expect("ended"))["reason"] == "consent_withdrawn"
                assert await socket.expect_close() == 4403
            await call.patient.expect("peer", participant=guest.key, event="left")
            await until_guest_status(call.desk, call.id, guest, "invited")
            visit = await http.get(
                f"/api/v1/appointments/{call.id}", headers=staff.clinician.headers
            )
            assert visit.json()["status"] == "in_call"
            # They consent again, wait again, and are admitted again.
            await grant(http, guest.token)
            async with in_the_call(ws, call, guest):
                pass

    async def test_a_guest_who_was_only_waiting_leaves_no_peer_left(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        """Removed or withdrawn while waiting: the people in the call never heard of them, and
        are not told they left."""
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            removed = await call.invite(http, name="Rem")
            withdrawn = await call.invite(http, name="Wit")
            async with waiting(ws, removed) as one, waiting(ws, withdrawn) as two:
                await remove(http, call, removed, one)
                await grant(http, withdrawn.token, decision="withdrawn")
                assert (await two.expect("ended"))["reason"] == "consent_withdrawn"
            # Both are off the queue item, or invited again: the news of each was sent.
            queue = await call.desk.latest("queue")
            while [p["status"] for p in items(queue)[call.id]["participants"]] != ["invited"]:
                queue = await call.desk.expect("queue", within=10)
            await call.desk.send({"type": "message", "appointment_id": call.id, "data": {"n": 1}})
            await call.patient.expect("message")
            assert not [m for m in call.patient.log if m["type"] == "peer" and m["event"] == "left"]

    async def test_the_patients_withdrawal_ends_the_call_for_everyone(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            waiter = await call.invite(http, name="Wait")
            async with in_the_call(ws, call, guest) as socket, waiting(ws, waiter) as other:
                await grant(http, call.visit.token, decision="withdrawn")
                for ended in (socket, other, call.patient, call.desk):
                    assert (await ended.expect("ended"))["reason"] == "consent_withdrawn"
                assert await socket.expect_close() == 1000
                assert await other.expect_close() == 1000

    async def test_the_clinicians_end_ends_it_for_every_guest(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            async with in_the_call(ws, call, guest) as socket:
                await call.desk.send({"type": "end", "appointment_id": call.id})
                assert (await socket.expect("ended"))["reason"] == "ended"
                assert await socket.expect_close() == 1000
            # The visit is over: the link shows it, and no waiting room opens again.
            async with open_socket(f"{ws}/ws/visits/{guest.token}") as late:
                assert (await late.expect("ended"))["reason"] == "completed"

    async def test_a_guest_who_leaves_is_out_and_may_come_back(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            async with in_the_call(ws, call, guest) as socket:
                await socket.send({"type": "leave"})
                assert (await socket.expect("ended"))["reason"] == "left"
            await call.patient.expect("peer", participant=guest.key, event="left")
            await until_guest_status(call.desk, call.id, guest, "left")
            async with waiting(ws, guest):
                await until_guest_status(call.desk, call.id, guest, "waiting")


class TestReconnect:
    async def test_a_guest_back_within_the_grace_period_is_admitted_again(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            async with in_the_call(ws, call, guest):
                pass  # dropped, without a `leave`
            async with open_socket(f"{ws}/ws/visits/{guest.token}") as back:
                admitted = await back.expect("admitted")
                before = back.log[: back.log.index(admitted)]
                assert {m.get("participant") for m in before} >= {"patient", "clinician"}
                assert not [m for m in back.log if m["type"] == "waiting"]
            assert guest.key not in {
                m.get("participant") for m in call.patient.log if m.get("event") == "left"
            }

    async def test_a_guest_away_past_the_grace_period_leaves_the_call(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http) as call:
            guest = await call.invite(http)
            async with in_the_call(ws, call, guest):
                pass  # dropped, without a `leave`
            # The grace is 2 s in tests; the sweeper runs every second.
            await call.patient.expect("peer", participant=guest.key, event="left", within=10)
            await until_guest_status(call.desk, call.id, guest, "left")
            # The call goes on without them.
            await call.patient.send({"type": "ping"})
            await call.patient.expect("pong")


class TestTwoProcesses:
    @pytest.fixture
    def pair(
        self, live_server_factory: ServerFactory, redis_url: str
    ) -> tuple[LiveServer, LiveServer]:
        # Slow heartbeats: what reaches the other process is the news, not the reconciliation.
        def start() -> LiveServer:
            return live_server_factory(redis_url=redis_url, liveness_seconds="60")

        return start(), start()

    async def test_a_guest_on_one_process_admitted_and_removed_from_the_other(
        self, pair: tuple[LiveServer, LiveServer], staff: Staff, db: Database
    ) -> None:
        a, b = pair
        async with (
            httpx.AsyncClient(base_url=b.url) as http,
            running_call(b.ws_url, staff, db, http) as call,
        ):
            guest = await call.invite(http)
            async with in_the_call(a.ws_url, call, guest) as socket:
                assert (await call.patient.expect("peer", participant=guest.key))["name"]
                # Removed over HTTP on B: the socket on A is closed at once.
                await remove(http, call, guest, socket)
                await call.desk.expect("peer", participant=guest.key, event="left")
