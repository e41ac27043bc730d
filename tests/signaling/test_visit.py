"""The visit through real sockets on a real server: consent gate, queue, admit, end, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from app.db import Database
from signaling.sockets import MAX_DROPPED, RATE_BURST
from tests.conftest import TEST_SECRET
from tests.factories import Staff, make_user
from tests.live import LiveServer
from tests.signaling.helpers import (
    Visit,
    checked_in,
    consented_visit,
    console,
    grant,
    items,
    make_visit,
    open_socket,
)


async def status_of(http: httpx.AsyncClient, staff: Staff, visit: Visit) -> str:
    response = await http.get(
        f"/api/v1/appointments/{visit.appointment_id}", headers=staff.admin.headers
    )
    status: str = response.json()["status"]
    return status


class TestConsentGate:
    async def test_without_consent_the_socket_is_refused_with_4403(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        async with open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient:
            error = await patient.expect("error")
            assert error["code"] == "consent_required"
            assert await patient.expect_close() == 4403
        assert await status_of(http, staff, visit) == "booked"

    async def test_a_declined_or_withdrawn_consent_does_not_stand(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        await grant(http, visit.token, decision="withdrawn")
        async with open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient:
            assert (await patient.expect("error"))["code"] == "consent_required"
            assert await patient.expect_close() == 4403

    async def test_consent_of_another_visit_does_not_count(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        consented = await make_visit(db, staff.clinician, by=staff.scheduler)
        other = await make_visit(
            db, staff.clinician, by=staff.scheduler, start=None, name="Other", minutes=20
        )
        await grant(http, consented.token)
        async with open_socket(f"{live_server.ws_url}/ws/visits/{other.token}") as patient:
            assert (await patient.expect("error"))["code"] == "consent_required"

    async def test_unknown_and_cancelled_links(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        async with open_socket(f"{live_server.ws_url}/ws/visits/{'x' * 43}") as patient:
            assert (await patient.expect("error"))["code"] == "visit_not_found"
            assert await patient.expect_close() == 4404
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        await http.post(
            f"/api/v1/appointments/{visit.appointment_id}/cancel", headers=staff.scheduler.headers
        )
        async with open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient:
            assert (await patient.expect("error"))["code"] == "visit_closed"
            assert await patient.expect_close() == 4410


class TestQueue:
    async def test_positions_follow_appointment_order_and_update(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        import datetime as dt

        # Three short visits around now: every waiting room is open.
        base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        visits = [
            await make_visit(
                db, staff.clinician, by=staff.scheduler, start=base + dt.timedelta(minutes=10 * i),
                minutes=10, name=f"Patient {i}",
            )
            for i in range(3)
        ]  # fmt: skip
        for visit in visits:
            await grant(http, visit.token)
        ws = live_server.ws_url
        async with (
            open_socket(f"{ws}/ws/visits/{visits[2].token}") as third,
            open_socket(f"{ws}/ws/visits/{visits[0].token}") as first,
            open_socket(f"{ws}/ws/visits/{visits[1].token}") as second,
        ):
            assert (await first.latest("waiting"))["position"] == 1
            assert (await second.latest("waiting"))["position"] == 2
            last = await third.latest("waiting")
            assert last["position"] == 3
            assert last["estimated_wait_seconds"] == 2 * 20 * 60  # two slots ahead, no history
            await first.send({"type": "leave"})
            assert (await first.expect("ended"))["reason"] == "left"
            assert (await second.expect("waiting", position=1))["position"] == 1
            assert (await third.expect("waiting", position=2))["position"] == 2
        assert await status_of(http, staff, visits[0]) == "booked"

    async def test_console_gets_the_queue_at_once_and_on_every_arrival(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(
            db, http, staff.clinician, by=staff.scheduler, name="Ada Arrives"
        )
        async with console(live_server.ws_url, staff.clinician.token) as desk:
            initial = await desk.expect("queue")
            assert str(visit.appointment_id) not in items(initial)
            async with checked_in(live_server.ws_url, visit):
                queue = await desk.expect("queue", within=1.0)
                item = items(queue)[str(visit.appointment_id)]
                assert item["patient_name"] == "Ada Arrives"
                assert item["status"] == "waiting"
                assert item["position"] == 1
                assert item["waiting_since"].endswith("Z")
                assert set(item) >= {
                    "appointment_id", "patient_name", "start", "status", "waiting_since",
                    "position",
                }  # fmt: skip
        assert await status_of(http, staff, visit) == "waiting"

    async def test_another_clinicians_patients_are_not_in_the_queue(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.other_clinician, by=staff.scheduler)
        async with (
            console(live_server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            queue = await desk.latest("queue")
            assert str(visit.appointment_id) not in items(queue)


class TestCall:
    async def test_admit_then_end(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with (
            console(live_server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
            admitted = await patient.expect("admitted")
            assert admitted["ice_servers"] == []  # none configured: nothing is ever contacted
            call = await desk.expect("call")
            assert call == {
                "type": "call",
                "appointment_id": str(visit.appointment_id),
                "ice_servers": [],
                "chat_count": 0,  # (the console reads no chat history: there is none)
            }
            joined = await patient.expect("peer")
            assert joined == {"type": "peer", "event": "joined", "role": "clinician"}
            # The queue's news of the admission may come before `call` or after it.
            queue = [m for m in desk.log if m["type"] == "queue"][-1]
            while items(queue)[str(visit.appointment_id)]["status"] != "in_call":
                queue = await desk.expect("queue")
            assert items(queue)[str(visit.appointment_id)]["position"] is None
            assert await status_of(http, staff, visit) == "in_call"

            await desk.send({"type": "end", "appointment_id": str(visit.appointment_id)})
            assert (await patient.expect("ended"))["reason"] == "ended"
            ended = await desk.expect("ended")
            assert ended["appointment_id"] == str(visit.appointment_id)
            assert await patient.expect_close() == 1000
        assert await status_of(http, staff, visit) == "completed"

    async def test_no_show(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with (
            console(live_server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            await desk.send({"type": "no_show", "appointment_id": str(visit.appointment_id)})
            assert (await patient.expect("ended"))["reason"] == "no_show"
            await patient.expect_close()
            queue = await desk.latest("queue")
            assert str(visit.appointment_id) not in items(queue)
        assert await status_of(http, staff, visit) == "no_show"

    async def test_another_clinician_cannot_admit(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with (
            console(live_server.ws_url, staff.other_clinician.token) as intruder,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            for kind in ("admit", "end", "no_show"):
                await intruder.send({"type": kind, "appointment_id": str(visit.appointment_id)})
                assert (await intruder.expect("error"))["code"] == "not_found"
            unknown = str(uuid.uuid4())
            await intruder.send({"type": "admit", "appointment_id": unknown})
            assert (await intruder.expect("error"))["code"] == "not_found"
        assert await status_of(http, staff, visit) in ("waiting", "booked")

    async def test_media_before_admission_is_refused(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with checked_in(live_server.ws_url, visit) as patient:
            await patient.send({"type": "offer", "sdp": "v=0"})
            assert (await patient.expect("error"))["code"] == "not_in_call"


class TestReconnect:
    async def test_within_the_grace_period_the_place_is_kept(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        import datetime as dt

        base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        early = await make_visit(db, staff.clinician, by=staff.scheduler, start=base, minutes=10)
        late = await make_visit(
            db, staff.clinician, by=staff.scheduler, start=base + dt.timedelta(minutes=10)
        )
        await grant(http, early.token)
        await grant(http, late.token)
        ws = live_server.ws_url
        async with (
            console(ws, staff.clinician.token) as desk,
            open_socket(f"{ws}/ws/visits/{late.token}") as second,
        ):
            async with open_socket(f"{ws}/ws/visits/{early.token}") as first:
                assert (await first.latest("waiting"))["position"] == 1
            # Dropped (no leave): shown reconnecting, the place kept.
            queue = await desk.expect("queue")
            while items(queue).get(str(early.appointment_id), {}).get("status") != "reconnecting":
                queue = await desk.expect("queue")
            assert items(queue)[str(early.appointment_id)]["position"] is None
            async with open_socket(f"{ws}/ws/visits/{early.token}") as back:
                assert (await back.latest("waiting"))["position"] == 1
                assert (await second.latest("waiting"))["position"] == 2
                queue = await desk.latest("queue")
                assert items(queue)[str(early.appointment_id)]["status"] == "waiting"
        assert await status_of(http, staff, early) == "waiting"

    async def test_after_the_grace_period_the_patient_leaves_the_queue(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with console(live_server.ws_url, staff.clinician.token) as desk:
            async with open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient:
                await patient.expect("waiting")
            key = str(visit.appointment_id)
            queue = await desk.expect("queue")
            while items(queue).get(key, {}).get("status") != "reconnecting":
                queue = await desk.expect("queue")
            # The server's grace is 2 s in tests; the sweeper runs every second.
            while key in items(queue):
                queue = await desk.expect("queue", within=6)
        assert await status_of(http, staff, visit) == "booked"

    async def test_a_patient_back_in_a_call_is_admitted_again(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        ws = live_server.ws_url
        async with console(ws, staff.clinician.token) as desk:
            async with open_socket(f"{ws}/ws/visits/{visit.token}") as patient:
                await patient.expect("waiting")
                await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
                await patient.expect("admitted")
            async with open_socket(f"{ws}/ws/visits/{visit.token}") as back:
                assert "ice_servers" in await back.expect("admitted")
            assert await status_of(http, staff, visit) == "in_call"

    async def test_a_call_ends_when_the_patient_stays_away(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        ws = live_server.ws_url
        async with console(ws, staff.clinician.token) as desk:
            async with open_socket(f"{ws}/ws/visits/{visit.token}") as patient:
                await patient.expect("waiting")
                await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
                await patient.expect("admitted")
            ended = await desk.expect("ended", within=8)
            assert ended == {
                "type": "ended",
                "reason": "patient_left",
                "appointment_id": str(visit.appointment_id),
            }
        assert await status_of(http, staff, visit) == "completed"

    async def test_a_console_back_gets_its_calls_again(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        ws = live_server.ws_url
        async with open_socket(f"{ws}/ws/visits/{visit.token}") as patient:
            async with console(ws, staff.clinician.token) as desk:
                await patient.expect("waiting")
                await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
                await desk.expect("call")
            assert (await patient.expect("peer", event="left"))["role"] == "clinician"
            async with console(ws, staff.clinician.token) as again:
                call = await again.expect("call")
                assert call["appointment_id"] == str(visit.appointment_id)
                await again.send({"type": "end", "appointment_id": str(visit.appointment_id)})
                await patient.expect("ended")

    async def test_the_same_link_in_a_second_window_replaces_the_first(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        ws = live_server.ws_url
        async with open_socket(f"{ws}/ws/visits/{visit.token}") as first:
            await first.expect("waiting")
            async with open_socket(f"{ws}/ws/visits/{visit.token}") as second:
                assert (await first.expect("error"))["code"] == "replaced"
                assert await first.expect_close() == 4409
                assert (await second.latest("waiting"))["position"] == 1


class TestWithdrawal:
    async def test_withdrawal_during_a_call_ends_it_for_everyone(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        ws = live_server.ws_url
        async with (
            console(ws, staff.clinician.token) as desk,
            open_socket(f"{ws}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
            await patient.expect("admitted")
            await grant(http, visit.token, decision="withdrawn")
            assert (await patient.expect("ended"))["reason"] == "consent_withdrawn"
            ended = await desk.expect("ended")
            assert ended["reason"] == "consent_withdrawn"
        assert await status_of(http, staff, visit) == "completed"

    async def test_withdrawal_while_waiting_leaves_the_queue(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with checked_in(live_server.ws_url, visit) as patient:
            await grant(http, visit.token, decision="withdrawn")
            assert (await patient.expect("ended"))["reason"] == "consent_withdrawn"
            assert await patient.expect_close() == 4403
        assert await status_of(http, staff, visit) == "booked"

    async def test_cancellation_while_waiting_tells_the_patient(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with checked_in(live_server.ws_url, visit) as patient:
            await http.post(
                f"/api/v1/appointments/{visit.appointment_id}/cancel",
                headers=staff.scheduler.headers,
            )
            assert (await patient.expect("ended"))["reason"] == "cancelled"
            assert await patient.expect_close() == 4410


class TestConsoleAuth:
    async def test_no_auth_within_5_seconds_closes_4401(self, live_server: LiveServer) -> None:
        async with open_socket(f"{live_server.ws_url}/ws/clinic") as silent:
            assert await silent.expect_close(within=8) == 4401

    @pytest.mark.parametrize(
        "first", ["garbage", '{"type":"admit"}', '{"type":"auth","token":"x"}']
    )
    async def test_bad_first_message_closes_4401(self, live_server: LiveServer, first: str) -> None:
        async with open_socket(f"{live_server.ws_url}/ws/clinic") as socket:
            await socket.send(first)
            assert (await socket.expect("error"))["code"] == "not_authenticated"
            assert await socket.expect_close() == 4401

    async def test_a_scheduler_runs_no_queue(self, live_server: LiveServer, staff: Staff) -> None:
        async with console(live_server.ws_url, staff.scheduler.token) as socket:
            assert (await socket.expect("error"))["code"] == "forbidden"
            assert await socket.expect_close() == 4403

    async def test_a_deactivated_clinicians_token_is_refused(
        self, live_server: LiveServer, db: Database
    ) -> None:
        from sqlalchemy import update

        from app.auth.models import User

        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        async with db.session(write=True) as session:
            await session.execute(update(User).where(User.id == person.id).values(is_active=False))
        async with console(live_server.ws_url, person.token) as socket:
            assert await socket.expect_close() == 4401


class TestHostileInput:
    async def test_bad_messages_get_errors_and_the_socket_goes_on(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with (
            console(live_server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            await desk.expect("queue")
            for socket in (patient, desk):
                for bad, code in (
                    ("not json", "invalid_message"),
                    ('{"type":"teleport"}', "invalid_message"),
                    ('{"no_type":1}', "invalid_message"),
                    ("[1,2,3]", "invalid_message"),
                    ('{"type":"offer"}', "invalid_message"),
                    (b"\x00\x01binary", "unsupported"),
                    ('{"type":"offer","sdp":"' + "a" * (70 * 1024) + '"}', "message_too_large"),
                ):
                    await socket.send(bad)
                    assert (await socket.expect("error"))["code"] == code, bad
                await socket.send({"type": "ping"})
                await socket.expect("pong")
            await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
            await patient.expect("admitted")

    async def test_a_flood_is_rate_limited(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with checked_in(live_server.ws_url, visit) as patient:
            await asyncio.gather(*(patient.send({"type": "ping"}) for _ in range(150)))
            assert (await patient.expect("error"))["code"] == "rate_limited"
            await asyncio.sleep(1.5)
            await patient.send({"type": "ping"})
            await patient.expect("pong")

    async def test_a_flood_that_goes_on_is_closed(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with checked_in(live_server.ws_url, visit) as patient:
            # The burst is answered; past it, every message is refused, and after MAX_DROPPED
            # refusals the socket is closed as a policy violation.
            with contextlib.suppress(ConnectionClosed):
                for _ in range(int(RATE_BURST) + MAX_DROPPED + 100):
                    await patient.send({"type": "ping"})
            assert await patient.expect_close(within=10) == 1008
            refusals = [m for m in patient.received if m.get("code") == "rate_limited"]
            assert len(refusals) > MAX_DROPPED
        # The server goes on: the same link connects again and keeps the patient's place.
        async with checked_in(live_server.ws_url, visit) as patient:
            await patient.send({"type": "ping"})
            await patient.expect("pong")

    async def test_a_foreign_origin_is_refused(self, live_server: LiveServer, staff: Staff) -> None:
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(
                f"{live_server.ws_url}/ws/clinic", Origin="https://evil.example"
            ):
                pass
        assert refused.value.response.status_code == 403
        async with open_socket(
            f"{live_server.ws_url}/ws/clinic", Origin="http://testserver"
        ) as allowed:
            await allowed.send({"type": "auth", "token": staff.clinician.token})
            await allowed.expect("queue")


class TestPeerMessages:
    async def test_messages_pass_between_the_participants_of_a_call(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        key = str(visit.appointment_id)
        async with (
            console(live_server.ws_url, staff.clinician.token) as desk,
            open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            await patient.send({"type": "message", "data": {"text": "hello?"}})
            assert (await patient.expect("error"))["code"] == "not_in_call"
            await desk.send({"type": "admit", "appointment_id": key})
            await patient.expect("admitted")
            await patient.send({"type": "message", "data": {"camera": "off"}})
            got = await desk.expect("message")
            # On the console socket every call's message names its call.
            assert got == {
                "type": "message",
                "from": "patient",
                "data": {"camera": "off"},
                "appointment_id": key,
            }
            await desk.send({"type": "message", "appointment_id": key, "data": {"text": "Hi"}})
            got = await patient.expect("message")
            assert got == {"type": "message", "from": "clinician", "data": {"text": "Hi"}}
