"""The contract's rules for check-in and the console: the waiting room's opening, today's queue,
renewed tokens, expired tokens and deactivated users, through real sockets on a real server."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
from sqlalchemy import update

from app.auth import tokens
from app.auth.models import User
from app.db import Database
from scheduling.models import Appointment, Status
from tests.conftest import TEST_SECRET, ServerFactory
from tests.factories import Person, Staff, make_user
from tests.live import LiveServer
from tests.signaling.helpers import consented_visit, console, items, make_visit, open_socket


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def token_for(person: Person, seconds: float) -> str:
    """A staff token that expires in `seconds`."""
    return tokens.issue(
        key=tokens.signing_key(TEST_SECRET.encode()),
        user_id=person.id,
        role=person.user.role,
        session_id=person.session_id,
        lifetime=dt.timedelta(seconds=seconds),
    )


class TestCheckInWindow:
    async def test_too_early_says_when_the_waiting_room_opens(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=2)
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            visit = await consented_visit(
                db, http, staff.clinician, by=staff.scheduler, start=start
            )
            async with open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient:
                error = await patient.expect("error")
                assert error["code"] == "too_early"
                assert error["opens_at"] == rfc3339(start - dt.timedelta(minutes=30))
                assert await patient.expect_close() == 4425
            response = await http.get(
                f"/api/v1/appointments/{visit.appointment_id}", headers=staff.admin.headers
            )
        assert response.json()["status"] == "booked"

    async def test_the_window_is_a_setting(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        server = live_server_factory(checkin_minutes_before="180")
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=2)
        async with httpx.AsyncClient(base_url=server.url) as http:
            visit = await consented_visit(
                db, http, staff.clinician, by=staff.scheduler, start=start
            )
        async with open_socket(f"{server.ws_url}/ws/visits/{visit.token}") as patient:
            assert (await patient.expect("waiting"))["position"] == 1


async def put_in_room(db: Database, appointment: Appointment | None, status: Status) -> None:
    assert appointment is not None
    async with db.session(write=True) as session:
        await session.execute(
            update(Appointment)
            .where(Appointment.id == appointment.id)
            .values(
                status=status.value,
                patient_presence="connected",
                patient_process="elsewhere",
                checked_in_at=appointment.start_at,
                call_started_at=appointment.start_at if status == Status.IN_CALL else None,
            )
        )


class TestTodaysQueue:
    async def test_the_queue_lists_today_and_calls_still_under_way(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        # Before the clinician's midnight (New York), whatever the hour: at least 24 h ago.
        stale = await make_visit(
            db, staff.clinician, by=staff.scheduler, start=now - dt.timedelta(hours=30)
        )
        running = await make_visit(
            db, staff.clinician, by=staff.scheduler, start=now - dt.timedelta(hours=25)
        )
        today = await make_visit(db, staff.clinician, by=staff.scheduler)
        for visit, status in (
            (stale, Status.WAITING),
            (running, Status.IN_CALL),
            (today, Status.WAITING),
        ):
            async with db.session(write=False) as session:
                await put_in_room(db, await session.get(Appointment, visit.appointment_id), status)
        async with console(live_server.ws_url, staff.clinician.token) as desk:
            queue = items(await desk.expect("queue"))
            assert str(stale.appointment_id) not in queue
            assert queue[str(running.appointment_id)]["status"] == "in_call"
            assert queue[str(today.appointment_id)]["status"] == "waiting"
            assert queue[str(today.appointment_id)]["position"] == 1


class TestConsoleTokens:
    async def test_a_renewed_token_keeps_the_console_open(
        self, live_server_factory: ServerFactory, staff: Staff
    ) -> None:
        server = live_server_factory(clinic_token_grace_seconds="1")
        short = token_for(staff.clinician, 3)
        expires = time.time() + 3
        async with console(server.ws_url, short) as desk:
            await desk.expect("queue")
            await desk.send({"type": "auth", "token": staff.clinician.token})
            renewed = await desk.expect("authenticated")
            assert renewed["expires_at"].endswith("Z")
            # Past the first token's expiry and the grace after it: still open.
            await asyncio.sleep(max(0.0, expires + 1 + 2 - time.time()))
            await desk.send({"type": "ping"})
            await desk.expect("pong")
            assert not desk.closed.is_set()

    async def test_an_expired_token_closes_the_console_after_the_grace(
        self, live_server_factory: ServerFactory, staff: Staff
    ) -> None:
        server = live_server_factory(clinic_token_grace_seconds="1")
        async with console(server.ws_url, token_for(staff.clinician, 3)) as desk:
            await desk.expect("queue")
            assert (await desk.expect("error", within=15))["code"] == "token_expired"
            assert await desk.expect_close() == 4401

    async def test_a_renewal_must_be_valid_and_the_same_users(
        self, live_server: LiveServer, staff: Staff
    ) -> None:
        async with console(live_server.ws_url, staff.clinician.token) as desk:
            await desk.expect("queue")
            await desk.send({"type": "auth", "token": "not-a-token"})
            assert (await desk.expect("error"))["code"] == "not_authenticated"
            await desk.send({"type": "auth", "token": staff.other_clinician.token})
            assert (await desk.expect("error"))["code"] == "forbidden"
            await desk.send({"type": "ping"})
            await desk.expect("pong")

    async def test_a_deactivated_users_console_is_closed(
        self, live_server: LiveServer, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        async with console(live_server.ws_url, person.token) as desk:
            await desk.expect("queue")
            async with db.session(write=True) as session:
                await session.execute(
                    update(User).where(User.id == person.id).values(is_active=False)
                )
            # The contract: within 5 s (the server looks every 2 s); the bound here is looser,
            # for a loaded machine.
            assert (await desk.expect("error", within=10))["code"] == "not_authenticated"
            assert await desk.expect_close() == 4401
