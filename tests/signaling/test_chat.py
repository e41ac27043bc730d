"""Chat in a call through real sockets on a real server: delivered to everyone in the call,
kept with the visit, refused when empty, too long, too frequent or out of the call, read back
by the clinician and admins only (audited), sent again to a page back in the call (a guest only
from their admission on, nobody waiting or removed), and never in a log line."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.audit import AuditEvent
from app.config import Settings
from app.db import Database, create_engine, utcnow
from app.main import create_app
from app.observability import logging_config
from scheduling.chat import ChatMessage
from signaling.chat import BURST
from tests.conftest import TEST_SECRET
from tests.databases import TcpRelay, own_postgres, postgres_port
from tests.factories import Staff, make_staff
from tests.live import LiveServer, free_port
from tests.signaling.helpers import (
    Call,
    Socket,
    add_guest,
    consented_visit,
    console,
    make_visit,
    open_socket,
    running_call,
)

PATIENT_NAME = "Pat Chatterly"


async def first_of(socket: Socket, kinds: tuple[str, ...], within: float = 5.0) -> dict[str, Any]:
    """The first unread message of any of these types (earlier ones of other types skipped)."""
    async with asyncio.timeout(within), socket._arrived:
        while True:
            for index, message in enumerate(socket.received):
                if message.get("type") in kinds:
                    del socket.received[: index + 1]
                    return message
            assert not socket.closed.is_set(), f"closed ({socket.close_code})"
            await socket._arrived.wait()


async def stored(db: Database, appointment_id: uuid.UUID) -> list[str]:
    async with db.session(write=False) as session:
        rows = await session.scalars(
            select(ChatMessage.text)
            .where(ChatMessage.appointment_id == appointment_id)
            .order_by(ChatMessage.sent_at)
        )
        return list(rows.all())


async def audit_outcomes(db: Database, appointment_id: uuid.UUID) -> list[tuple[Any, str]]:
    async with db.session(write=False) as session:
        rows = await session.execute(
            select(AuditEvent.actor_id, AuditEvent.outcome)
            .where(AuditEvent.action == "chat.list", AuditEvent.resource_id == str(appointment_id))
            .order_by(AuditEvent.id)
        )
        return [(actor, outcome) for actor, outcome in rows.all()]


class TestExchange:
    async def test_patient_and_clinician_both_ways_kept_in_order(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        live_ids: list[set[str]] = [set(), set()]
        async with running_call(live_server.ws_url, staff, db, http, name=PATIENT_NAME) as call:
            await call.from_patient("Hello, can you hear me?")
            for socket in (call.patient, call.desk):
                got = await socket.expect("chat")
                live_ids[0].add(got["id"])
                assert got["appointment_id"] == call.id
                assert got["from"] == {
                    "role": "patient",
                    "name": PATIENT_NAME,
                    "participant": "patient",
                }
                assert got["text"] == "Hello, can you hear me?"
                assert got["sent_at"].endswith("Z")
            # Kept as sent (spaces, lines), up to the limit.
            prefix = "  Yes.\nLoud and clear. "
            reply = prefix + "x" * (2000 - len(prefix))
            assert len(reply) == 2000
            await call.from_clinician(reply)
            for socket in (call.patient, call.desk):
                got = await socket.expect("chat")
                live_ids[1].add(got["id"])
                assert got["from"] == {
                    "role": "clinician",
                    "name": "Dr. Ada Test",
                    "participant": "clinician",
                }
                assert got["text"] == reply
            answer = await http.get(
                f"/api/v1/appointments/{call.id}/chat", headers=staff.clinician.headers
            )
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        listed = answer.json()["items"]
        assert [(m["from"]["role"], m["from"]["name"], m["text"]) for m in listed] == [
            ("patient", PATIENT_NAME, "Hello, can you hear me?"),
            ("clinician", "Dr. Ada Test", reply),
        ]
        assert listed[0]["sent_at"] <= listed[1]["sent_at"]
        assert all(uuid.UUID(m["id"]) for m in listed)
        # Each live message carries the id the history gives it (pages show each message once).
        assert live_ids == [{listed[0]["id"]}, {listed[1]["id"]}]


class TestRefusals:
    async def test_empty_blank_and_over_length_are_refused_and_not_stored(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        async with running_call(live_server.ws_url, staff, db, http, name=PATIENT_NAME) as call:
            for text in ("", "   \n\t", "x" * 2001, "nul\u0000"):
                await call.from_patient(text)
                assert (await call.patient.expect("error"))["code"] == "invalid_message"
                await call.from_clinician(text)
                assert (await call.desk.expect("error"))["code"] == "invalid_message"
            await call.patient.send({"type": "chat"})
            assert (await call.patient.expect("error"))["code"] == "invalid_message"
            # The socket goes on: the next good message is the first anyone gets.
            await call.from_patient("after the refusals")
            assert (await call.desk.expect("chat"))["text"] == "after the refusals"
        assert await stored(db, call.visit.appointment_id) == ["after the refusals"]

    async def test_flooding_is_rate_limited_and_the_socket_stays(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        sent = 3 * int(BURST)
        async with running_call(live_server.ws_url, staff, db, http, name=PATIENT_NAME) as call:
            for n in range(sent):
                await call.from_patient(f"flood {n}")
            delivered, limited = [], 0
            for _ in range(sent):
                # Each message is answered once: its echo, or the refusal.
                answer = await first_of(call.patient, ("chat", "error"))
                if answer["type"] == "chat":
                    delivered.append(answer["text"])
                else:
                    assert answer["code"] == "rate_limited"
                    limited += 1
            assert limited >= 1
            assert len(delivered) >= int(BURST)
            await call.patient.send({"type": "ping"})
            await call.patient.expect("pong")
            assert call.patient.close_code is None
        assert await stored(db, call.visit.appointment_id) == delivered

    async def test_out_of_the_call_is_refused(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        call_id = str(visit.appointment_id)
        async with (
            console(ws, staff.clinician.token) as desk,
            console(ws, staff.other_clinician.token) as stranger,
            open_socket(f"{ws}/ws/visits/{visit.token}") as patient,
        ):
            await patient.expect("waiting")
            # Waiting, not admitted: neither the patient nor the console holds a call.
            await patient.send({"type": "chat", "text": "anyone there?"})
            assert (await patient.expect("error"))["code"] == "not_in_call"
            await desk.send({"type": "chat", "appointment_id": call_id, "text": "hello"})
            assert (await desk.expect("error"))["code"] == "not_in_call"
            await desk.send({"type": "admit", "appointment_id": call_id})
            await patient.expect("admitted")
            await desk.expect("call")
            # Another clinician's console never holds this call.
            await stranger.send({"type": "chat", "appointment_id": call_id, "text": "hi"})
            assert (await stranger.expect("error"))["code"] == "not_in_call"
            await desk.send({"type": "end", "appointment_id": call_id})
            await desk.expect("ended")
            await desk.send({"type": "chat", "appointment_id": call_id, "text": "bye"})
            assert (await desk.expect("error"))["code"] == "not_in_call"
        assert await stored(db, visit.appointment_id) == []

    async def test_the_database_refuses_a_text_out_of_bounds(
        self, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        for text in ("", "x" * 2001):
            with pytest.raises(IntegrityError):
                async with db.session(write=True) as session:
                    session.add(_row(visit.appointment_id, text))
        async with db.session(write=True) as session:
            session.add(_row(visit.appointment_id, "x" * 2000))
        assert await stored(db, visit.appointment_id) == ["x" * 2000]


def _row(appointment_id: uuid.UUID, text: str, sender: str = "patient") -> ChatMessage:
    return ChatMessage(
        id=uuid.uuid4(),
        appointment_id=appointment_id,
        sender=sender,
        sender_name=PATIENT_NAME,
        text=text,
        sent_at=utcnow(),
    )


class TestReadBack:
    async def test_who_may_read_and_every_read_is_audited(
        self, staff: Staff, db: Database, client: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, client, staff.clinician, by=staff.scheduler)
        async with db.session(write=True) as session:
            session.add(_row(visit.appointment_id, "a message"))
        url = f"/api/v1/appointments/{visit.appointment_id}/chat"
        other = await client.get(url, headers=staff.other_clinician.headers)
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "not_found"
        scheduler = await client.get(url, headers=staff.scheduler.headers)
        assert scheduler.status_code == 403
        assert scheduler.json()["error"]["code"] == "forbidden"
        assert (await client.get(url)).status_code == 401
        unknown = f"/api/v1/appointments/{uuid.uuid4()}/chat"
        assert (await client.get(unknown, headers=staff.admin.headers)).status_code == 404
        for reader in (staff.admin, staff.clinician):
            answer = await client.get(url, headers=reader.headers)
            assert answer.status_code == 200
            assert [m["text"] for m in answer.json()["items"]] == ["a message"]
        assert await audit_outcomes(db, visit.appointment_id) == [
            (staff.other_clinician.id, "not_found"),
            (staff.scheduler.id, "forbidden"),
            (staff.admin.id, "success"),
            (staff.clinician.id, "success"),
        ]
        async with db.session(write=False) as session:
            details = await session.scalar(
                select(AuditEvent.details)
                .where(AuditEvent.action == "chat.list", AuditEvent.outcome == "success")
                .where(AuditEvent.resource_id == str(visit.appointment_id))
                .limit(1)
            )
        assert details is not None
        assert details["count"] == 1
        assert "a message" not in str(details)


def kinds(socket: Socket) -> list[str]:
    """The types of every message the socket has had, in order."""
    return [str(message.get("type")) for message in socket.log]


async def back_in_call(url: str) -> tuple[Socket, dict[str, Any]]:
    """A second socket of someone in the call (the first is replaced): its `chat_history`,
    checked to come right after `admitted`. Closed again before it returns."""
    async with open_socket(url) as socket:
        history = await socket.expect("chat_history")
        got = kinds(socket)
        assert got.index("chat_history") == got.index("admitted") + 1, got
    return socket, history


def texts(history: dict[str, Any]) -> list[str]:
    return [item["text"] for item in history["items"]]


class TestHistoryOverTheSocket:
    async def test_a_patient_back_in_the_call_is_sent_everything_said_so_far(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http, name=PATIENT_NAME) as call:
            await call.from_patient("Hello, can you hear me?")
            said = [await call.patient.expect("chat")]
            await call.from_clinician("Yes, clearly.")
            said.append(await call.patient.expect("chat"))
            # A reload: the new socket takes over and is sent the chat as the live one was.
            _, history = await back_in_call(f"{ws}/ws/visits/{call.visit.token}")
            assert history["appointment_id"] == call.id
            assert history["items"] == said
            # The console reads the history over HTTP (audited), never over the socket: a console
            # back is told how many messages there are (it reads them only if it lacks some).
            async with console(ws, staff.clinician.token) as desk:
                again = await desk.expect("call")
                assert again["appointment_id"] == call.id
                assert again["chat_count"] == 2
                await desk.send({"type": "ping"})
                await desk.expect("pong")
            assert "chat_history" not in kinds(call.desk) + kinds(desk)

    async def test_a_waiting_patient_is_sent_no_history(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler)
        async with db.session(write=True) as session:
            session.add(_row(visit.appointment_id, "kept with the visit"))
        async with open_socket(f"{live_server.ws_url}/ws/visits/{visit.token}") as patient:
            await patient.expect("waiting")
            await patient.send({"type": "ping"})
            await patient.expect("pong")
            assert "chat_history" not in kinds(patient)
            assert "chat" not in kinds(patient)

    async def test_a_guest_sees_what_was_said_from_their_admission_on(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http, name=PATIENT_NAME) as call:
            guest = await add_guest(http, call.visit, staff.clinician.headers, role="caregiver")
            guest_url = f"{ws}/ws/visits/{guest.token}"
            await call.from_patient("before anyone else came")
            await call.patient.expect("chat")
            async with open_socket(guest_url) as waiting:
                await waiting.expect("waiting")
                await call.from_clinician("while the caregiver waits")
                await call.patient.expect("chat")
                await waiting.send({"type": "ping"})
                await waiting.expect("pong")
                assert not {"chat", "chat_history"} & set(kinds(waiting))
                await call.desk.send(
                    {"type": "admit", "appointment_id": call.id, "participant_id": guest.id}
                )
                await waiting.expect("admitted")
                # Admitted: only what is said from now on.
                assert (await waiting.expect("chat_history"))["items"] == []
                await call.from_patient("now that you are here")
                after = await waiting.expect("chat")
                assert "chat" not in kinds(waiting)[: kinds(waiting).index("admitted")]
                # The guest's page reloaded: still only what was said since their admission.
                _, history = await back_in_call(guest_url)
                assert history["items"] == [after]
                assert await waiting.expect_close() == 4409
            # The patient's page reloaded: everything.
            _, everything = await back_in_call(f"{ws}/ws/visits/{call.visit.token}")
            assert texts(everything) == [
                "before anyone else came",
                "while the caregiver waits",
                "now that you are here",
            ]

    async def test_a_removed_guest_is_sent_no_history(
        self, live_server: LiveServer, staff: Staff, db: Database, http: httpx.AsyncClient
    ) -> None:
        ws = live_server.ws_url
        async with running_call(ws, staff, db, http, name=PATIENT_NAME) as call:
            guest = await add_guest(http, call.visit, staff.clinician.headers)
            async with open_socket(f"{ws}/ws/visits/{guest.token}") as socket:
                await socket.expect("waiting")
                await call.desk.send(
                    {"type": "admit", "appointment_id": call.id, "participant_id": guest.id}
                )
                await socket.expect("chat_history")
                await call.from_patient("said in front of the interpreter")
                await socket.expect("chat")
                removed = await http.delete(
                    f"/api/v1/appointments/{call.id}/participants/{guest.id}",
                    headers=staff.clinician.headers,
                )
                assert removed.status_code == 204
                assert await socket.expect_close() == 4410
            await call.from_patient("said after they were removed")
            await call.patient.expect("chat")
            async with open_socket(f"{ws}/ws/visits/{guest.token}") as again:
                assert await again.expect_close() == 4410
                assert not {"chat", "chat_history", "admitted"} & set(kinds(again))


CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


@contextmanager
def server_log_levels(level: str) -> Iterator[None]:
    """The loggers' levels as `televisit serve` sets them for TELEVISIT_LOG_LEVEL=`level`."""
    loggers = logging_config(level)["loggers"]
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name, entry in loggers.items():
        logging.getLogger(name).setLevel(entry["level"])
    try:
        yield
    finally:
        for name, was in saved.items():
            logging.getLogger(name).setLevel(was)


@asynccontextmanager
async def served_here(app: FastAPI) -> AsyncIterator[str]:
    """The app under uvicorn in this process (its lifespan already run): the WebSocket base URL.
    In this process, so `caplog` sees every record the server makes."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(15):
            while not server.started:  # noqa: ASYNC110 (uvicorn's own flag)
                await asyncio.sleep(0.02)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def call_served_here(
    application: FastAPI, db: Database, staff: Staff
) -> AsyncIterator[tuple[Call, httpx.AsyncClient]]:
    """A call on the app run in this process (`served_here`), and an HTTP client of the app."""
    async with (
        LifespanManager(application),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://testserver"
        ) as http,
        served_here(application) as ws_url,
        running_call(ws_url, staff, db, http, name=PATIENT_NAME) as call,
    ):
        yield call, http


class TestLogs:
    async def test_no_chat_text_or_name_in_any_log_record(
        self,
        settings: Settings,
        staff: Staff,
        db: Database,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Every logger at its most verbose, as TELEVISIT_LOG_LEVEL=DEBUG sets them."""
        caplog.set_level(logging.DEBUG)
        secret = "Qorvath rash on the zindle"
        application = create_app(settings.model_copy(update={"media_ips": ["127.0.0.1"]}))
        with server_log_levels("DEBUG"):
            call_id = await self._chat_through(application, staff, db, secret)
        # The test's own clients log what they send; the server's records are the rest.
        server = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
        logged = repr([record.__dict__ for record in server])
        assert "televisit.http" in logged  # the server's records were captured
        assert "uvicorn.error" in logged
        assert "Qorvath" not in logged
        assert PATIENT_NAME not in logged
        assert len(await stored(db, call_id)) == 2

    async def _chat_through(
        self, application: FastAPI, staff: Staff, db: Database, secret: str
    ) -> uuid.UUID:
        async with call_served_here(application, db, staff) as (call, http):
            await call.from_patient(secret)
            await call.desk.expect("chat")
            await call.from_clinician(f"About the {secret}")
            await call.patient.expect("chat")
            await call.from_patient(secret + "x" * 2000)  # refused: too long
            await call.patient.expect("error")
            listed = await http.get(
                f"/api/v1/appointments/{call.id}/chat", headers=staff.clinician.headers
            )
            assert listed.status_code == 200
            return call.visit.appointment_id


@pytest.fixture(scope="module")
def own_db() -> Iterator[tuple[str, str]]:
    with own_postgres("televisit_chat") as created:
        yield created


class TestDatabaseAway:
    async def test_the_sender_is_told_and_nothing_is_stored_or_delivered(
        self, own_db: tuple[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        url, name = own_db
        relay = TcpRelay(postgres_port())
        await relay.start()
        relayed = f"postgresql+asyncpg://postgres@127.0.0.1:{relay.port}/{name}"
        settings = Settings(
            environment="test",
            database_url=relayed,
            secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
            public_url="http://testserver",  # type: ignore[arg-type]  # pydantic parses it
            db_pool_size=4,
            db_connect_timeout_seconds=2,
            media_ips=["127.0.0.1"],
        )
        direct = Database(create_engine(settings.model_copy(update={"database_url": url})))
        application = create_app(settings)
        try:
            staff = await make_staff(direct, secret=TEST_SECRET.encode())
            async with call_served_here(application, direct, staff) as (call, _http):
                await relay.cut()
                await call.from_patient("Qorvath, lost")
                error = await call.patient.expect("error", within=20)
                assert error["code"] == "unavailable"
                await relay.start()
                await call.from_patient("back again")
                # The first chat either side gets is the one sent after the database came back.
                for socket in (call.desk, call.patient):
                    assert (await socket.expect("chat", within=20))["text"] == "back again"
            assert await stored(direct, call.visit.appointment_id) == ["back again"]
        finally:
            await relay.cut()
            await direct.dispose()
        assert "Qorvath" not in caplog.text
